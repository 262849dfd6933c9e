"""Turn CBSD state plus settings into the desired services and their checks, in the
project's own terms (pure).

Called by ``reconcile`` once per cycle, and by the unit tests. One service per
running environment that has a usable address; everything else is reported as a
``Skip`` (why not registered) or a ``Note`` (registered, but something was dropped).
What Consul makes of a service (agent mode's tagged addresses and heartbeat, catalog
mode's nodes) is the mode module's (``adapters/consul/agent.py``, ``catalog.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterable, Mapping, Sequence

from jailsyncd.addresses import ParsedAddresses, parse_ip4_addr
from jailsyncd.leases import Discovered
from jailsyncd.model import (
    META_ADDRESS_SOURCE,
    META_EMULATOR,
    META_FQDN,
    META_HOST,
    META_JNAME,
    META_OWNER,
    META_SOURCE,
    META_SOURCE_VALUE,
    RESERVED_META,
    SERVICE_ID_PREFIX,
    CbsdState,
    CheckSpec,
    Desired,
    Environment,
    Note,
    Service,
    Skip,
)
from jailsyncd.health import jail_checks
from jailsyncd.naming import dns_label, service_ids, unique_labels
from jailsyncd.settings import HealthSettings
from jailsyncd.tagspec import MAX_META_VALUE, Rule, directives_for

#: The ``jail`` of the skip that reports rows without a jname (a placeholder with a
#: space and parentheses, which CBSD's jail tools refuse in a jname).
NAMELESS = "(no jname)"
#: Consul accepts at most 64 meta pairs per service.
MAX_META_PAIRS = 64
#: Service names Consul gives a meaning of its own: ``consul`` is its servers'
#: service (``consul.service.consul`` is how clients find them). Consul compares
#: service names without regard to case.
RESERVED_NAMES = frozenset({"consul"})


@dataclass(frozen=True)
class Naming:
    """Every jail's DNS label and service ID, settled over every jname in CBSD's
    ``jails`` table, running or not (``naming.unique_labels``, ``naming.service_ids``),
    so that a jail's name does not change when another one starts or stops, and a
    part of the table is named exactly as the whole would be (``build_desired``'s
    ``naming``)."""

    labels: Mapping[str, str]
    ids: Mapping[str, str]

    @classmethod
    def of(cls, jnames: Iterable[str]) -> Naming:
        names = list(jnames)
        return cls(unique_labels(names), service_ids(names, SERVICE_ID_PREFIX))


def build_desired(
    state: CbsdState,
    *,
    owner: str,
    rules: tuple[Rule, ...] = (),
    prefer_ipv6: bool = False,
    health: HealthSettings | None = None,
    discovered: Mapping[str, Discovered] | None = None,
    naming: Naming | None = None,
) -> Desired:
    """The services this host should have in Consul, given a complete CBSD read.

    With ``health`` (enabled), every service carries its checks.

    ``discovered`` (address discovery, ``leases.resolve``) gives addresses to
    environments whose ``ip4_addr`` has none: they are registered like any other,
    with meta ``cbsd-address-source`` naming the source; when discovery found none,
    the ``unaddressable`` skip says where it looked.

    ``naming`` (``Naming.of`` every jname of the table) builds the desired state of a
    *part* of the table (``state`` holding some of its environments): what
    ``reconcile`` does while CBSD is still being read. ``combine`` joins the parts
    into what one call over the whole table returns.
    """
    discovered = discovered or {}
    host = state.nodename or owner
    # Collisions are settled over every environment in the DB, running or not, so a
    # jail's name does not change when another one starts or stops.
    naming = naming or Naming.of(env.jname for env in state.environments)
    labels, ids = naming.labels, naming.ids
    unreadable = dict(state.unreadable)
    services: list[Service] = []
    skipped: list[Skip] = []
    notes: list[Note] = []
    for env in sorted(state.environments, key=lambda e: e.jname):
        if env.jname in unreadable:
            skipped.append(Skip(env.jname, "source_error", unreadable[env.jname]))
            continue
        if not env.running:
            continue
        directives = directives_for(env.jname, env.tags, rules)
        notes.extend(Note(env.jname, "ignored_tag", text) for text in directives.ignored)
        if not directives.enabled:
            skipped.append(Skip(env.jname, "opted_out", "consul=off in the tags column or a [[rule]]"))
            continue
        parsed = parse_ip4_addr(env.ip4_addr)
        if parsed.invalid:
            notes.append(Note(env.jname, "invalid_address", f"ip4_addr items ignored: {', '.join(parsed.invalid[:5])}"))
        for token, reason in parsed.rejected[:5]:
            notes.append(Note(env.jname, "address_rejected", f"ip4_addr item {token} ignored: {reason}"))
        found = discovered.get(env.jname) if not parsed.all else None
        if found is not None and found.unknown:
            unreadable[env.jname] = found.detail  # protected: neither registered nor deregistered
            skipped.append(Skip(env.jname, "source_error", found.detail))
            continue
        if found is not None and found.addresses:
            parsed = replace(parsed, ipv4=found.ipv4, ipv6=found.ipv6)
        address = _primary_address(parsed, prefer_ipv6)
        if address is None:
            why = _why_unaddressable(parsed)
            skipped.append(Skip(env.jname, "unaddressable", f"{why}; {found.detail}" if found is not None and found.detail else why))
            continue
        if directives.name is not None:
            name = dns_label(directives.name)
            if name != directives.name:
                notes.append(Note(env.jname, "name_sanitized", f"consul.name={directives.name!r} registered as {name!r}"))
        else:
            name = labels[env.jname]
            if name != dns_label(env.jname):
                notes.append(Note(env.jname, "name_collision", f"{dns_label(env.jname)!r} is taken by another jail; registered as {name!r}"))
        ours = {META_ADDRESS_SOURCE: found.source} if found is not None and found.source else {}
        meta, meta_notes = _meta(env, owner=owner, host=host, user=directives.meta, ours=ours)
        notes.extend(Note(env.jname, "meta_dropped", text) for text in meta_notes)
        port = directives.port or 0
        service_id = ids[env.jname]
        tags = frozenset((env.kind, *directives.tags))
        specs: tuple[CheckSpec, ...] = ()
        if health is not None:
            probes = directives.checks if port else ()
            if directives.checks and not port:
                notes.append(Note(env.jname, "check_ignored", f"{', '.join(directives.checks)} needs a port (consul.port=)"))
            specs = jail_checks(service_id, address, probes, health.ttl)
        services.append(
            Service(
                service_id=service_id,
                name=name,
                address=address,
                port=port,
                tags=tags,
                meta=tuple(sorted(meta.items())),
                addresses=parsed.all,
                fqdn=env.host_hostname or "",
                checks=specs,
            )
        )
    if state.nameless:
        skipped.append(_nameless(state.nameless))
    protected = frozenset(unreadable)
    return Desired(tuple(services), tuple(skipped), tuple(notes), protected, host=host, empty_source=not state.environments, owner=owner)


def combine(parts: Sequence[Desired], state: CbsdState, *, owner: str) -> Desired:
    """The desired state of the whole table ``state`` from the desired states of its
    parts (``build_desired`` with one ``Naming`` over the whole table, parts in jname
    order, each with its mode's records; ``state.nameless`` left out of every part):
    the same services, records, skips, notes and protected jails as one build over
    ``state`` (skips in the parts' order). Pure."""
    skipped = [k for part in parts for k in part.skipped]
    if state.nameless:
        skipped.append(_nameless(state.nameless))
    return Desired(
        services=tuple(s for part in parts for s in part.services),
        skipped=tuple(skipped),
        notes=tuple(n for part in parts for n in part.notes),
        protected=frozenset().union(*(part.protected for part in parts)),
        host=state.nodename or owner,
        empty_source=not state.environments,
        owner=owner,
        records=tuple(r for part in parts for r in part.records),
    )


def _nameless(count: int) -> Skip:
    return Skip(NAMELESS, "invalid_row", f"{count} row(s) of table jails have a NULL or empty jname: not registered")


def without_reserved_names(desired: Desired) -> Desired:
    """``desired`` without the records whose service name Consul reserves
    (``RESERVED_NAMES``), each reported as a ``reserved_name`` skip. Checked on the
    mode's records, because the mode decides the final name (catalog mode's article
    layout names every service ``jail``). The heartbeat service is jailsyncd's own."""
    reserved = [r for r in desired.records if not r.is_self and r.name.lower() in RESERVED_NAMES]
    if not reserved:
        return desired
    skips = tuple(
        Skip(r.jail, "reserved_name", f"service name {r.name!r} is Consul's own (its servers' service); name the jail's service with consul.name= in its tags column or a [[rule]]")
        for r in reserved
    )
    return replace(desired, records=tuple(r for r in desired.records if r not in reserved), skipped=desired.skipped + skips)


def _primary_address(parsed: ParsedAddresses, prefer_ipv6: bool) -> str | None:
    order = (parsed.ipv6, parsed.ipv4) if prefer_ipv6 else (parsed.ipv4, parsed.ipv6)
    for family in order:
        if family:
            return family[0]
    return None


def _why_unaddressable(parsed: ParsedAddresses) -> str:
    if "REALDHCP" in parsed.dynamic:
        return "ip4_addr is REALDHCP: the address is known only inside the environment"
    if parsed.dynamic:
        return f"ip4_addr is {'/'.join(parsed.dynamic)} and CBSD has not written back an address"
    if parsed.rejected:
        token, reason = parsed.rejected[0]
        return f"ip4_addr has no usable address ({token}: {reason})"
    if parsed.invalid:
        return f"ip4_addr has no valid address (first item: {parsed.invalid[0]!r})"
    return "ip4_addr is unset"


def _meta(
    env: Environment, *, owner: str, host: str, user: tuple[tuple[str, str], ...], ours: dict[str, str] | None = None
) -> tuple[dict[str, str], list[str]]:
    meta = {
        META_SOURCE: META_SOURCE_VALUE,
        META_OWNER: owner,
        META_JNAME: env.jname,
        META_HOST: host,
        META_EMULATOR: env.emulator,
        **(ours or {}),
    }
    dropped: list[str] = []
    if env.host_hostname:
        if len(env.host_hostname.encode()) <= MAX_META_VALUE:  # Consul counts bytes
            meta[META_FQDN] = env.host_hostname
        else:
            dropped.append(f"{META_FQDN}: host_hostname longer than {MAX_META_VALUE} bytes")
    for key, value in user:
        if key in RESERVED_META:
            dropped.append(f"{key}: reserved for jailsyncd")
        elif len(meta) >= MAX_META_PAIRS and key not in meta:
            dropped.append(f"{key}: Consul allows at most {MAX_META_PAIRS} meta pairs")
        else:
            meta[key] = value
    return meta, dropped
