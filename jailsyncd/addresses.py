"""Parse CBSD's ``ip4_addr`` column into bare addresses (pure; called by ``desired``).

CBSD keeps IPv4 and IPv6 addresses in one comma-separated text column, each item
optionally with a prefix length (``/24``), an interface or CARP prefix (``em0#``,
``vhid_3#``, also ``|`` as separator) and with ``DHCP``, ``DHCPv6``, ``REALDHCP``
or ``0`` standing for "no static address". A prefix must never reach Consul: an
address registered as ``10.0.0.1/16`` makes Consul DNS answer ``CNAME 10.0.0.1/16.``.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

#: Tokens longer than this cannot be an address (the longest IPv6 with zone and prefix
#: fits easily); checking length first keeps garbage columns cheap to reject.
_MAX_TOKEN = 128


@dataclass(frozen=True)
class ParsedAddresses:
    """The result of parsing one ``ip4_addr`` value.

    ``ipv4``/``ipv6`` keep the column's order, canonical text, no prefix, no
    duplicates. ``dynamic`` holds the DHCP-like markers seen (upper-cased);
    ``invalid`` the tokens that are none of the known forms (cut to 64 chars).
    """

    ipv4: tuple[str, ...] = ()
    ipv6: tuple[str, ...] = ()
    dynamic: tuple[str, ...] = ()
    invalid: tuple[str, ...] = ()

    @property
    def all(self) -> tuple[str, ...]:
        return self.ipv4 + self.ipv6


_DYNAMIC = {"DHCP", "DHCPV6", "REALDHCP"}


def parse_ip4_addr(value: str | None) -> ParsedAddresses:
    """Parse an ``ip4_addr`` value; never raises. ``None`` means unset."""
    if value is None:
        return ParsedAddresses()
    ipv4: list[str] = []
    ipv6: list[str] = []
    dynamic: list[str] = []
    invalid: list[str] = []
    for raw in value.split(","):
        token = raw.strip()
        if token in ("", "0"):
            continue
        if token.upper() in _DYNAMIC:
            dynamic.append(token.upper())
            continue
        addr = _parse_token(token)
        if addr is None:
            invalid.append(token[:64])
        elif addr.version == 4:
            _append_once(ipv4, str(addr))
        else:
            _append_once(ipv6, str(addr))
    return ParsedAddresses(tuple(ipv4), tuple(ipv6), tuple(dynamic), tuple(invalid))


def _parse_token(token: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
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
    if slash:
        limit = 32 if addr.version == 4 else 128
        if not (prefix.isascii() and prefix.isdigit() and len(prefix) <= 3 and int(prefix) <= limit):
            return None
    # A zoned IPv6 (fe80::1%em0) means nothing outside this host's interface.
    if addr.is_unspecified or getattr(addr, "scope_id", None):
        return None
    return addr


def _append_once(items: list[str], item: str) -> None:
    if item not in items:
        items.append(item)
