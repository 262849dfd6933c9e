"""Health checks: which checks a service gets, and how probe results become statuses (pure).

Called by ``desired`` (``jail_checks``, ``self_service``) and by ``healthloop`` (the
state machine and the write decisions). Consul has no ICMP check and script checks
need ``enable_script_checks`` (a remote-code-execution risk), so jailsyncd probes the
jails itself and writes TTL checks, like consul-esm does for external nodes.

Each jail service gets:
- one TTL check per probe: ``<service_id>:ping`` always, ``:tcp``/``:http`` when the
  jail asks for them (``consul.check=tcp``, ``consul.check=http:/path``, or a rule);
- one alias check ``<service_id>:alive`` mirroring jailsyncd's own service
  (``jailsyncd.heartbeat``), whose short-TTL check the daemon refreshes. If the
  daemon dies, every jail turns critical within one heartbeat TTL for the price of
  one write per refresh, not one per jail.

Statuses are written only when they change, plus one refresh per check at half its
TTL, so a round in a steady state writes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from jailsyncd.model import (
    META_HOST,
    META_OWNER,
    META_SOURCE,
    SELF_CHECK_ID,
    SELF_SERVICE_ID,
    SELF_SERVICE_NAME,
    CheckSpec,
    Observed,
    Service,
)

PASSING = "passing"
CRITICAL = "critical"
#: Output of a check registered before its first probe.
NOT_PROBED = "not probed yet"


def _ttl_text(seconds: float) -> str:
    return f"{seconds:g}s"


def jail_checks(
    service_id: str, address: str, probes: tuple[str, ...], ttl: float, *, catalog: bool = False, external_probe: bool = False
) -> tuple[CheckSpec, ...]:
    """The checks of one jail service.

    Agent mode: a TTL check per probe, then the alias check. Catalog mode: the ping
    is a node-level check (none when ``external_probe`` leaves it to consul-esm), TCP
    and HTTP probes are service-level checks; catalog checks have no TTL and no
    alias, jailsyncd writes their status itself.
    """
    checks = []
    wanted = (*(() if catalog and external_probe else ("ping",)), *(p for p in probes if p != "ping"))
    seen: dict[str, int] = {}
    for probe in wanted:
        kind = probe.split(":", 1)[0]
        seen[kind] = seen.get(kind, 0) + 1
        # A second HTTP probe (another path) gets its own ID: http, http-2, http-3...
        suffix = kind if seen[kind] == 1 else f"{kind}-{seen[kind]}"
        if catalog:
            kind = "node" if probe == "ping" else "service"
            checks.append(CheckSpec(f"{service_id}:{suffix}", f"{probe} {address}", kind, notes=f"jailsyncd probe={probe}", ttl=ttl, probe=probe))
            continue
        checks.append(
            CheckSpec(
                check_id=f"{service_id}:{suffix}",
                name=f"{probe} {address}",
                kind="ttl",
                notes=f"jailsyncd probe={probe} ttl={_ttl_text(ttl)}",
                ttl=ttl,
                probe=probe,
            )
        )
    if catalog:
        return tuple(checks)
    checks.append(
        CheckSpec(
            check_id=f"{service_id}:alive",
            name="jailsyncd alive",
            kind="alias",
            notes=f"jailsyncd alias={SELF_SERVICE_ID}",
            alias_of=SELF_SERVICE_ID,
        )
    )
    return tuple(checks)


def self_service(owner: str, host: str, heartbeat_ttl: float) -> Service:
    """jailsyncd's own service on the agent, carrying the heartbeat TTL check."""
    check = CheckSpec(
        check_id=SELF_CHECK_ID,
        name="jailsyncd heartbeat",
        kind="ttl",
        notes=f"jailsyncd heartbeat ttl={_ttl_text(heartbeat_ttl)}",
        ttl=heartbeat_ttl,
        probe="heartbeat",
    )
    return Service(
        service_id=SELF_SERVICE_ID,
        name=SELF_SERVICE_NAME,
        address="",
        port=0,
        tags=frozenset(),
        meta=tuple(sorted({META_SOURCE: "jailsyncd", META_OWNER: owner, META_HOST: host}.items())),
        tagged_addresses=(),
        checks=frozenset({check.observable}),
        check_specs=(check,),
    )


#: Marks the notes of a heartbeat that ``once`` registered with no daemon running.
STANDALONE_MARK = "by=once"


def standalone_self_service(heartbeat: Service, ttl: float) -> Service:
    """The heartbeat service as ``once`` registers it when no daemon runs: its TTL is
    ``health.ttl``, the TTL of the jails' own checks, so that the alias checks of the
    jails ``once`` found answering stay passing as long as their probe results do,
    instead of ``heartbeat_ttl`` (seconds) after ``once`` exits. The notes say so,
    which is how the next ``once`` tells it from a running daemon's heartbeat."""
    spec = replace(heartbeat.check_specs[0], ttl=ttl, notes=f"jailsyncd heartbeat ttl={_ttl_text(ttl)} {STANDALONE_MARK}")
    return replace(heartbeat, checks=frozenset({spec.observable}), check_specs=(spec,))


def daemon_heartbeat(observed: Observed) -> Service | None:
    """The heartbeat service of a daemon alive on this host, if Consul shows one: ours,
    its TTL check passing (the daemon refreshes it every third of its TTL), and not
    one that ``once`` registered. A daemon killed less than ``heartbeat_ttl`` ago
    still counts as alive until its heartbeat expires."""
    status = {check_id: st for check_id, st, _ in observed.check_status}
    for svc in observed.owned:
        if not svc.is_self:
            continue
        notes = {check_id: note for check_id, _, note in svc.checks}
        if status.get(SELF_CHECK_ID) == PASSING and SELF_CHECK_ID in notes and STANDALONE_MARK not in notes[SELF_CHECK_ID]:
            return svc
    return None


@dataclass(frozen=True)
class ProbeResult:
    """One probe of one target in one round; ``output`` says what happened."""

    ok: bool
    output: str


@dataclass(frozen=True)
class Probe:
    """One thing to probe: ``kind`` is ``ping``, ``tcp`` or ``http:/path``."""

    key: str
    kind: str
    address: str
    port: int = 0


@dataclass
class RoundReport:
    """One ``Prober.run_round``: results by probe key (a probe the prober could not run
    has none), the prober's own problems, and the time spent waiting for the pace."""

    results: dict[str, ProbeResult] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    paced: float = 0.0


@dataclass(frozen=True)
class CheckState:
    """A check's status and its run of consecutive successes or failures."""

    status: str
    successes: int = 0
    failures: int = 0
    output: str = NOT_PROBED


def advance(state: CheckState, result: ProbeResult, *, success_before_passing: int, failures_before_critical: int) -> CheckState:
    """The state after one more probe: the status flips only after enough consecutive
    results the other way, so a flapping jail does not flap in Consul."""
    if result.ok:
        successes = state.successes + 1
        status = PASSING if successes >= success_before_passing else state.status
        return CheckState(status, successes, 0, result.output)
    failures = state.failures + 1
    status = CRITICAL if failures >= failures_before_critical else state.status
    return CheckState(status, 0, failures, result.output)


@dataclass(frozen=True)
class Target:
    """One check to probe: whose, which, where, and (for catalog writes) its
    definition and the node and service it belongs to."""

    jail: str
    check_id: str
    probe: str
    address: str
    port: int
    ttl: float
    spec: CheckSpec | None = None
    node: str = ""
    service_id: str = ""


def with_checks_from_consul(service: Service, ttl: float) -> Service:
    """A service as Consul holds it, with the definitions of its probed checks rebuilt
    from what Consul returns (ID, kind and the notes ``jailsyncd probe=...``).

    For services whose deregistration the start-up grace holds back: their jails are
    not in the desired state, but their checks must still follow the probes, or a jail
    that is slow to start (or never starts) would keep whatever status Consul restored
    at boot, passing included, for the whole grace."""
    specs = []
    for check_id, kind, notes in sorted(service.checks):
        probe = next((word.removeprefix("probe=") for word in notes.split() if word.startswith("probe=")), "")
        if kind in ("ttl", "node", "service") and probe and probe != "heartbeat":
            specs.append(CheckSpec(check_id, f"{probe} {service.address}", kind, notes=notes, ttl=ttl, probe=probe))
    return replace(service, check_specs=tuple(specs))


def check_name(check_id: str) -> str:
    """The check's own name in its ID ``<service_id>:<name>`` (``ping``, ``tcp``...)."""
    return check_id.rsplit(":", 1)[-1]


def targets_of(services: tuple[Service, ...]) -> tuple[Target, ...]:
    return tuple(
        Target(s.jail, c.check_id, c.probe, s.address, s.port, c.ttl, c, s.node, s.service_id)
        for s in services
        for c in s.check_specs
        if c.kind in ("ttl", "node", "service") and c.probe != "heartbeat"
    )


@dataclass(frozen=True)
class Written:
    """What jailsyncd last wrote (or read) for a check, and when (monotonic seconds)."""

    status: str
    at: float


@dataclass(frozen=True)
class Change:
    jail: str
    check_id: str
    old: str
    new: str
    output: str


def decide(
    targets: tuple[Target, ...],
    states: dict[str, CheckState],
    written: dict[str, Written],
    results: dict[str, ProbeResult],
    now: float,
    *,
    success_before_passing: int,
    failures_before_critical: int,
) -> tuple[dict[str, CheckState], list[tuple[Target, CheckState]], list[Change]]:
    """One round's outcome: new states by check ID, the writes to make (status changed
    from what Consul holds, or a refresh is due at half the TTL), and the changes to log.

    A check with no result this round (not probed) keeps its state and is not written.
    """
    new_states: dict[str, CheckState] = {}
    writes: list[tuple[Target, CheckState]] = []
    changes: list[Change] = []
    for target in targets:
        last = written.get(target.check_id)
        state = states.get(target.check_id) or CheckState(last.status if last else CRITICAL)
        result = results.get(target.check_id)
        if result is not None:
            state = advance(state, result, success_before_passing=success_before_passing, failures_before_critical=failures_before_critical)
        new_states[target.check_id] = state
        if result is None:
            continue
        if last is None or last.status != state.status:
            writes.append((target, state))
            changes.append(Change(target.jail, target.check_id, last.status if last else CRITICAL, state.status, state.output))
        elif now - last.at >= target.ttl / 2:
            writes.append((target, replace(state)))
    return new_states, writes, changes


@dataclass(frozen=True)
class Pace:
    """How long a round of ping probes takes at a rate limit, and whether it fits."""

    #: Distinct addresses pinged per round, and echo requests (addresses x count).
    addresses: int
    requests: int
    #: Echo requests per second in force; 0: no limit.
    rate: float
    #: Seconds a round takes: sending at the rate, then the timeout.
    seconds: float
    #: Whether that fits in ``health.interval``.
    fits: bool
    #: The rate at which it would fit (requests per second).
    needed: float


def pace_of(addresses: int, *, count: int, rate: float, timeout: float, interval: float) -> Pace:
    """A round sends every request ``1/rate`` apart and waits ``timeout`` after the last
    one, so a round of ``addresses x count`` requests takes ``requests / rate + timeout``.
    A round that does not fit in the interval is slower, never wrong: each request still
    gets its full timeout, so no jail fails because of our own pace."""
    requests = addresses * count
    seconds = (requests / rate if rate > 0 else 0.0) + timeout
    return Pace(addresses, requests, rate, seconds, seconds <= interval, requests / (interval - timeout))


def ping_addresses(targets: tuple[Target, ...]) -> int:
    return len({t.address for t in targets if t.probe == "ping"})
