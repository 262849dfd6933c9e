"""The platform module: FreeBSD answers come from recorded sysctl values (what
``sysctl -n`` prints on a stock FreeBSD 14), never from the machine running the tests."""

from __future__ import annotations

import socket
import sys

import pytest

from jailsyncd.platform import EchoLimit, Platform, _system_name, current

#: ``sysctl -n`` on a stock FreeBSD 14.x (defaults from sys/netinet/ip_icmp.c,
#: sys/netinet/raw_ip.c and SB_MAX in sys/sys/sockbuf.h).
FREEBSD_DEFAULTS = {
    "net.inet.icmp.icmplim": "200",
    "net.inet.icmp.icmplim_jitter": "16",
    "net.inet.raw.recvspace": "9216",
    "kern.ipc.maxsockbuf": "2097152",
}


def freebsd(**overrides: str) -> Platform:  # keys: dotted sysctl names (via **{...})
    values = {**FREEBSD_DEFAULTS, **overrides}
    return Platform("freebsd", sysctl=values.get)


@pytest.mark.parametrize(("platform", "system"), [("freebsd14", "freebsd"), ("linux", "linux"), ("darwin", "darwin")])
def test_system_names(platform: str, system: str) -> None:
    assert _system_name(platform) == system


def test_current_is_this_system() -> None:
    assert current().system == _system_name(sys.platform)


@pytest.mark.parametrize(
    ("values", "limit", "rate"),
    [
        ({}, EchoLimit(200, 16, "net.inet.icmp.icmplim"), 165),  # (200 - 16) * 0.9
        ({"net.inet.icmp.icmplim": "0"}, None, 0),  # 0 disables the limit
        ({"net.inet.icmp.icmplim": "1000", "net.inet.icmp.icmplim_jitter": "0"}, EchoLimit(1000, 0, "net.inet.icmp.icmplim"), 900),
        ({"net.inet.icmp.icmplim": "5"}, EchoLimit(5, 16, "net.inet.icmp.icmplim"), 1),
    ],
)
def test_freebsd_echo_limit_and_default_rate(values, limit, rate) -> None:
    platform = freebsd(**{k: v for k, v in values.items()})
    assert platform.echo_limit() == limit
    assert platform.default_rate_limit() == rate


def test_unreadable_icmplim_means_no_known_limit() -> None:
    assert Platform("freebsd", sysctl=lambda name: None).default_rate_limit() == 0


def test_linux_has_no_default_echo_limit() -> None:
    asked = []
    linux = Platform("linux", sysctl=lambda name: asked.append(name) or "1000")
    assert linux.echo_limit() is None and linux.default_rate_limit() == 0
    assert asked == []


def test_ping_sockets_and_hints() -> None:
    assert not freebsd().ping_sockets and Platform("linux").ping_sockets
    hint = freebsd().icmp_unavailable_hint(privileged=False)
    assert "root" in hint and "health.enabled = false" in hint and "ping_group_range" not in hint
    assert "ping_group_range" in Platform("linux").icmp_unavailable_hint(privileged=False)


def test_receive_buffer_options() -> None:
    assert freebsd().receive_buffer_options(privileged=True) == (socket.SO_RCVBUF,)
    assert Platform("linux").receive_buffer_options(privileged=True)[0] != socket.SO_RCVBUF
    assert Platform("linux").receive_buffer_options(privileged=False) == (socket.SO_RCVBUF,)


@pytest.mark.parametrize(
    ("granted", "fit"),
    [
        (9216, 92),  # net.inet.raw.recvspace: ~90 replies
        (1024 * 1024, 4096),  # mbuf accounting caps at maxsockbuf / 512
        (1, 1),
    ],
)
def test_freebsd_replies_fit(granted: int, fit: int) -> None:
    assert freebsd().replies_fit(granted) == fit


@pytest.mark.parametrize(
    ("values", "needed", "explicit", "hint"),
    [
        ({}, 400, False, "sysctl net.inet.icmp.icmplim=462 (and in /etc/sysctl.conf)"),
        ({}, 400, True, "sysctl net.inet.icmp.icmplim=462 (and in /etc/sysctl.conf), and raise health.rate_limit to 400 or remove it"),
        ({}, 100, True, "raise health.rate_limit to 100 (below net.inet.icmp.icmplim=200)"),
        ({"net.inet.icmp.icmplim": "0"}, 100, True, "raise health.rate_limit to 100"),
    ],
)
def test_raise_limit_hint(values, needed, explicit, hint) -> None:
    platform = freebsd(**values)
    assert platform.raise_limit_hint(needed, explicit) == hint
    if "sysctl" in hint:  # the value named is enough: jailsyncd's default rate then reaches ``needed``
        value = hint.split("=")[1].split()[0]
        assert freebsd(**{**values, "net.inet.icmp.icmplim": value}).default_rate_limit() >= needed
    assert Platform("linux").raise_limit_hint(50.2, True) == "raise health.rate_limit to 51"


# -- the neighbor table (address discovery) ---------------------------------------------


def test_freebsd_neighbor_table_runs_arp_with_libxo_and_ndp() -> None:
    """The commands and their recorded outputs: arp's libxo shape is usr.sbin/arp/arp.c's
    (container "arp", list "arp-cache"), ndp's the text columns of usr.sbin/ndp/ndp.c."""
    import json

    from jailsyncd.leases import Neighbor

    arp = json.dumps({"__version": "1", "arp": {"arp-cache": [
        {"hostname": "?", "ip-address": "10.0.0.90", "mac-address": "58:9c:fc:00:00:01", "interface": "bridge1", "expires": 1187, "type": "ethernet"},
    ]}})
    ndp = "Neighbor        Linklayer Address  Netif Expire    S Flags\n2001:db8::90    58:9c:fc:0:0:1     bridge1 23h59m58s S\n"
    asked: list[list[str]] = []

    def run(argv: list[str]) -> str | None:
        asked.append(argv)
        return {"arp": arp, "ndp": ndp}[argv[0]]

    table = Platform("freebsd", run=run).neighbor_table()
    assert asked == [["arp", "-an", "--libxo", "json"], ["ndp", "-an"]]
    assert table == (Neighbor("10.0.0.90", "58:9c:fc:00:00:01"), Neighbor("2001:db8::90", "58:9c:fc:00:00:01"))
    # ndp failing (a kernel without INET6) leaves ARP; arp failing fails the table.
    assert Platform("freebsd", run=lambda argv: arp if argv[0] == "arp" else None).neighbor_table() == table[:1]
    assert Platform("freebsd", run=lambda argv: None if argv[0] == "arp" else ndp).neighbor_table() is None
    linux: list[list[str]] = []
    Platform("linux", run=lambda argv: linux.append(argv) or "[]").neighbor_table()
    assert linux == [["ip", "-json", "neigh", "show"]]


# -- processes ------------------------------------------------------------------------


def test_freebsd_process_age_asks_ps_for_etimes() -> None:
    """FreeBSD mounts no procfs by default: ps(1)'s ``etimes`` keyword (bin/ps/keyword.c,
    printed by print.c's ``elapseds``: whole seconds since the process started) with
    ``=`` for no header. A process that is gone (ps prints nothing, fails) has no age."""
    asked: list[list[str]] = []

    def run(argv: list[str]) -> str | None:
        asked.append(argv)
        return "   7384\n"

    assert Platform("freebsd", run=run).process_age(812) == 7384.0
    assert asked == [["ps", "-o", "etimes=", "-p", "812"]]
    assert Platform("freebsd", run=lambda argv: None).process_age(812) is None
    assert Platform("freebsd", run=lambda argv: "\n").process_age(812) is None
    assert Platform("freebsd", run=lambda argv: "garbage\n").process_age(812) is None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads this Linux kernel's /proc")
def test_linux_process_age_of_a_live_and_a_missing_process() -> None:
    """Linux: /proc/PID/stat's start time (field 22, clock ticks after boot) against
    /proc/uptime. This test process started less than an hour ago, and after its
    interpreter: its age is positive and below the whole machine's uptime."""
    import os

    age = Platform("linux").process_age(os.getpid())
    assert age is not None and 0 <= age < 3600
    with open("/proc/uptime") as fh:
        assert age <= float(fh.read().split()[0])
    assert Platform("linux").process_age(2**22 + 1) is None  # above pid_max's ceiling
