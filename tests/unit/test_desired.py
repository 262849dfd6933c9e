"""Unit tests for jailsyncd.desired.build_desired: CBSD state -> desired Consul services.

Rules come from the CBSD data model (running: jail status=1 & jid>0; VMs jid>0;
status 2/3 never; ``qemu-*-static`` is a jail), the model constants and the
docstrings of desired/tagspec/naming.
"""

from __future__ import annotations

import pytest

from jailsyncd.adapters.consul.agent import tagged_addresses
from jailsyncd.desired import MAX_META_PAIRS, build_desired
from jailsyncd.addresses import parse_ip4_addr
from jailsyncd.model import CbsdState, Environment, Note, Skip
from jailsyncd.naming import suffixed_label
from jailsyncd.tagspec import Rule

OWNER = "owner-host"
RESERVED = {"external-source", "jailsyncd-owner", "cbsd-jname", "cbsd-host", "cbsd-emulator", "cbsd-fqdn"}


def env(jname="web1", emulator="jail", status=1, jid=3, ip4_addr="10.0.0.10/24", host_hostname=None, tags=None):
    return Environment(jname, emulator, status, jid, ip4_addr, host_hostname, tags)


def build(*envs, nodename="node1", unreadable=(), owner=OWNER, rules=(), prefer_ipv6=False):
    state = CbsdState(nodename, tuple(envs), tuple(unreadable))
    return build_desired(state, owner=owner, rules=tuple(rules), prefer_ipv6=prefer_ipv6)


def one(desired):
    assert len(desired.services) == 1, desired
    return desired.services[0]


def notes_of(desired, kind):
    return [n for n in desired.notes if n.kind == kind]


# --- running or not --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("emulator", "status", "jid", "registered"),
    [
        ("jail", 1, 3, True),
        ("jail", 1, 0, False),  # status on but no kernel jail
        ("jail", 0, 3, False),  # stale jid, status off
        ("jail", 0, 0, False),
        ("jail", 2, 3, False),  # slave: runs on another node
        ("jail", 3, 3, False),  # maintenance
        ("jail", 1, -1, False),
        ("bhyve", 0, 48213, True),  # VMs never get status=1; jid is the bhyve PID
        ("bhyve", 1, 48213, True),
        ("bhyve", 0, 0, False),
        ("bhyve", 2, 48213, False),
        ("bhyve", 3, 48213, False),
        ("xen", 0, 7, True),
        ("qemu", 0, 7, True),
        ("qemu-aarch64-static", 1, 4, True),  # a cross-arch jail
        ("qemu-aarch64-static", 0, 4, False),  # ...so it needs status=1 like any jail
        ("qemu-arm-static", 1, 4, True),
        ("qemu-aarch64-static", 2, 4, False),
    ],
)
def test_running_rules(emulator, status, jid, registered):
    desired = build(env(emulator=emulator, status=status, jid=jid))
    assert [s.service_id for s in desired.services] == (["jailsyncd-web1"] if registered else [])
    assert desired.skipped == ()  # not running is not a skip


@pytest.mark.parametrize(
    ("emulator", "status", "kind_tag"),
    [
        ("jail", 1, "jail"),
        ("bhyve", 0, "bhyve"),
        ("xen", 0, "xen"),
        ("qemu-aarch64-static", 1, "jail"),
        ("qemu-mips64-static", 1, "jail"),
        ("virtualbox", 0, "virtualbox"),
        ("qemu", 0, "qemu"),
        ("qemu-user", 0, "qemu-user"),  # only qemu-*-static is a jail
        ("qemu-static-x", 0, "qemu-static-x"),
    ],
)
def test_kind_tag_and_emulator_meta(emulator, status, kind_tag):
    svc = one(build(env(emulator=emulator, status=status, jid=9)))
    assert svc.tags == frozenset({kind_tag})
    assert dict(svc.meta)["cbsd-emulator"] == emulator


# --- unaddressable / opted out ---------------------------------------------------------


@pytest.mark.parametrize(
    ("ip4_addr", "detail_has"),
    [
        ("DHCP", "DHCP"),
        ("dhcp", "DHCP"),
        ("DHCP,DHCPv6", "DHCP"),
        ("REALDHCP", "REALDHCP"),
        ("0", "unset"),
        (None, "unset"),
        ("", "unset"),
        ("garbage", "garbage"),
        ("10.0.0.5/33", "10.0.0.5/33"),
        ("0.0.0.0", "0.0.0.0"),
    ],
)
def test_unaddressable(ip4_addr, detail_has):
    desired = build(env(ip4_addr=ip4_addr), env("vm1", emulator="bhyve", status=0, jid=77, ip4_addr=ip4_addr))
    assert desired.services == ()
    assert [(s.jail, s.reason) for s in desired.skipped] == [("vm1", "unaddressable"), ("web1", "unaddressable")]
    assert all(detail_has in s.detail for s in desired.skipped)


def test_rejected_addresses_are_noted_and_the_others_kept():
    desired = build(env(ip4_addr="::ffff:10.0.0.61,224.0.0.1,10.0.0.60/24,10.0.0.255/24"))
    svc = one(desired)
    assert svc.address == "10.0.0.60"
    assert svc.addresses == ("10.0.0.60",)
    notes = notes_of(desired, "address_rejected")
    assert [n.detail.split()[2] for n in notes] == ["::ffff:10.0.0.61", "224.0.0.1", "10.0.0.255/24"]
    assert "IPv4-mapped" in notes[0].detail and "multicast" in notes[1].detail and "broadcast" in notes[2].detail


def test_a_jail_with_only_rejected_addresses_is_unaddressable_with_the_reason():
    desired = build(env(ip4_addr="::ffff:10.0.0.61"))
    assert desired.services == ()
    [skip] = desired.skipped
    assert skip.reason == "unaddressable" and "::ffff:10.0.0.61" in skip.detail and "IPv4-mapped" in skip.detail


def test_rows_without_a_jname_are_one_skip():
    state = CbsdState("node1", (env(),), (), nameless=2)
    desired = build_desired(state, owner=OWNER)
    assert [s.jail for s in desired.services] == ["web1"]
    [skip] = desired.skipped
    assert skip.reason == "invalid_row" and skip.detail.startswith("2 row(s)")


def test_invalid_items_are_noted_but_a_valid_address_still_registers():
    desired = build(env(ip4_addr="garbage,10.0.0.5/24"))
    assert one(desired).address == "10.0.0.5"
    notes = notes_of(desired, "invalid_address")
    assert len(notes) == 1 and notes[0].jail == "web1" and "garbage" in notes[0].detail


@pytest.mark.parametrize(
    ("tags", "rules", "ip4_addr"),
    [
        ("consul=off", (), "10.0.0.5"),
        ("web,consul=no", (), "10.0.0.5"),
        (None, (Rule("web*", enabled=False),), "10.0.0.5"),
        ("consul=off", (), "DHCP"),  # opted out wins over unaddressable
    ],
)
def test_opted_out(tags, rules, ip4_addr):
    desired = build(env(tags=tags, ip4_addr=ip4_addr), rules=rules)
    assert desired.services == ()
    assert [(s.jail, s.reason) for s in desired.skipped] == [("web1", "opted_out")]


def test_opted_out_but_not_running_is_silent():
    desired = build(env(status=0, jid=0, tags="consul=off"))
    assert (desired.services, desired.skipped, desired.notes) == ((), (), ())
    assert not desired.empty_source  # a row, stopped: not an empty table


def test_rule_disabled_but_column_enables():
    svc = one(build(env(tags="consul=on"), rules=(Rule("*", enabled=False),)))
    assert svc.service_id == "jailsyncd-web1"


# --- address choice and every address (agent mode's tagged addresses) ------------------


@pytest.mark.parametrize(
    ("ip4_addr", "prefer_ipv6", "address"),
    [
        ("10.0.0.5/24,fd00::5/64,10.0.1.5", False, "10.0.0.5"),
        ("10.0.0.5/24,fd00::5/64,10.0.1.5", True, "fd00::5"),
        ("fd00::5/64,10.0.0.5", False, "10.0.0.5"),  # first IPv4, not first item
        ("fd00::5/64,fd00::6", False, "fd00::5"),  # no IPv4: IPv6
        ("10.0.0.5,10.0.0.6", True, "10.0.0.5"),  # no IPv6: IPv4
        ("em0#192.168.1.25/24,em0#2001:DB8:25::25/64", True, "2001:db8:25::25"),
        ("vhid_3#10.0.0.100/24", False, "10.0.0.100"),
        ("DHCP,10.0.0.7/24", False, "10.0.0.7"),
        ("garbage,10.0.0.8", False, "10.0.0.8"),
    ],
)
def test_address_choice(ip4_addr, prefer_ipv6, address):
    svc = one(build(env(ip4_addr=ip4_addr), prefer_ipv6=prefer_ipv6))
    assert svc.address == address
    assert "/" not in svc.address


@pytest.mark.parametrize(
    ("ip4_addr", "expected"),
    [
        ("10.0.0.5/24", {"lan_ipv4": "10.0.0.5", "wan_ipv4": "10.0.0.5"}),
        ("fd00::5/64", {"lan_ipv6": "fd00::5", "wan_ipv6": "fd00::5"}),
        (
            "10.0.0.5/24,fd00::5/64,10.0.1.5,fd00::6,10.0.2.5",
            {
                "lan_ipv4": "10.0.0.5",
                "wan_ipv4": "10.0.0.5",
                "cbsd_ipv4_2": "10.0.1.5",
                "cbsd_ipv4_3": "10.0.2.5",
                "lan_ipv6": "fd00::5",
                "wan_ipv6": "fd00::5",
                "cbsd_ipv6_2": "fd00::6",
            },
        ),
        ("10.0.0.5,10.0.0.5/24", {"lan_ipv4": "10.0.0.5", "wan_ipv4": "10.0.0.5"}),  # duplicates once
    ],
)
def test_tagged_addresses(ip4_addr, expected):
    """The core keeps every address (no prefix, IPv4 first, each family in column
    order); agent mode names them as Consul does."""
    for prefer_ipv6 in (False, True):
        svc = one(build(env(ip4_addr=ip4_addr), prefer_ipv6=prefer_ipv6))
        assert svc.addresses == parse_ip4_addr(ip4_addr).all
        assert all("/" not in addr for addr in svc.addresses)
        tagged = tagged_addresses(svc.addresses)
        assert dict(tagged) == expected
        assert len(tagged) == len(expected)
        assert list(tagged) == sorted(tagged)


# --- service fields and meta -----------------------------------------------------------


def test_full_service_for_a_jail():
    svc = one(build(env("db1", ip4_addr="10.0.0.11/24,fd00:10::11/64", host_hostname="db1.example.org", tags="postgres,consul.port=5432,team=data")))
    assert svc.service_id == "jailsyncd-db1"
    assert svc.name == "db1"
    assert svc.address == "10.0.0.11"
    assert svc.port == 5432
    assert svc.tags == frozenset({"jail", "postgres"})
    assert dict(svc.meta) == {
        "external-source": "cbsd",
        "jailsyncd-owner": OWNER,
        "cbsd-jname": "db1",
        "cbsd-host": "node1",
        "cbsd-emulator": "jail",
        "cbsd-fqdn": "db1.example.org",
        "team": "data",
    }
    assert list(svc.meta) == sorted(svc.meta)
    assert svc.jail == "db1"


@pytest.mark.parametrize(("nodename", "host"), [("node1", "node1"), (None, OWNER), ("", OWNER)])
def test_cbsd_host_is_nodename_else_owner(nodename, host):
    svc = one(build(env(), nodename=nodename))
    meta = dict(svc.meta)
    assert meta["cbsd-host"] == host
    assert meta["jailsyncd-owner"] == OWNER


def test_no_port_means_zero_and_no_fqdn_means_no_key():
    svc = one(build(env(host_hostname=None)))
    assert svc.port == 0
    assert "cbsd-fqdn" not in dict(svc.meta)
    assert set(dict(svc.meta)) == RESERVED - {"cbsd-fqdn"}


def test_user_meta_cannot_override_reserved_keys():
    column = ",".join(f"{k}=evil" for k in sorted(RESERVED)) + ",team=a"
    rules = (Rule("*", meta=(("cbsd-jname", "evil-rule"), ("tier", "1"))),)
    desired = build(env(host_hostname="web1.my.domain", tags=column), rules=rules)
    meta = dict(one(desired).meta)
    assert meta["external-source"] == "cbsd"
    assert meta["jailsyncd-owner"] == OWNER
    assert meta["cbsd-jname"] == "web1"
    assert meta["cbsd-host"] == "node1"
    assert meta["cbsd-emulator"] == "jail"
    assert meta["cbsd-fqdn"] == "web1.my.domain"
    assert meta["team"] == "a" and meta["tier"] == "1"
    assert "evil" not in meta.values() and "evil-rule" not in meta.values()
    dropped = notes_of(desired, "meta_dropped")
    assert sorted(n.detail.split(":")[0] for n in dropped) == sorted(RESERVED)
    assert all(n.jail == "web1" for n in dropped)


@pytest.mark.parametrize(("host_hostname", "reserved_count"), [("web1.my.domain", 6), (None, 5)])
def test_meta_pair_limit(host_hostname, reserved_count):
    assert MAX_META_PAIRS == 64
    user = [f"k{i:03d}" for i in range(80)]
    desired = build(env(host_hostname=host_hostname, tags=",".join(f"{k}=v" for k in user)))
    meta = dict(one(desired).meta)
    assert len(meta) == 64
    room = 64 - reserved_count
    assert set(meta) - RESERVED == set(user[:room])  # the first ones in column order win
    dropped = notes_of(desired, "meta_dropped")
    assert [n.detail.split(":")[0] for n in dropped] == user[room:]


def test_meta_limit_exactly_full_drops_nothing():
    user = [f"k{i}" for i in range(64 - 6)]
    desired = build(env(host_hostname="h.example", tags=",".join(f"{k}=v" for k in user)))
    assert len(one(desired).meta) == 64
    assert notes_of(desired, "meta_dropped") == []


@pytest.mark.parametrize(("length", "kept"), [(1, True), (512, True), (513, False), (5000, False)])
def test_long_host_hostname(length, kept):
    fqdn = "h" * length
    desired = build(env(host_hostname=fqdn))
    meta = dict(one(desired).meta)  # still registered either way
    assert ("cbsd-fqdn" in meta) is kept
    dropped = notes_of(desired, "meta_dropped")
    if kept:
        assert meta["cbsd-fqdn"] == fqdn and dropped == []
    else:
        assert len(dropped) == 1 and "cbsd-fqdn" in dropped[0].detail and fqdn not in dropped[0].detail


def test_ignored_tag_items_become_notes():
    desired = build(env(tags="web,consul.port=x,consul.bogus=1"))
    svc = one(desired)
    assert svc.tags == frozenset({"jail", "web"}) and svc.port == 0
    ignored = notes_of(desired, "ignored_tag")
    assert [n.detail.split(":")[0] for n in ignored] == ["consul.port=x", "consul.bogus=1"]


# --- names -----------------------------------------------------------------------------


def test_name_collision_exact_keeps_lossy_is_suffixed_and_noted():
    desired = build(env("web_1", ip4_addr="10.0.0.1"), env("web-1", ip4_addr="10.0.0.2"))
    names = {s.jail: s.name for s in desired.services}
    assert names == {"web-1": "web-1", "web_1": suffixed_label("web_1")}
    collisions = notes_of(desired, "name_collision")
    assert [n.jail for n in collisions] == ["web_1"]
    assert names["web_1"] in collisions[0].detail


def test_name_collision_with_a_stopped_jail_is_settled_the_same_way():
    running_only = build(env("web_1"), env("web-1", status=0, jid=0))
    assert one(running_only).name == suffixed_label("web_1")
    both = build(env("web_1"), env("web-1", ip4_addr="10.0.0.2"))
    assert {s.jail: s.name for s in both.services}["web_1"] == one(running_only).name


def test_no_collision_means_plain_label_and_no_note():
    desired = build(env("Web_1"))
    assert one(desired).name == "web-1"
    assert desired.notes == ()


def test_result_is_independent_of_row_order():
    envs = [
        env("web_1", ip4_addr="10.0.0.1"),
        env("web-1", ip4_addr="10.0.0.2"),
        env("WEB@1", ip4_addr="10.0.0.3", tags="consul.port=x"),
        env("vm1", emulator="bhyve", status=0, jid=99, ip4_addr="DHCP"),
        env("off", tags="consul=off"),
    ]
    forward = build(*envs, unreadable=(("vmx", "locked"),))
    backward = build(*reversed(envs), unreadable=(("vmx", "locked"),))
    assert forward == backward
    assert [s.jail for s in forward.services] == sorted(s.jail for s in forward.services)
    assert len({s.name for s in forward.services}) == 3


@pytest.mark.parametrize(
    ("tags", "rules"),
    [
        ("consul.name=www", ()),
        (None, (Rule("www*", name="www"),)),
    ],
)
def test_consul_name_is_shared(tags, rules):
    desired = build(env("www1", ip4_addr="10.0.0.1", tags=tags), env("www2", ip4_addr="10.0.0.2", tags=tags), rules=rules)
    assert [(s.service_id, s.name, s.address) for s in desired.services] == [
        ("jailsyncd-www1", "www", "10.0.0.1"),
        ("jailsyncd-www2", "www", "10.0.0.2"),
    ]
    assert desired.notes == ()


@pytest.mark.parametrize(("given", "registered"), [("WWW", "www"), ("my_site", "my-site"), ("@@", "x")])
def test_consul_name_is_sanitized_with_a_note(given, registered):
    desired = build(env(tags=f"consul.name={given}"))
    assert one(desired).name == registered
    notes = notes_of(desired, "name_sanitized")
    assert len(notes) == 1 and registered in notes[0].detail


# --- unreadable per-VM DB --------------------------------------------------------------


def test_unreadable_environment_is_skipped_and_protected():
    desired = build(
        env("vm1", emulator="bhyve", status=0, jid=4242, ip4_addr="10.0.0.50"),
        env("vm2", emulator="bhyve", status=0, jid=0, ip4_addr="10.0.0.51"),
        env("web1"),
        unreadable=(("vm1", "per-VM DB is locked"), ("vm2", "per-VM DB missing")),
    )
    assert [s.jail for s in desired.services] == ["web1"]
    assert Skip("vm1", "source_error", "per-VM DB is locked") in desired.skipped
    assert {s.jail for s in desired.skipped if s.reason == "source_error"} >= {"vm1"}
    assert desired.protected == frozenset({"vm1", "vm2"})
    assert "web1" not in desired.protected


def test_nothing_unreadable_means_nothing_protected():
    assert build(env()).protected == frozenset()


def test_empty_state():
    desired = build()
    assert (desired.services, desired.skipped, desired.notes, desired.protected) == ((), (), (), frozenset())


def test_note_type():
    desired = build(env(tags="consul.port=x"))
    assert all(isinstance(n, Note) for n in desired.notes)


# --- address discovery (sync.discover_addresses) ---------------------------------------

from jailsyncd.leases import Discovered  # noqa: E402


def test_a_discovered_address_is_registered_like_a_cbsd_one_with_its_source() -> None:
    vm = env("win10", emulator="bhyve", status=0, jid=4242, ip4_addr="DHCP", tags="consul.port=3389,desktop")
    found = {"win10": Discovered(("10.0.0.70", "2001:db8::70"), "dhcp-server", "a lease")}
    svc = one(build_desired(CbsdState("node1", (vm,)), owner=OWNER, discovered=found))
    assert (svc.address, svc.port, svc.tags) == ("10.0.0.70", 3389, frozenset({"bhyve", "desktop"}))
    meta = dict(svc.meta)
    assert meta["cbsd-address-source"] == "dhcp-server" and meta["cbsd-jname"] == "win10"
    assert svc.addresses == ("10.0.0.70", "2001:db8::70")
    six = one(build_desired(CbsdState("node1", (vm,)), owner=OWNER, discovered=found, prefer_ipv6=True))
    assert six.address == "2001:db8::70"


def test_a_cbsd_address_wins_over_discovery_and_carries_no_source() -> None:
    svc = one(build_desired(CbsdState("node1", (env(ip4_addr="10.0.0.10"),)), owner=OWNER, discovered={"web1": Discovered(("10.0.0.99",), "neighbor")}))
    assert svc.address == "10.0.0.10" and "cbsd-address-source" not in dict(svc.meta)


def test_nothing_discovered_is_unaddressable_saying_where_it_looked() -> None:
    found = {"web1": Discovered(detail="address discovery found none in its own dhclient leases")}
    desired = build_desired(CbsdState("node1", (env(ip4_addr="REALDHCP"),)), owner=OWNER, discovered=found)
    (skip,) = desired.skipped
    assert skip.reason == "unaddressable" and "REALDHCP" in skip.detail and "found none in its own dhclient leases" in skip.detail


def test_an_unreadable_discovery_source_protects_the_environment() -> None:
    found = {"web1": Discovered(detail="address discovery could not read a source: x", unknown=True)}
    desired = build_desired(CbsdState("node1", (env(ip4_addr="DHCP"),)), owner=OWNER, discovered=found)
    assert desired.services == () and desired.protected == frozenset({"web1"})
    assert [(s.reason, s.detail) for s in desired.skipped] == [("source_error", "address discovery could not read a source: x")]


def test_the_address_source_meta_cannot_be_set_from_the_tags_column() -> None:
    vm = env(ip4_addr="DHCP", tags="cbsd-address-source=forged")
    svc = one(build_desired(CbsdState("node1", (vm,)), owner=OWNER, discovered={"web1": Discovered(("10.0.0.5",), "dhclient")}))
    assert dict(svc.meta)["cbsd-address-source"] == "dhclient"


def test_a_service_name_consul_reserves_is_skipped_in_the_modes_that_register_it():
    """A record named ``consul`` (any case) would join Consul's own service; catalog
    mode's article layout names every service ``jail`` and is not affected."""
    from records import agent_record, catalog_record

    from jailsyncd.desired import without_reserved_names
    from jailsyncd.model import Desired
    from jailsyncd.settings import CatalogSettings

    article = CatalogSettings(layout="article")
    cases = [
        (agent_record("consul"), "reserved_name"),
        (agent_record("web", name="Consul"), "reserved_name"),
        (catalog_record("consul"), "reserved_name"),
        (catalog_record("consul", settings=article), None),
        (agent_record("consul2", name="consul-jail"), None),
    ]
    for record, reason in cases:
        out = without_reserved_names(Desired((), records=(record,)))
        assert [s.reason for s in out.skipped] == ([reason] if reason else []), record
        assert out.records == (() if reason else (record,))
        if reason:
            assert out.skipped[0].jail == record.jail and "consul.name=" in out.skipped[0].detail
