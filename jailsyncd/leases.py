"""Address discovery for environments CBSD gives no address (pure: no I/O, no clock).

Called by ``adapters.addresses`` (which reads the files and runs the commands and
hands their text here), by ``platform`` (neighbor-table parsers) and by
``reconcile`` (``targets``, ``resolve``). Three read-only sources, tried in this
order for each environment (docs/architecture.md, "Address discovery"):

1. ``dhclient``: the environment's own dhclient lease files
   (``$workdir/jails-data/<jname>-data/var/db/dhclient.leases.<if>``): per file, the
   newest lease that has not expired (dhclient rewrites the file with its active
   lease last: sbin/dhclient/dhclient.c, rewrite_client_leases);
2. ``dhcp-server``: lease files of DHCP servers on the host (``sync.dhcp_leases``:
   dnsmasq, ISC dhcpd, Kea memfile CSV), matched by the MACs CBSD records
   (``bhyvenic``/``jailnic``.``nic_hwaddr``); a lease for a MAC CBSD does not know
   is never looked at;
3. ``neighbor``: the host's neighbor table (ARP/NDP), complete entries only.

Every parser takes text and returns values; garbage lines are skipped, never
raised. Times are epoch seconds; "now" is always passed in.
"""

from __future__ import annotations

import calendar
import csv
import io
import ipaddress
import json
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from jailsyncd.addresses import parse_ip4_addr, reject_reason
from jailsyncd.tagspec import Rule, directives_for

if TYPE_CHECKING:
    from jailsyncd.model import Environment

#: ``cbsd-address-source`` values, in the order the sources are tried.
SOURCE_DHCLIENT = "dhclient"
SOURCE_SERVER = "dhcp-server"
SOURCE_NEIGHBOR = "neighbor"
SOURCES = (SOURCE_DHCLIENT, SOURCE_SERVER, SOURCE_NEIGHBOR)

#: Linux neighbor states (ip-neighbour(8)) that carry a confirmed link-layer address.
#: STALE counts: the mapping was confirmed and is kept until the kernel drops it, as
#: FreeBSD's arp(8) lists a complete entry until it expires.
_LINUX_COMPLETE = {"REACHABLE", "STALE", "DELAY", "PROBE", "PERMANENT"}
#: ndp(8)'s one-letter states with a link-layer address (usr.sbin/ndp/ndp.c: R
#: reachable, S stale, D delay, P probe; I incomplete, N no state, W waitdelete).
_NDP_COMPLETE = {"R", "S", "D", "P"}
_MAC = re.compile(r"[0-9A-Fa-f]{1,2}(?:[:-][0-9A-Fa-f]{1,2}){5}")


@dataclass(frozen=True)
class Lease:
    """One DHCP lease. ``mac`` is None for a client's own lease file (it is the
    environment's by where it lies); ``expires`` None means never."""

    address: str
    mac: str | None
    expires: float | None
    #: Position in its file: a later lease is a newer one.
    order: int = 0

    def valid(self, now: float) -> bool:
        return self.expires is None or self.expires > now


@dataclass(frozen=True)
class Neighbor:
    """One complete neighbor-table entry (incomplete and failed ones never become one)."""

    address: str
    mac: str


@dataclass(frozen=True)
class Target:
    """A running environment with no usable address in CBSD, which discovery looks for.

    ``own_leases``: look for the environment's own dhclient lease files (jails)."""

    jname: str
    macs: tuple[str, ...]
    own_leases: bool


@dataclass(frozen=True)
class Discovered:
    """What discovery found for one environment: ``addresses`` (canonical, IPv4 first)
    from ``source`` (one of ``SOURCES``; '' when nothing was found, and then
    ``detail`` says where it looked)."""

    addresses: tuple[str, ...] = ()
    source: str = ""
    detail: str = ""
    #: Nothing found while a source that could have answered failed to read: the
    #: environment's state is unknown this cycle (neither registered nor deregistered).
    unknown: bool = False

    @property
    def ipv4(self) -> tuple[str, ...]:
        return tuple(a for a in self.addresses if ":" not in a)

    @property
    def ipv6(self) -> tuple[str, ...]:
        return tuple(a for a in self.addresses if ":" in a)


@dataclass(frozen=True)
class Observations:
    """What the adapter read this cycle: the own lease files of each target by jname
    (``(file name, leases)`` pairs), the leases of ``sync.dhcp_leases``, and the
    neighbor table (None: not read, because no target needed it, or it failed)."""

    own: Mapping[str, tuple[tuple[str, tuple[Lease, ...]], ...]] = field(default_factory=dict)
    server: tuple[Lease, ...] = ()
    neighbors: tuple[Neighbor, ...] | None = None
    #: Why a source could not be read: own lease files by jname, and the
    #: ``sync.dhcp_leases`` files and the neighbor table for every target with a MAC.
    own_errors: Mapping[str, str] = field(default_factory=dict)
    errors: tuple[str, ...] = ()


# -- which environments need it -----------------------------------------------------


def targets(environments: Iterable[Environment], rules: tuple[Rule, ...] = ()) -> tuple[Target, ...]:
    """The running, not opted-out environments whose ``ip4_addr`` yields no usable
    address (``DHCP``, ``REALDHCP``, unset, only invalid or rejected items)."""
    out = []
    for env in environments:
        if not env.running or parse_ip4_addr(env.ip4_addr).all:
            continue
        if not directives_for(env.jname, env.tags, rules).enabled:
            continue
        out.append(Target(env.jname, tuple(env.macs), env.kind == "jail"))
    return tuple(sorted(out, key=lambda t: t.jname))


# -- resolution ---------------------------------------------------------------------


def resolve(target: Target, seen: Observations, now: float) -> Discovered:
    """The addresses of ``target`` from the first source that has any (see the module
    docstring), or an empty ``Discovered`` saying where discovery looked."""
    own: list[str] = []
    for _name, leases in sorted(seen.own.get(target.jname, ())):
        lease = newest(leases, now)
        if lease is not None:
            _add(own, lease.address)
    if own:
        return Discovered(_ordered(own), SOURCE_DHCLIENT, "the environment's own dhclient lease")
    macs = set(target.macs)
    server: list[str] = []
    for mac in target.macs:
        lease = newest([lease for lease in seen.server if lease.mac == mac], now)
        if lease is not None:
            _add(server, lease.address)
    if server:
        return Discovered(_ordered(server), SOURCE_SERVER, "a lease in sync.dhcp_leases")
    found = [n.address for n in (seen.neighbors or ()) if n.mac in macs]
    usable: list[str] = []
    for address in found:
        _add(usable, address)
    if usable:
        return Discovered(_ordered(usable), SOURCE_NEIGHBOR, "the host's neighbor table")
    failed = [seen.own_errors[target.jname]] if target.jname in seen.own_errors else []
    if macs:
        failed += list(seen.errors)
    if failed:
        return Discovered(detail=f"address discovery could not read a source: {failed[0]}", unknown=True)
    where = ["its own dhclient leases"] if target.own_leases else []
    if not macs:
        no_mac = "no MAC in CBSD's NIC tables (bhyvenic, xennic, qemunic, jailnic), so no DHCP server lease or neighbor entry can match"
        if not where:  # a VM without a NIC row: there was no place to look at all
            return Discovered(detail=f"address discovery had nowhere to look: {no_mac}")
        where.append(no_mac)
    else:
        where.append(f"sync.dhcp_leases and the neighbor table for {', '.join(target.macs)}")
    return Discovered(detail="address discovery found none in " + "; ".join(where))


def newest(leases: Iterable[Lease], now: float) -> Lease | None:
    """The last lease (in file order) that has not expired at ``now``."""
    best = None
    for lease in leases:
        if lease.valid(now) and (best is None or lease.order >= best.order):
            best = lease
    return best


def needs_neighbors(found: Mapping[str, Discovered], wanted: Iterable[Target]) -> bool:
    """Whether the neighbor table can still help: a target with a MAC that the lease
    sources left without an address."""
    return any(t.macs and not found[t.jname].addresses for t in wanted)


def _add(addresses: list[str], text: str) -> None:
    """Append ``text`` canonical, unless it is not an address a host can have
    (``addresses.reject_reason``: link-local, multicast, ...) or already there."""
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return
    if reject_reason(addr) is None and str(addr) not in addresses:
        addresses.append(str(addr))


def _ordered(addresses: list[str]) -> tuple[str, ...]:
    """IPv4 before IPv6, each family sorted numerically: the same table gives the
    same primary address on every cycle, whatever order the kernel lists it in."""
    parsed = sorted((ipaddress.ip_address(a) for a in addresses), key=lambda a: (a.version, a))
    return tuple(str(a) for a in parsed)


# -- MAC addresses ------------------------------------------------------------------


def normalize_mac(text: object) -> str | None:
    """``58:9C:FC:0:0:1`` or ``58-9c-fc-00-00-01`` -> ``58:9c:fc:00:00:01``; None for
    anything else (CBSD's unset ``0``, an InfiniBand address, garbage)."""
    if not isinstance(text, str) or not _MAC.fullmatch(text.strip()):
        return None
    return ":".join(f"{int(octet, 16):02x}" for octet in re.split("[:-]", text.strip()))


# -- lease file parsers -------------------------------------------------------------


def parse_dhclient(text: str) -> tuple[Lease, ...]:
    """``lease { ... fixed-address A; ... expire W YYYY/MM/DD HH:MM:SS; }`` blocks of
    FreeBSD's dhclient (times in UTC: dhclient.c, write_client_lease, gmtime), also
    ``expire never;`` and ISC dhclient's ``expire epoch N;``. A block without a
    parseable address or expiry is skipped."""
    leases = []
    for order, body in enumerate(_blocks(text, r"lease\s*\{")):
        address = _statement(body, "fixed-address")
        expires = _when(_statement(body, "expire"))
        if address is None or expires is False:
            continue
        leases.append(Lease(address, None, expires, order))
    return tuple(leases)


def parse_isc_dhcpd(text: str) -> tuple[Lease, ...]:
    """ISC dhcpd's ``dhcpd.leases``: ``lease A { starts ...; ends ...; binding state
    active; hardware ethernet M; }``. The file is a journal: the last block for an
    address replaces the earlier ones. Only active bindings (or blocks without a
    binding state, as old servers write) with a hardware address count."""
    latest: dict[str, tuple[int, str]] = {}
    for order, (head, body) in enumerate(_blocks(text, r"lease\s+([0-9A-Fa-f.:]+)\s*\{", with_head=True)):
        latest[head] = (order, body)
    leases = []
    for address, (order, body) in latest.items():
        state = _statement(body, "binding state")
        if state is not None and state.lower() != "active":
            continue
        mac = normalize_mac(_statement(body, "hardware ethernet") or "")
        expires = _when(_statement(body, "ends"))
        if mac is None or expires is False:
            continue
        leases.append(Lease(address, mac, expires, order))
    return tuple(sorted(leases, key=lambda lease: lease.order))


def parse_dnsmasq(text: str) -> tuple[Lease, ...]:
    """dnsmasq's lease file: ``EXPIRY MAC ADDRESS HOSTNAME CLIENT-ID`` per line (EXPIRY
    in epoch seconds, 0 for an infinite lease). DHCPv6 lines (after the ``duid``
    line) carry an IAID instead of a MAC and are skipped."""
    leases = []
    for order, line in enumerate(text.splitlines()):
        parts = line.split()
        if len(parts) < 3 or not parts[0].isdigit():
            continue
        mac = normalize_mac(parts[1])
        if mac is None:
            continue
        expiry = int(parts[0])
        leases.append(Lease(parts[2], mac, None if expiry == 0 else float(expiry), order))
    return tuple(leases)


def parse_kea_csv(text: str) -> tuple[Lease, ...]:
    """Kea's memfile lease CSV (``kea-leases4.csv``/``kea-leases6.csv``), columns by
    the header: ``address``, ``hwaddr``, ``expire`` (epoch seconds), ``state`` (0:
    assigned). A journal like dhcpd's: the last row for an address wins; a row with
    ``valid_lifetime`` 0 is a removed lease."""
    rows = csv.DictReader(io.StringIO(text))
    latest: dict[str, tuple[int, dict[str, Any]]] = {}
    try:
        for order, row in enumerate(rows):
            if row.get("address"):
                latest[row["address"]] = (order, row)
    except csv.Error:
        pass  # a torn last line while Kea appends: keep what was read
    leases = []
    for address, (order, row) in latest.items():
        mac = normalize_mac(row.get("hwaddr") or "")
        if mac is None or (row.get("state") or "0").strip() != "0" or (row.get("valid_lifetime") or "").strip() == "0":
            continue
        try:
            expires = float(row.get("expire") or "")
        except ValueError:
            continue
        leases.append(Lease(address, mac, expires, order))
    return tuple(sorted(leases, key=lambda lease: lease.order))


def parse_server_leases(text: str) -> tuple[Lease, ...]:
    """A DHCP server's lease file in whichever format it is: Kea CSV (its header starts
    ``address,``), ISC dhcpd (``lease A {`` blocks), else dnsmasq lines."""
    head = text.lstrip()[:200]
    if head.startswith("address,"):
        return parse_kea_csv(text)
    if re.search(r"^\s*lease\s+[0-9A-Fa-f.:]+\s*\{", text, re.M):
        return parse_isc_dhcpd(text)
    return parse_dnsmasq(text)


# -- neighbor table parsers ---------------------------------------------------------


def parse_arp_libxo(text: str) -> tuple[Neighbor, ...]:
    """``arp -an --libxo json`` (usr.sbin/arp/arp.c, arp_netlink.c): an object
    ``{"arp": {"arp-cache": [...]}}`` whose entries have ``ip-address``,
    ``mac-address``, and ``incomplete``/``expired``/``published`` set to true when
    they apply. Complete: a MAC, neither incomplete nor expired; published (proxy
    ARP) entries carry this host's own MAC and are skipped."""
    try:
        data = json.loads(text)
    except ValueError:
        return ()
    entries = data.get("arp", {}).get("arp-cache", []) if isinstance(data, dict) and isinstance(data.get("arp"), dict) else []
    out = []
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict) or any(entry.get(flag) in (True, "true") for flag in ("incomplete", "expired", "published")):
            continue
        mac = normalize_mac(entry.get("mac-address"))
        address = entry.get("ip-address")
        if mac is not None and isinstance(address, str):
            out.append(Neighbor(address, mac))
    return tuple(out)


def parse_ndp(text: str) -> tuple[Neighbor, ...]:
    """``ndp -an`` text (usr.sbin/ndp/ndp.c): a header line, then ``Neighbor
    Linklayer-Address Netif Expire S Flags`` columns. ``(incomplete)`` has no MAC;
    the state letter must be R, S, D or P; zoned (link-local) addresses are left to
    ``reject_reason`` downstream."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 5 or parts[0] == "Neighbor":
            continue
        mac = normalize_mac(parts[1])
        if mac is not None and parts[4] in _NDP_COMPLETE:
            out.append(Neighbor(parts[0], mac))
    return tuple(out)


def parse_ip_neigh(text: str) -> tuple[Neighbor, ...]:
    """Linux ``ip -json neigh`` (iproute2): entries with ``dst``, ``lladdr`` and a
    ``state`` list; complete when one state is in ``_LINUX_COMPLETE``."""
    try:
        data = json.loads(text or "[]")
    except ValueError:
        return ()
    out = []
    for entry in data if isinstance(data, list) else []:
        if not isinstance(entry, dict):
            continue
        states = entry.get("state") or []
        mac = normalize_mac(entry.get("lladdr"))
        if mac is not None and isinstance(entry.get("dst"), str) and _LINUX_COMPLETE & set(states):
            out.append(Neighbor(entry["dst"], mac))
    return tuple(out)


# -- helpers ------------------------------------------------------------------------


def _blocks(text: str, opener: str, *, with_head: bool = False) -> list[Any]:
    """The bodies of ``opener ... }`` blocks (with the opener's group when asked).
    Lease files hold no nested braces; a block cut off at the end is dropped."""
    out = []
    for match in re.finditer(opener, text):
        end = text.find("}", match.end())
        if end < 0:
            break
        body = text[match.end():end]
        out.append((match.group(1), body) if with_head else body)
    return out


def _statement(body: str, name: str) -> str | None:
    """The value of ``name VALUE;`` in a block (quotes removed), or None."""
    match = re.search(rf"(?:^|[;{{\s]){re.escape(name)}\s+([^;]*);", body)
    return match.group(1).strip().strip('"') if match else None


def _when(value: str | None) -> float | None | bool:
    """A lease time: ``W YYYY/MM/DD HH:MM:SS`` (UTC), ``epoch N``, ``never`` (None);
    False when absent or unreadable."""
    if value is None:
        return False
    value = value.split("#", 1)[0].strip()
    if value == "never":
        return None
    parts = value.split()
    if len(parts) == 2 and parts[0] == "epoch" and parts[1].isdigit():
        return float(parts[1])
    match = re.fullmatch(r"\d\s+(\d{4})/(\d{1,2})/(\d{1,2})\s+(\d{1,2}):(\d{2}):(\d{2})", value)
    if not match:
        return False
    year, month, day, hour, minute, second = (int(g) for g in match.groups())
    try:
        return float(calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0)))
    except (ValueError, OverflowError):
        return False
