"""Unit tests for jailsyncd.addresses: every form CBSD writes into ``ip4_addr``.

Expected values are written from the rules in the module docstring and in CBSD's data
model (prefix stripped, interface/CARP prefix dropped, canonical text, column order,
no duplicates, DHCP-like markers upper-cased, garbage cut to 64 characters).
"""

from __future__ import annotations

import ipaddress
import time

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from jailsyncd.addresses import ParsedAddresses, is_directed_broadcast, parse_ip4_addr

P = ParsedAddresses


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        # plain IPv4, with and without prefix
        pytest.param("10.0.0.5/24", P(ipv4=("10.0.0.5",)), id="v4-prefix"),
        pytest.param("10.0.0.5", P(ipv4=("10.0.0.5",)), id="v4-bare"),
        pytest.param("10.0.0.5/32", P(ipv4=("10.0.0.5",)), id="v4-prefix-32"),
        pytest.param("10.0.0.5/0", P(ipv4=("10.0.0.5",)), id="v4-prefix-0"),
        # IPv6
        pytest.param("2001:db8::5/64", P(ipv6=("2001:db8::5",)), id="v6-prefix"),
        pytest.param("2001:db8::5", P(ipv6=("2001:db8::5",)), id="v6-bare"),
        pytest.param("2001:db8::5/128", P(ipv6=("2001:db8::5",)), id="v6-prefix-128"),
        pytest.param("2001:DB8::A/64", P(ipv6=("2001:db8::a",)), id="v6-upper-canonical"),
        pytest.param("2001:0db8:0000:0000:0000:0000:0000:0005", P(ipv6=("2001:db8::5",)), id="v6-long-canonical"),
        # comma-separated mixes keep column order per family
        pytest.param(
            "10.0.0.5/24,fd00::5/64,10.0.1.5",
            P(ipv4=("10.0.0.5", "10.0.1.5"), ipv6=("fd00::5",)),
            id="mix",
        ),
        pytest.param(
            "fd00::9/64,10.0.1.5,10.0.0.5/24,fd00::1",
            P(ipv4=("10.0.1.5", "10.0.0.5"), ipv6=("fd00::9", "fd00::1")),
            id="mix-order-kept",
        ),
        # interface prefixes: '#' and '|', the address is after the last separator
        pytest.param("em0#10.0.0.5/24", P(ipv4=("10.0.0.5",)), id="iface-hash"),
        pytest.param("em0|10.0.0.5/24", P(ipv4=("10.0.0.5",)), id="iface-pipe"),
        pytest.param("em0#2001:db8:25::25/64", P(ipv6=("2001:db8:25::25",)), id="iface-v6"),
        pytest.param("em0|fd00::5", P(ipv6=("fd00::5",)), id="iface-pipe-v6"),
        pytest.param("lagg0#vlan5|10.0.0.5/24", P(ipv4=("10.0.0.5",)), id="iface-two-separators"),
        pytest.param(
            "em0#192.168.1.25/24,em0#2001:db8:25::25/64",
            P(ipv4=("192.168.1.25",), ipv6=("2001:db8:25::25",)),
            id="iface-mix-example-row",
        ),
        # CARP
        pytest.param("vhid_3#10.0.0.100/24", P(ipv4=("10.0.0.100",)), id="carp"),
        pytest.param("vhid_3#10.0.0.100/24,10.0.0.5/24", P(ipv4=("10.0.0.100", "10.0.0.5")), id="carp-plus-plain"),
        # DHCP-like markers, any case, upper-cased in `dynamic`
        pytest.param("DHCP", P(dynamic=("DHCP",)), id="dhcp"),
        pytest.param("dhcp", P(dynamic=("DHCP",)), id="dhcp-lower"),
        pytest.param("DHCPv6", P(dynamic=("DHCPV6",)), id="dhcpv6"),
        pytest.param("dhcpv6", P(dynamic=("DHCPV6",)), id="dhcpv6-lower"),
        pytest.param("REALDHCP", P(dynamic=("REALDHCP",)), id="realdhcp"),
        pytest.param("RealDhcp", P(dynamic=("REALDHCP",)), id="realdhcp-mixed-case"),
        pytest.param("DHCP,DHCPv6", P(dynamic=("DHCP", "DHCPV6")), id="dhcp-both"),
        pytest.param("DHCP,10.0.0.7/24", P(ipv4=("10.0.0.7",), dynamic=("DHCP",)), id="dhcp-plus-static"),
        # "no address" spellings
        pytest.param("0", P(), id="zero"),
        pytest.param("", P(), id="empty"),
        pytest.param(None, P(), id="none"),
        pytest.param(",", P(), id="lone-comma"),
        pytest.param(" , ,0, ", P(), id="only-blanks-and-zero"),
        pytest.param("0,10.0.0.5", P(ipv4=("10.0.0.5",)), id="zero-then-address"),
        # spaces around items are tolerated
        pytest.param(" 10.0.0.5/24 , fd00::5/64 ", P(ipv4=("10.0.0.5",), ipv6=("fd00::5",)), id="spaces"),
        pytest.param("\t10.0.0.5\n", P(ipv4=("10.0.0.5",)), id="tab-newline"),
        pytest.param(" dhcp ", P(dynamic=("DHCP",)), id="spaces-dhcp"),
        # duplicates collapse (also when they differ only by prefix/interface/spelling)
        pytest.param("10.0.0.5/24,10.0.0.5", P(ipv4=("10.0.0.5",)), id="dup-prefix"),
        pytest.param("10.0.0.5,em0#10.0.0.5/16,10.0.0.6,10.0.0.5", P(ipv4=("10.0.0.5", "10.0.0.6")), id="dup-many"),
        pytest.param("2001:DB8::5/64,2001:db8:0::5", P(ipv6=("2001:db8::5",)), id="dup-v6-spelling"),
        # bad prefixes are invalid tokens (kept verbatim for the note)
        pytest.param("10.0.0.5/33", P(invalid=("10.0.0.5/33",)), id="v4-prefix-33"),
        pytest.param("10.0.0.5/x", P(invalid=("10.0.0.5/x",)), id="v4-prefix-x"),
        pytest.param("10.0.0.5/", P(invalid=("10.0.0.5/",)), id="v4-prefix-empty"),
        pytest.param("10.0.0.5/-1", P(invalid=("10.0.0.5/-1",)), id="v4-prefix-negative"),
        pytest.param("10.0.0.5/24/24", P(invalid=("10.0.0.5/24/24",)), id="v4-double-prefix"),
        pytest.param("fd00::5/129", P(invalid=("fd00::5/129",)), id="v6-prefix-129"),
        pytest.param("10.0.0.5/33,10.0.0.6/24", P(ipv4=("10.0.0.6",), invalid=("10.0.0.5/33",)), id="bad-then-good"),
        # garbage
        pytest.param("garbage", P(invalid=("garbage",)), id="word"),
        pytest.param("10.0.0", P(invalid=("10.0.0",)), id="short-v4"),
        pytest.param("10.0.0.256", P(invalid=("10.0.0.256",)), id="octet-256"),
        pytest.param("010.0.0.5", P(invalid=("010.0.0.5",)), id="leading-zero-octet"),
        pytest.param("fd00:::5", P(invalid=("fd00:::5",)), id="triple-colon"),
        pytest.param("em0#", P(invalid=("em0#",)), id="iface-only"),
        pytest.param("10.0.0.5 /24", P(invalid=("10.0.0.5 /24",)), id="inner-space"),
        pytest.param("(null)", P(invalid=("(null)",)), id="null-text"),
        pytest.param("a,b,10.0.0.9", P(ipv4=("10.0.0.9",), invalid=("a", "b")), id="garbage-mix"),
    ],
)
def test_parse_ip4_addr_forms(value, expected):
    assert parse_ip4_addr(value) == expected


@pytest.mark.parametrize(
    ("value", "kept", "reason_has"),
    [
        # the row: Consul answers 500 to the mapped address, failing the jail
        pytest.param("10.0.0.60,::ffff:10.0.0.61", ("10.0.0.60",), "IPv4-mapped", id="v4-mapped"),
        pytest.param("::ffff:10.0.0.61/128", (), "write 10.0.0.61", id="v4-mapped-names-the-v4"),
        pytest.param("0.0.0.0", (), "unspecified", id="v4-unspecified"),
        pytest.param("0.0.0.0/0", (), "unspecified", id="v4-unspecified-prefix"),
        pytest.param("::", (), "unspecified", id="v6-unspecified"),
        pytest.param("::/0", (), "unspecified", id="v6-unspecified-prefix"),
        pytest.param("224.0.0.1,10.0.0.5", ("10.0.0.5",), "multicast", id="v4-multicast"),
        pytest.param("239.255.255.250/32", (), "multicast", id="v4-multicast-prefix"),
        pytest.param("ff02::1,fd00::5", ("fd00::5",), "multicast", id="v6-multicast"),
        pytest.param("255.255.255.255", (), "broadcast", id="v4-limited-broadcast"),
        pytest.param("10.0.0.255/24,10.0.0.5/24", ("10.0.0.5",), "broadcast address of its /24", id="v4-directed-broadcast"),
        pytest.param("em0#192.168.1.127/25", (), "/25", id="v4-directed-broadcast-iface"),
        pytest.param("fe80::1", (), "link-local", id="v6-link-local"),
        pytest.param("fe80::1%em0", (), "link-local", id="v6-link-local-zoned"),
        pytest.param("em0#fe80::1/64,2001:db8::1/64", ("2001:db8::1",), "link-local", id="v6-link-local-cbsd-iface"),
        pytest.param("fd00::1%em0", (), "zone", id="v6-ula-zoned"),
    ],
)
def test_addresses_that_can_never_be_a_jails_are_rejected_with_a_reason(value, kept, reason_has):
    result = parse_ip4_addr(value)
    assert result.all == kept
    assert result.invalid == ()
    assert len(result.rejected) == 1
    token, reason = result.rejected[0]
    assert token in value and reason_has in reason


@pytest.mark.parametrize(
    "value",
    [
        "10.0.0.255/16",  # an ordinary host of a /16
        "10.0.0.255",  # no prefix: nothing says it is a broadcast address
        "10.0.0.3/31",  # RFC 3021 point-to-point: both addresses are hosts
        "10.0.0.0/24",  # the network address can be configured on FreeBSD
        "169.254.10.5/16",  # IPv4 link-local needs no zone: reachable from the link
        "127.0.24.1",  # loopback aliases are what the tests and lo1 setups use
        "fd00::5/64",
    ],
)
def test_ordinary_host_addresses_are_kept(value):
    result = parse_ip4_addr(value)
    assert len(result.all) == 1 and result.rejected == () and result.invalid == ()


@pytest.mark.parametrize(
    ("value", "expected_all"),
    [
        ("10.0.0.5/24,fd00::5/64,10.0.1.5", ("10.0.0.5", "10.0.1.5", "fd00::5")),
        ("fd00::5", ("fd00::5",)),
        ("DHCP", ()),
    ],
)
def test_all_is_ipv4_then_ipv6(value, expected_all):
    assert parse_ip4_addr(value).all == expected_all


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("x" * 10_000, id="letters"),
        pytest.param("1" * 10_000, id="digits"),
        pytest.param("10.0.0.5/" + "2" * 9_991, id="huge-prefix"),
        pytest.param("e" * 9_991 + "#10.0.0.5", id="huge-interface"),
        pytest.param(":" * 10_000, id="colons"),
    ],
)
def test_huge_single_token_is_invalid_cut_to_64_and_fast(value):
    assert len(value) >= 10_000
    start = time.perf_counter()
    result = parse_ip4_addr(value)
    elapsed = time.perf_counter() - start
    assert result.ipv4 == () and result.ipv6 == () and result.dynamic == ()
    assert result.invalid == (value[:64],)
    assert len(result.invalid[0]) == 64
    assert elapsed < 0.2  # microseconds in practice; generous bound against slow CI


def test_huge_value_with_many_tokens_is_fast():
    value = ",".join(["garbage-" + "z" * 90] * 100) + ",10.0.0.5"
    assert len(value) > 9_000
    start = time.perf_counter()
    result = parse_ip4_addr(value)
    assert time.perf_counter() - start < 0.5
    assert result.ipv4 == ("10.0.0.5",)
    assert len(result.invalid) == 100
    assert all(len(item) == 64 for item in result.invalid)


def test_non_ascii_digit_prefix_is_invalid_not_a_crash():
    assert parse_ip4_addr("10.0.0.5/²,10.0.0.6") == P(ipv4=("10.0.0.6",), invalid=("10.0.0.5/²",))


# A token grammar that covers all forms plus near-misses; text is ASCII only so that the
# property stays about the grammar, not unicode digits (tested separately above).
#: Printable ASCII without the item separator. Explicit alphabets (not st.characters)
#: keep hypothesis from building its unicode table, which costs seconds on a fresh checkout.
_ASCII_NO_COMMA = "".join(chr(c) for c in range(32, 127) if chr(c) != ",")
_octet = st.integers(0, 300).map(str)
_v4 = st.tuples(_octet, _octet, _octet, _octet).map(".".join)
_v6 = st.ip_addresses(v=6).map(str) | st.ip_addresses(v=6).map(lambda a: a.exploded.upper())
_prefix = st.sampled_from(["", "/0", "/24", "/32", "/33", "/64", "/128", "/129", "/x", "/", "/-1", "/24/8"])
_iface = st.sampled_from(["", "em0#", "em0|", "vhid_3#", "a#b|", "#", "|"])
_addr_token = st.builds(lambda i, a, p: i + a + p, _iface, _v4 | _v6, _prefix)
_other = st.sampled_from(["DHCP", "dhcpv6", "REALDHCP", "0", "", " ", "::", "0.0.0.0"]) | st.text(alphabet=_ASCII_NO_COMMA, max_size=140)
_value = st.lists(_addr_token | _other, max_size=8).map(",".join)


@settings(max_examples=60, deadline=None, database=None, derandomize=True)
@given(_value)
@example("10.0.0.1/16,em0#fd00::1/64,vhid_1|10.0.0.2/24")
def test_no_address_ever_contains_a_slash_and_all_are_canonical(value):
    result = parse_ip4_addr(value)
    for addr in result.all:
        assert "/" not in addr
        assert "#" not in addr and "|" not in addr and "," not in addr
    for addr in result.ipv4:
        parsed = ipaddress.IPv4Address(addr)
        assert str(parsed) == addr and not parsed.is_unspecified
    for addr in result.ipv6:
        parsed = ipaddress.IPv6Address(addr)
        assert str(parsed) == addr and not parsed.is_unspecified
    assert len(set(result.ipv4)) == len(result.ipv4)
    assert len(set(result.ipv6)) == len(result.ipv6)
    assert all(len(item) <= 64 for item in result.invalid)
    assert set(result.dynamic) <= {"DHCP", "DHCPV6", "REALDHCP"}


@settings(max_examples=40, deadline=None, database=None, derandomize=True)
@given(st.lists(_addr_token, min_size=1, max_size=6))
def test_every_token_is_accounted_for(tokens):
    """Each non-blank token ends up as an address or as an invalid item, never lost."""
    result = parse_ip4_addr(",".join(tokens))
    assert len(result.invalid) + len(result.ipv4) + len(result.ipv6) <= len(tokens)
    for token in tokens:
        host = token.rpartition("#")[2].rpartition("|")[2].partition("/")[0]
        try:
            canon = str(ipaddress.ip_address(host))
        except ValueError:
            assert token[:64] in result.invalid
            continue
        assert canon in result.all or token[:64] in result.invalid or token[:64] in dict(result.rejected)


@pytest.mark.parametrize(
    "address,prefix",
    [
        (a, p)
        for a in ("10.0.0.255", "10.0.0.254", "10.0.255.255", "10.0.0.0", "192.168.1.127", "192.168.1.128", "255.255.255.255", "0.0.0.0", "172.16.3.3", "1.2.3.4")
        for p in (0, 1, 8, 16, 23, 24, 25, 29, 30)
    ],
)
def test_directed_broadcast_is_the_networks_broadcast_address(address: str, prefix: int) -> None:
    expected = ipaddress.IPv4Address(address) == ipaddress.IPv4Network(f"{address}/{prefix}", strict=False).broadcast_address
    assert is_directed_broadcast(int(ipaddress.IPv4Address(address)), prefix) is expected


_octet = st.one_of(st.integers(0, 300).map(str), st.sampled_from(["00", "01", "010", "0x1", "", "\u0661", "25 ", "-1", "1e2"]))
_quad_like = st.builds(
    lambda o, sep, pre, suffix: f"{pre}{'.'.join(o)}{sep}{suffix}",
    st.lists(_octet, min_size=3, max_size=5),
    st.sampled_from(["", "/", "/24", "/30", "/31", "/32", "/33", "/0", "/024", "/\u0662"]),
    st.sampled_from(["", "em0#", "vhid_3#", "a|", "#"]),
    st.sampled_from(["", "", "x"]),
)


def _both_ways(value: str, monkeypatch: pytest.MonkeyPatch) -> tuple[ParsedAddresses, ParsedAddresses]:
    import jailsyncd.addresses as addresses

    parse_ip4_addr.cache_clear()
    fast = parse_ip4_addr(value)
    with monkeypatch.context() as m:
        m.setattr(addresses, "_ipv4_token", lambda token: None)
        parse_ip4_addr.cache_clear()
        slow = parse_ip4_addr(value)
    parse_ip4_addr.cache_clear()
    return fast, slow


@settings(max_examples=300, deadline=None, database=None, derandomize=True)
@given(st.lists(_quad_like, min_size=1, max_size=4))
@example(["0.0.0.0", "224.0.0.1", "239.255.255.255/8", "255.255.255.255", "10.0.0.255/24", "10.0.0.255/31", "10.0.0.1/24"])
@example(["1.2.3.04", "1.2.3.256", "1.2.3", "1.2.3.4.5", "em0#192.168.0.1/16", "192.168.0.1/033"])
def test_the_ipv4_shortcut_says_what_ipaddress_says(tokens: list[str]) -> None:
    monkeypatch = pytest.MonkeyPatch()
    try:
        fast, slow = _both_ways(",".join(tokens), monkeypatch)
    finally:
        monkeypatch.undo()
    assert fast == slow
