"""Health checks: which checks a service gets, and how probe results become statuses (pure).

Called by ``desired`` (``jail_checks``) and by ``healthloop`` (the state machine and
the write decisions). Consul has no ICMP check and script checks need
``enable_script_checks`` (a remote-code-execution risk), so jailsyncd probes the
jails itself and writes the statuses, like consul-esm does for external nodes.

Each jail service gets one check per probe: ``<service_id>:ping`` always,
``:tcp``/``:http`` when the jail asks for them (``consul.check=tcp``,
``consul.check=http:/path``, or a rule). How a mode writes them, and what it adds
(agent mode's heartbeat and alias checks), is in ``adapters/consul/agent.py`` and
``catalog.py``.

Statuses are written only when they change, plus one refresh per check at half its
TTL, so a round in a steady state writes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from jailsyncd.model import CheckSpec, Record

PASSING = "passing"
CRITICAL = "critical"
#: Output of a check registered before its first probe.
NOT_PROBED = "not probed yet"
#: Outputs of agent mode's heartbeat: refreshed by a running daemon (constant, so an
#: unchanged check does not move Consul's index), and written once by a daemon that
#: stops cleanly. Still passing, so that a restart does not flap every jail; ``once``
#: reads it as "no daemon" and keeps the statuses itself.
HEARTBEAT_RUNNING = "jailsyncd is running"
HEARTBEAT_STOPPED = "jailsyncd stopped (clean stop): passing until its TTL runs out, so that a restart does not flap the jails"


def jail_checks(service_id: str, address: str, probes: tuple[str, ...], ttl: float) -> tuple[CheckSpec, ...]:
    """The checks of one jail service: the ping (about the environment itself), then
    one per other probe (TCP, HTTP: about its service), each holding ``ttl``. The
    modes decide how each is written (``adapters/consul/agent.py``: TTL checks plus
    the alias on the heartbeat; ``catalog.py``: node and service checks)."""
    checks = []
    seen: dict[str, int] = {}
    for probe in ("ping", *(p for p in probes if p != "ping")):
        kind = probe.split(":", 1)[0]
        seen[kind] = seen.get(kind, 0) + 1
        # A second HTTP probe (another path) gets its own ID: http, http-2, http-3...
        suffix = kind if seen[kind] == 1 else f"{kind}-{seen[kind]}"
        checks.append(CheckSpec(f"{service_id}:{suffix}", f"{probe} {address}", probe, ttl=ttl, on_host=probe == "ping"))
    return tuple(checks)


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
    """One check to probe: whose, which, where, and (for the mode's writes) its
    definition and the place (``Record.place``) and service it belongs to."""

    jail: str
    check_id: str
    probe: str
    address: str
    port: int
    ttl: float
    spec: CheckSpec | None = None
    node: str = ""
    service_id: str = ""

    @property
    def aim(self) -> tuple[str, str, int]:
        """What is probed (as ``aims``): a check whose aim changed starts over."""
        return (self.probe, self.address, self.port)


def aims(record: Record) -> dict[str, tuple[str, str, int]]:
    """What each of a record's checks probes: its kind, address and port, by check ID."""
    return {c.check_id: (c.probe, record.address, record.port) for c in record.checks}


def retargeted(old: Record, new: Record) -> bool:
    """Whether an update points some check of ``new`` at something else than ``old``
    did (the jail's address or port changed, a probe is new or another): the check
    keeps its ID, but the old target's results say nothing about the new one, so it
    is probed again before the update is written, like a new check."""
    before = aims(old)
    return any(before.get(check_id) != aim for check_id, aim in aims(new).items())


def with_ttl(record: Record, ttl: float) -> Record:
    """A record as Consul holds it, its probed checks holding ``ttl``.

    For services whose deregistration the start-up grace holds back: their jails are
    not in the desired state, but their checks (rebuilt by the mode from what Consul
    returns) must still follow the probes, or a jail that is slow to start (or never
    starts) would keep whatever status Consul restored at boot, passing included, for
    the whole grace."""
    return replace(record, checks=tuple(replace(c, ttl=ttl) for c in record.checks))


def check_name(check_id: str) -> str:
    """The check's own name in its ID ``<service_id>:<name>`` (``ping``, ``tcp``...)."""
    return check_id.rsplit(":", 1)[-1]


def targets_of(records: tuple[Record, ...]) -> tuple[Target, ...]:
    """The checks to probe: every check of every jail's record (never the heartbeat's)."""
    return tuple(
        Target(r.jail, c.check_id, c.probe, r.address, r.port, c.ttl, c, r.place, r.service_id)
        for r in records
        if not r.is_self
        for c in r.checks
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
