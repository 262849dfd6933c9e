"""Unit tests for jailsyncd.leases: lease and neighbor-table parsers, source order,
expiry against an injected "now" (no I/O, no clock).

Formats, from their writers' sources:
- FreeBSD dhclient: sbin/dhclient/dhclient.c, write_client_lease (``lease { ... }``,
  times ``W YYYY/MM/DD HH:MM:SS`` from gmtime) and rewrite_client_leases (the
  active lease is written last);
- ISC dhcpd's dhcpd.leases(5): ``lease A { starts/ends/binding state/hardware
  ethernet }``, appended as a journal;
- dnsmasq: one ``EXPIRY MAC ADDRESS HOSTNAME CLIENT-ID`` line per lease, 0 = infinite;
- Kea memfile CSV: ``address,hwaddr,client_id,valid_lifetime,expire,subnet_id,...``;
- FreeBSD ``arp -an --libxo json``: usr.sbin/arp/arp.c (main: ``xo_open_container("arp")``,
  ``xo_open_list("arp-cache")``; print_entry: ``ip-address``, ``mac-address``,
  ``interface``, ``expires``, ``type`` and the encode-only booleans ``incomplete``,
  ``permanent``, ``expired``, ``published``), same fields in arp_netlink.c;
- FreeBSD ``ndp -an``: usr.sbin/ndp/ndp.c (columns Neighbor, Linklayer Address,
  Netif, Expire, S, Flags; ``(incomplete)`` without a link-layer address);
- Linux ``ip -json neigh``: ``dst``, ``dev``, ``lladdr``, ``state`` (a list).
"""

from __future__ import annotations

import calendar
import json

import pytest

from jailsyncd.leases import (
    SOURCE_DHCLIENT,
    SOURCE_NEIGHBOR,
    SOURCE_SERVER,
    Lease,
    Neighbor,
    Observations,
    Target,
    needs_neighbors,
    newest,
    normalize_mac,
    parse_arp_libxo,
    parse_dhclient,
    parse_dnsmasq,
    parse_ip_neigh,
    parse_isc_dhcpd,
    parse_kea_csv,
    parse_ndp,
    parse_server_leases,
    resolve,
    targets,
)
from jailsyncd.model import Environment
from jailsyncd.tagspec import Rule

VM_MAC = "58:9c:fc:00:00:01"
OTHER_MAC = "58:9c:fc:00:00:99"


def utc(text: str) -> float:
    """'2026/11/29 12:00:00' -> epoch seconds."""
    date, time_ = text.split()
    y, m, d = (int(x) for x in date.split("/"))
    hh, mm, ss = (int(x) for x in time_.split(":"))
    return float(calendar.timegm((y, m, d, hh, mm, ss, 0, 0, 0)))


NOW = utc("2026/11/29 12:00:00")


def dhclient_lease(address: str, expire: str) -> str:
    return (
        "lease {\n"
        '  interface "eth0";\n'
        f"  fixed-address {address};\n"
        "  option subnet-mask 255.255.255.0;\n"
        "  option routers 10.0.0.1;\n"
        "  option dhcp-lease-time 3600;\n"
        f"  renew 0 2026/11/29 11:30:00;\n"
        f"  rebind 0 2026/11/29 11:52:30;\n"
        f"  expire {expire};\n"
        "}\n"
    )


# --- dhclient ----------------------------------------------------------------------


def test_dhclient_renewed_lease_wins_and_expired_ones_are_skipped() -> None:
    text = dhclient_lease("10.0.0.50", "6 2026/11/28 09:00:00") + dhclient_lease("10.0.0.51", "0 2026/11/29 13:00:00")
    leases = parse_dhclient(text)
    assert [(lease.address, lease.expires) for lease in leases] == [
        ("10.0.0.50", utc("2026/11/28 09:00:00")),
        ("10.0.0.51", utc("2026/11/29 13:00:00")),
    ]
    assert newest(leases, NOW).address == "10.0.0.51"
    assert newest(leases, utc("2026/11/29 13:00:00")) is None  # expiry is exclusive


def test_dhclient_newest_unexpired_when_the_last_one_expired() -> None:
    text = dhclient_lease("10.0.0.50", "0 2026/11/29 15:00:00") + dhclient_lease("10.0.0.51", "6 2026/11/28 09:00:00")
    assert newest(parse_dhclient(text), NOW).address == "10.0.0.50"


@pytest.mark.parametrize(
    ("expire", "expected"),
    [("never", None), ("epoch 1796040000", 1796040000.0), ("epoch 1796040000; # Sun Nov 29 2026", 1796040000.0)],
)
def test_dhclient_other_time_forms(expire: str, expected) -> None:
    (lease,) = parse_dhclient(dhclient_lease("10.0.0.50", expire))
    assert lease.expires == expected


def test_dhclient_garbage_and_cut_blocks_are_skipped() -> None:
    text = "lease {\n  fixed-address 10.0.0.9;\n}\n" + "not a lease\n" + dhclient_lease("10.0.0.5", "0 2026/13/40 99:00:00")
    text += "lease {\n  fixed-address 10.0.0.7;\n  expire never;\n"  # cut off while written
    assert parse_dhclient(text) == ()


# --- DHCP servers ----------------------------------------------------------------------


def test_dnsmasq_lines_expired_renewed_infinite_and_v6() -> None:
    text = (
        f"{int(NOW) - 10} {VM_MAC} 10.0.0.60 vm1 01:58:9c:fc:00:00:01\n"
        f"{int(NOW) + 600} 58:9C:FC:00:00:02 10.0.0.61 vm2 *\n"
        f"0 {OTHER_MAC} 10.0.0.62 * *\n"
        "duid 00:01:00:01:2c:5e:1a:2b:58:9c:fc:00:00:01\n"
        f"{int(NOW) + 600} 16777216 2001:db8::61 vm2 00:01:00:01\n"
    )
    leases = parse_dnsmasq(text)
    assert [(lease.mac, lease.address, lease.expires) for lease in leases] == [
        (VM_MAC, "10.0.0.60", NOW - 10),
        ("58:9c:fc:00:00:02", "10.0.0.61", NOW + 600),
        (OTHER_MAC, "10.0.0.62", None),
    ]
    assert not leases[0].valid(NOW) and leases[1].valid(NOW) and leases[2].valid(NOW + 10**9)


ISC = """\
# The format of this file is documented in the dhcpd.leases(5) manual page.
authoring-byte-order little-endian;

lease 10.0.0.70 {
  starts 0 2026/11/29 09:00:00;
  ends 0 2026/11/29 10:00:00;
  binding state active;
  hardware ethernet 58:9c:fc:00:00:01;
  client-hostname "vm1";
}
lease 10.0.0.71 {
  starts 0 2026/11/29 11:00:00;
  ends 0 2026/11/29 12:00:00;
  binding state active;
  hardware ethernet 58:9c:fc:00:00:03;
}
lease 10.0.0.70 {
  starts 0 2026/11/29 11:30:00;
  ends 0 2026/11/29 12:30:00;
  cltt 0 2026/11/29 11:30:00;
  binding state active;
  next binding state free;
  hardware ethernet 58:9c:fc:00:00:01;
  uid "\\001X\\234\\374\\000\\000\\001";
}
lease 10.0.0.72 {
  starts 0 2026/11/29 11:40:00;
  ends 0 2026/11/29 12:40:00;
  binding state free;
  hardware ethernet 58:9c:fc:00:00:04;
}
lease 10.0.0.73 {
  starts 0 2026/11/29 11:40:00;
  ends never;
  hardware ethernet 58:9c:fc:00:00:05;
}
"""


def test_isc_dhcpd_journal_last_block_wins_and_only_active_bindings() -> None:
    leases = {lease.address: lease for lease in parse_isc_dhcpd(ISC)}
    assert set(leases) == {"10.0.0.70", "10.0.0.71", "10.0.0.73"}  # .72 is free
    assert leases["10.0.0.70"].expires == utc("2026/11/29 12:30:00")  # the renewal replaced the first block
    assert leases["10.0.0.70"].mac == VM_MAC
    assert not leases["10.0.0.71"].valid(NOW)  # ends exactly now
    assert leases["10.0.0.73"].expires is None
    assert parse_server_leases(ISC) == parse_isc_dhcpd(ISC)


KEA = """\
address,hwaddr,client_id,valid_lifetime,expire,subnet_id,fqdn_fwd,fqdn_rev,hostname,state,user_context,pool_id
10.0.0.80,58:9c:fc:00:00:01,,3600,{old},1,0,0,vm1,0,,0
10.0.0.81,58:9c:fc:00:00:02,,3600,{later},1,0,0,vm2,0,,0
10.0.0.80,58:9c:fc:00:00:01,,3600,{later},1,0,0,vm1,0,,0
10.0.0.82,58:9c:fc:00:00:03,,3600,{later},1,0,0,vm3,2,,0
10.0.0.81,58:9c:fc:00:00:02,,0,{later},1,0,0,vm2,0,,0
"""


def test_kea_csv_last_row_wins_reclaimed_and_removed_rows_do_not_count() -> None:
    text = KEA.format(old=int(NOW) - 100, later=int(NOW) + 100)
    leases = parse_kea_csv(text)
    assert [(lease.address, lease.mac, lease.expires) for lease in leases] == [("10.0.0.80", VM_MAC, NOW + 100)]
    assert parse_server_leases(text) == leases


def test_server_format_detection_falls_back_to_dnsmasq() -> None:
    assert parse_server_leases(f"0 {VM_MAC} 10.0.0.60 vm1 *\n")[0].address == "10.0.0.60"
    assert parse_server_leases("") == ()


# --- neighbor tables ---------------------------------------------------------------------

#: ``arp -an --libxo json`` as FreeBSD 14 prints it: the shape is usr.sbin/arp/arp.c's
#: (container "arp", list "arp-cache", the xo_emit field names of print_entry); the
#: values are this test's. A complete dynamic entry, a permanent one, an incomplete
#: one, an expired one and a published (proxy ARP) one.
ARP_LIBXO = {
    "__version": "1",
    "arp": {
        "arp-cache": [
            {"hostname": "?", "ip-address": "10.0.0.90", "mac-address": "58:9c:fc:00:00:01", "interface": "bridge1", "expires": 1187, "type": "ethernet"},
            {"hostname": "?", "ip-address": "10.0.0.1", "mac-address": "02:7e:f2:f0:4c:0a", "interface": "bridge1", "permanent": True, "type": "ethernet"},
            {"hostname": "?", "ip-address": "10.0.0.91", "incomplete": True, "interface": "bridge1", "expires": 3, "type": "ethernet"},
            {"hostname": "?", "ip-address": "10.0.0.92", "mac-address": "58:9c:fc:00:00:02", "interface": "bridge1", "expired": True, "type": "ethernet"},
            {"hostname": "?", "ip-address": "10.0.0.93", "mac-address": "58:9c:fc:00:00:03", "interface": "bridge1", "permanent": True, "published": True, "type": "ethernet"},
        ]
    },
}


def test_freebsd_arp_libxo_complete_entries_only() -> None:
    assert parse_arp_libxo(json.dumps(ARP_LIBXO)) == (
        Neighbor("10.0.0.90", VM_MAC),
        Neighbor("10.0.0.1", "02:7e:f2:f0:4c:0a"),
    )
    assert parse_arp_libxo("not json") == () and parse_arp_libxo('{"arp": []}') == ()


NDP = """\
Neighbor                             Linklayer Address  Netif Expire    S Flags
2001:db8:10::90                      58:9c:fc:0:0:1     bridge1 23h59m58s S
fe80::5a9c:fcff:fe00:1%bridge1       58:9c:fc:0:0:1     bridge1 23h59m50s R
2001:db8:10::91                      (incomplete)       bridge1 expired   I
2001:db8:10::92                      58:9c:fc:0:0:2     bridge1 permanent R
2001:db8:10::93                      58:9c:fc:0:0:3     bridge1 expired   N
"""


def test_freebsd_ndp_text_states() -> None:
    assert parse_ndp(NDP) == (
        Neighbor("2001:db8:10::90", VM_MAC),
        Neighbor("fe80::5a9c:fcff:fe00:1%bridge1", VM_MAC),
        Neighbor("2001:db8:10::92", "58:9c:fc:00:00:02"),
    )


def test_linux_ip_neigh_json_states() -> None:
    text = json.dumps(
        [
            {"dst": "10.0.0.90", "dev": "d0", "lladdr": VM_MAC, "state": ["PERMANENT"]},
            {"dst": "10.0.0.91", "dev": "d0", "state": ["INCOMPLETE"]},
            {"dst": "10.0.0.92", "dev": "d0", "lladdr": "58:9c:fc:00:00:02", "state": ["FAILED"]},
            {"dst": "10.0.0.93", "dev": "d0", "lladdr": "58:9c:fc:00:00:03", "state": ["STALE"]},
            {"dst": "10.0.0.94", "dev": "d0", "lladdr": "58:9c:fc:00:00:04", "state": ["NOARP"]},
        ]
    )
    assert parse_ip_neigh(text) == (Neighbor("10.0.0.90", VM_MAC), Neighbor("10.0.0.93", "58:9c:fc:00:00:03"))


@pytest.mark.parametrize(
    ("text", "mac"),
    [("58:9C:FC:0:0:1", VM_MAC), ("58-9c-fc-00-00-01", VM_MAC), ("0", None), ("", None), (None, None), ("58:9c:fc:00:00", None), ("zz:9c:fc:00:00:01", None)],
)
def test_normalize_mac(text, mac) -> None:
    assert normalize_mac(text) == mac


# --- resolution ------------------------------------------------------------------------

VM = Target("vm1", (VM_MAC,), own_leases=False)
JAIL = Target("vnet1", ("58:9c:fc:00:00:0a",), own_leases=True)


def test_sources_in_order_dhclient_then_server_then_neighbor() -> None:
    own = {"vnet1": (("eth0", (Lease("10.0.0.5", None, NOW + 60),)),)}
    server = (Lease("10.0.0.6", "58:9c:fc:00:00:0a", NOW + 60), Lease("10.0.0.60", VM_MAC, NOW + 60))
    neighbors = (Neighbor("10.0.0.7", "58:9c:fc:00:00:0a"), Neighbor("10.0.0.70", VM_MAC))
    seen = Observations(own, server, neighbors)
    assert (resolve(JAIL, seen, NOW).addresses, resolve(JAIL, seen, NOW).source) == (("10.0.0.5",), SOURCE_DHCLIENT)
    assert (resolve(VM, seen, NOW).addresses, resolve(VM, seen, NOW).source) == (("10.0.0.60",), SOURCE_SERVER)
    later = NOW + 61  # every lease expired: the neighbor table answers
    assert (resolve(JAIL, seen, later).addresses, resolve(JAIL, seen, later).source) == (("10.0.0.7",), SOURCE_NEIGHBOR)
    assert resolve(VM, Observations(), NOW).addresses == ()


def test_a_lease_for_a_mac_cbsd_does_not_know_is_ignored() -> None:
    seen = Observations(server=(Lease("10.0.0.66", OTHER_MAC, None),), neighbors=(Neighbor("10.0.0.67", OTHER_MAC),))
    found = resolve(VM, seen, NOW)
    assert found.addresses == () and found.source == "" and VM_MAC in found.detail


@pytest.mark.parametrize(
    ("own_leases", "macs", "detail"),
    [
        (True, (VM_MAC,), f"address discovery found none in its own dhclient leases; sync.dhcp_leases and the neighbor table for {VM_MAC}"),
        (False, (VM_MAC,), f"address discovery found none in sync.dhcp_leases and the neighbor table for {VM_MAC}"),
        (True, (), "address discovery found none in its own dhclient leases; no MAC in CBSD's NIC tables (bhyvenic, xennic, qemunic, jailnic), so no DHCP server lease or neighbor entry can match"),
        (False, (), "address discovery had nowhere to look: no MAC in CBSD's NIC tables (bhyvenic, xennic, qemunic, jailnic), so no DHCP server lease or neighbor entry can match"),
    ],
    ids=["jail-with-mac", "vm-with-mac", "jail-without-mac", "vm-without-mac"],
)
def test_where_discovery_looked_reads_as_a_sentence(own_leases, macs, detail) -> None:
    """A running DHCP VM without a NIC row in ``bhyvenic`` (no own leases, no MAC) was
    skipped with "address discovery found none in no MAC in CBSD's bhyvenic/jailnic, ...":
    the list of places looked in was empty."""
    assert resolve(Target("env1", macs, own_leases), Observations(), NOW).detail == detail


def test_newest_server_lease_per_mac_and_every_nic() -> None:
    target = Target("vm2", (VM_MAC, "58:9c:fc:00:00:02"), own_leases=False)
    server = (
        Lease("10.0.0.61", VM_MAC, NOW + 60, order=0),
        Lease("10.0.0.62", VM_MAC, NOW + 60, order=5),
        Lease("10.0.0.63", "58:9c:fc:00:00:02", NOW - 1, order=6),
        Lease("2001:db8::63", "58:9c:fc:00:00:02", NOW + 60, order=7),
    )
    assert resolve(target, Observations(server=server), NOW).addresses == ("10.0.0.62", "2001:db8::63")


def test_neighbor_addresses_unusable_ones_dropped_and_ordered_whatever_the_kernel_order() -> None:
    neighbors = (
        Neighbor("fe80::5a9c:fcff:fe00:1%bridge1", VM_MAC),
        Neighbor("2001:db8::9", VM_MAC),
        Neighbor("10.0.0.200", VM_MAC),
        Neighbor("10.0.0.31", VM_MAC),
        Neighbor("224.0.0.1", VM_MAC),
    )
    one = resolve(VM, Observations(neighbors=neighbors), NOW)
    two = resolve(VM, Observations(neighbors=tuple(reversed(neighbors))), NOW)
    assert one.addresses == two.addresses == ("10.0.0.31", "10.0.0.200", "2001:db8::9")
    assert one.ipv4 == ("10.0.0.31", "10.0.0.200") and one.ipv6 == ("2001:db8::9",)


def test_an_unreadable_source_makes_the_state_unknown_only_when_nothing_was_found() -> None:
    failed = Observations(errors=("/var/db/dnsmasq.leases: No such file or directory",))
    assert resolve(VM, failed, NOW).unknown and "dnsmasq.leases" in resolve(VM, failed, NOW).detail
    found = Observations(neighbors=(Neighbor("10.0.0.70", VM_MAC),), errors=failed.errors)
    assert resolve(VM, found, NOW).addresses == ("10.0.0.70",) and not resolve(VM, found, NOW).unknown
    # A target without a MAC cannot use the server files: their failure does not concern it.
    assert not resolve(Target("j", (), True), failed, NOW).unknown
    own_failed = Observations(own_errors={"vnet1": "var/db: Permission denied"})
    assert resolve(JAIL, own_failed, NOW).unknown


def test_neighbors_are_needed_only_for_targets_with_a_mac_left_without_address() -> None:
    seen = Observations(own={"vnet1": (("eth0", (Lease("10.0.0.5", None, None),)),)})
    found = {t.jname: resolve(t, seen, NOW) for t in (JAIL, VM)}
    assert needs_neighbors(found, (JAIL, VM))
    assert not needs_neighbors({"vnet1": found["vnet1"]}, (JAIL,))
    nomac = Target("j", (), True)
    assert not needs_neighbors({"j": resolve(nomac, Observations(), NOW)}, (nomac,))


def env(jname, ip4_addr, *, emulator="jail", status=1, jid=3, tags=None, macs=()):
    return Environment(jname, emulator, status, jid, ip4_addr, None, tags, macs=macs)


def test_targets_are_running_enabled_environments_without_a_usable_address() -> None:
    envs = [
        env("static", "10.0.0.1/24"),
        env("dhcp", "DHCP"),
        env("real", "REALDHCP", macs=("58:9c:fc:00:00:0a",)),
        env("unset", None),
        env("mapped", "::ffff:10.0.0.61"),
        env("stopped", "DHCP", status=0, jid=0),
        env("off", "DHCP", tags="consul=off"),
        env("ruled-off", "DHCP"),
        env("vm", "DHCP", emulator="bhyve", status=0, jid=4242, macs=(VM_MAC,)),
    ]
    found = targets(envs, (Rule("ruled-*", enabled=False),))
    assert found == (
        Target("dhcp", (), True),
        Target("mapped", (), True),
        Target("real", ("58:9c:fc:00:00:0a",), True),
        Target("unset", (), True),
        Target("vm", (VM_MAC,), False),
    )
