"""Parse CBSD's ``ip4_addr`` column into bare addresses (pure; called by ``desired``).

CBSD keeps IPv4 and IPv6 addresses in one comma-separated text column, each item
optionally with a prefix length (``/24``), an interface or CARP prefix (``em0#``,
``vhid_3#``, also ``|`` as separator) and with ``DHCP``, ``DHCPv6``, ``REALDHCP``
or ``0`` standing for "no static address". A prefix must never reach Consul: an
address registered as ``10.0.0.1/16`` makes Consul DNS answer ``CNAME 10.0.0.1/16.``.

Well-formed addresses that can never be a jail's are *rejected* with a reason (see
``reject_reason``): Consul refuses some of them (an IPv4-mapped IPv6 address fails the
whole registration with a 500), and the others would be published and pinged although
nothing can reach a jail there. The other addresses of the same column are kept.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass

#: Tokens longer than this cannot be an address (the longest IPv6 with zone and prefix
#: fits easily); checking length first keeps garbage columns cheap to reject.
_MAX_TOKEN = 128


@dataclass(frozen=True)
class ParsedAddresses:
    """The result of parsing one ``ip4_addr`` value.

    ``ipv4``/``ipv6`` keep the column's order, canonical text, no prefix, no
    duplicates. ``dynamic`` holds the DHCP-like markers seen (upper-cased);
    ``invalid`` the tokens that are none of the known forms (cut to 64 chars);
    ``rejected`` the well-formed addresses that can never be a jail's, as
    ``(token, reason)`` pairs (token cut to 64 chars).
    """

    ipv4: tuple[str, ...] = ()
    ipv6: tuple[str, ...] = ()
    dynamic: tuple[str, ...] = ()
    invalid: tuple[str, ...] = ()
    rejected: tuple[tuple[str, str], ...] = ()

    @property
    def all(self) -> tuple[str, ...]:
        return self.ipv4 + self.ipv6


_DYNAMIC = {"DHCP", "DHCPV6", "REALDHCP"}


@functools.lru_cache(maxsize=16384)
def parse_ip4_addr(value: str | None) -> ParsedAddresses:
    """Parse an ``ip4_addr`` value; never raises. ``None`` means unset.

    Memoised (the result is immutable): a cycle parses every running environment's
    column, and ``leases.targets`` parses it again to find the ones without an
    address; on a no-op cycle the columns are the ones seen last time."""
    if value is None:
        return ParsedAddresses()
    ipv4: list[str] = []
    ipv6: list[str] = []
    dynamic: list[str] = []
    invalid: list[str] = []
    rejected: list[tuple[str, str]] = []
    for raw in value.split(","):
        token = raw.strip()
        if token in ("", "0"):
            continue
        if token.upper() in _DYNAMIC:
            dynamic.append(token.upper())
            continue
        quad = _ipv4_token(token)
        if quad is not None:  # the usual item, read without building an IPv4Address
            text, number, length = quad
            reason = _ipv4_reject_reason(number, length)
            if reason is not None:
                rejected.append((token[:64], reason))
            else:
                _append_once(ipv4, text)
            continue
        parsed = _parse_token(token)
        if parsed is None:
            invalid.append(token[:64])
            continue
        addr, prefix = parsed
        reason = reject_reason(addr, prefix)
        if reason is not None:
            rejected.append((token[:64], reason))
        elif addr.version == 4:
            _append_once(ipv4, str(addr))
        else:
            _append_once(ipv6, str(addr))
    return ParsedAddresses(tuple(ipv4), tuple(ipv6), tuple(dynamic), tuple(invalid), tuple(rejected))


def reject_reason(addr: ipaddress.IPv4Address | ipaddress.IPv6Address, prefix: int | None = None) -> str | None:
    """Why ``addr`` (with the column's prefix length, if any) can never be a jail's
    address, or None when it can.

    The decisions (docs/architecture.md, "Addresses"):

    - unspecified (``0.0.0.0``, ``::``): means "any address", no host has it;
    - IPv4-mapped IPv6 (``::ffff:10.0.0.61``): a socket-API spelling of an IPv4
      address, never configured on an interface; Consul's agent refuses it;
    - multicast, and the IPv4 limited broadcast ``255.255.255.255``, or the directed
      broadcast of the column's own prefix (``10.0.0.255/24``): a group, not a host;
    - IPv6 link-local (``fe80::/10``), with or without a zone: without one it is
      ambiguous on every host with more than one interface, and a zone (``%em0``, or
      CBSD's ``em0#`` prefix) names an interface of this host only, which means
      nothing to the other hosts that read Consul. IPv4 link-local (169.254/16)
      needs no zone and is reachable from the whole link, so it is kept;
    - any other zoned IPv6 address: the zone is this host's business only.
    """
    if addr.is_unspecified:
        return "unspecified address: it means any address, no host has it"
    if addr.version == 6:
        mapped = addr.ipv4_mapped
        if mapped is not None:
            return f"IPv4-mapped IPv6 address: never on an interface, and Consul refuses it (write {mapped})"
        if addr.is_link_local:
            return "IPv6 link-local address: only reachable with this host's interface (zone), which other hosts lack"
        if addr.scope_id:
            return "zoned IPv6 address: the zone names an interface of this host only"
    if addr.is_multicast:
        return "multicast address: a group, not one host"
    if addr.version == 4:
        if addr == _LIMITED_BROADCAST:
            return "broadcast address: every host of the link, not one"
        if prefix is not None and prefix <= 30 and is_directed_broadcast(int(addr), prefix):
            return f"broadcast address of its /{prefix}: every host of the subnet, not one"
    return None


_LIMITED_BROADCAST = ipaddress.IPv4Address("255.255.255.255")


def is_directed_broadcast(value: int, prefix: int) -> bool:
    """Whether the IPv4 address ``value`` (as an integer) is the broadcast address of
    its ``/prefix``: every host bit set. The same answer as comparing it with
    ``IPv4Network(f"{addr}/{prefix}", strict=False).broadcast_address``, without
    parsing the address again into a network (a cold start checks every jail's)."""
    host_bits = (1 << (32 - prefix)) - 1
    return value & host_bits == host_bits


#: An IPv4 address as ``ipaddress`` accepts it (four decimal octets 0-255, ASCII
#: digits, no leading zeros), which is also how it writes it back.
_DOTTED_QUAD = re.compile(r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])")


def _ipv4_token(token: str) -> tuple[str, int, int | None] | None:
    """An item that is an IPv4 address in canonical form, with or without a prefix
    length, as its text, its value and the prefix; None for anything else (left to
    ``_parse_token``, which says the same of these: the fast path of a cold read)."""
    if len(token) > _MAX_TOKEN:
        return None
    for sep in ("#", "|"):
        token = token.rpartition(sep)[2]
    host, slash, prefix = token.partition("/")
    quad = _DOTTED_QUAD.fullmatch(host)
    if quad is None:
        return None
    a, b, c, d = (int(octet) for octet in quad.groups())
    number = a << 24 | b << 16 | c << 8 | d
    if not slash:
        return host, number, None
    if not (prefix.isascii() and prefix.isdigit() and len(prefix) <= 3 and int(prefix) <= 32):
        return None
    return host, number, int(prefix)


def _ipv4_reject_reason(number: int, prefix: int | None) -> str | None:
    """``reject_reason`` of the IPv4 address ``number``, in the same order and words."""
    if number == 0:
        return "unspecified address: it means any address, no host has it"
    if number >> 28 == 0xE:  # 224.0.0.0/4
        return "multicast address: a group, not one host"
    if number == 0xFFFFFFFF:
        return "broadcast address: every host of the link, not one"
    if prefix is not None and prefix <= 30 and is_directed_broadcast(number, prefix):
        return f"broadcast address of its /{prefix}: every host of the subnet, not one"
    return None


def _parse_token(token: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int | None] | None:
    """The address and prefix length of one item, or None when it is not one."""
    if len(token) > _MAX_TOKEN:
        return None
    # The address is what follows the last interface/CARP separator.
    for sep in ("#", "|"):
        token = token.rpartition(sep)[2]
    host, slash, prefix = token.partition("/")
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return None
    if not slash:
        return addr, None
    limit = 32 if addr.version == 4 else 128
    if not (prefix.isascii() and prefix.isdigit() and len(prefix) <= 3 and int(prefix) <= limit):
        return None
    return addr, int(prefix)


def _append_once(items: list[str], item: str) -> None:
    if item not in items:
        items.append(item)
