"""One reconcile cycle: observe CBSD and Consul, plan, apply, report.

Called by ``cli`` (``plan``, ``once``, ``purge``) and by ``daemon``'s worker. The
order of a cycle:

1. read CBSD's node DB and node name (a failed read raises ``SourceError``: the
   cycle stops before Consul is touched, so nothing is ever deregistered because
   of it), then what this host owns in Consul (agent mode: two requests to the
   local agent; catalog mode: three, plus one per 64 jails beyond the first 64:
   docs/scaling.md), then the rest of CBSD (the per-VM DBs); with
   ``sync.discover_addresses``, look up addresses for the running environments
   CBSD gives none (``adapters.discovery``, resolved against the wall clock here);
2. build the desired services (``desired.build_desired``) and ask whether the
   places they want that nobody of this host holds are taken. With at least
   ``EARLY_MIN`` new environments (health off), steps 1 and 2 go part by part and
   each part's new services are registered as soon as it is built
   (``_read_registering``; docs/architecture.md, "Registering while reading");
3. ``plan.plan`` with the safety rails, from the complete read; log drift;
4. apply through the store: register, then update, then deregister (new instances
   appear before old ones go); with health on, new services are probed first so
   they start with a real status. A rejection of one action (its payload refused:
   a 4xx or a 500 naming the payload, a rolled-back catalog operation, a 403 on a
   service name the token may not write) fails that action only and the cycle goes
   on; Consul unreachable, timing out or refusing the token as a whole stops the
   cycle, since the next request would fail the same way;
5. tell the health loop which checks exist now (only those of services this host
   holds in Consul: never a conflict's, never one whose registration failed); log
   one ``cycle_finished`` summary.

Skips and notes are logged when they first appear, not on every cycle; collisions
(another CBSD node's entries under our owner) are logged as errors on every cycle.
jailsyncd's own heartbeat service is not a jail: its writes are logged as
``heartbeat_service_*`` and never counted in ``registered=``/``updated=``/...
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from jailsyncd import events
from jailsyncd.desired import Naming, build_desired, combine, without_reserved_names
from jailsyncd.errors import JailsyncdError, SourceError
from jailsyncd.health import retargeted, with_ttl
from jailsyncd.leases import Discovered, Target, targets
from jailsyncd.logs import get_logger
from jailsyncd.model import Action, CbsdState, Confirmation, Desired, Environment, Observed, Pending, Plan, Record, Startup
from jailsyncd.plan import autostart_stopped, field_changes, frees_first, purge_plan, track_burst
from jailsyncd.plan import plan as make_plan
from jailsyncd.ports import AddressFinder, CbsdReader, CbsdReading, ConsulStore, ConsulWatch
from jailsyncd.settings import Settings

if TYPE_CHECKING:  # the health loop is handed in; reconcile never builds one
    from jailsyncd.healthloop import HealthLoop


class StartupWindow:
    """The start-up grace of one ``run`` (``sync.startup_grace``): when it started and
    which jails CBSD has shown running since. Made once per process (``cli``) and
    handed to every ``Reconciler`` of it, so a reload neither restarts the grace nor
    forgets what was seen. The clocks live here, outside the pure ``plan``."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.started = clock()
        self.started_wall = wall()
        self.seen_running: set[str] = set()

    def observe(self, state: CbsdState, grace: float) -> Startup:
        """Record what runs in this (complete) read; the grace as ``plan`` needs it."""
        self.seen_running.update(env.jname for env in state.environments if env.running)
        return Startup(
            elapsed=self.clock() - self.started,
            grace=grace,
            autostart_stopped=autostart_stopped(state),
            seen_running=frozenset(self.seen_running),
            until=self.ends_at(grace).isoformat(timespec="seconds").replace("+00:00", "Z"),
        )

    def ends_at(self, grace: float) -> datetime:
        """When a grace of ``grace`` seconds ends (UTC)."""
        return datetime.fromtimestamp(self.started_wall + grace, timezone.utc)


@dataclass(frozen=True)
class ConsulRead:
    """The last read of Consul a ``run`` keeps: for which owner, what it said, the
    Consul watch's generation before it was made, and when (``Reconciler.clock``)."""

    owner: str
    observed: Observed
    generation: int
    at: float


@dataclass(frozen=True)
class Observation:
    """What ``Reconciler.observe`` read: the owner identity, what Consul holds for it,
    and (not for purge) CBSD's state and the final desired state built from it."""

    owner: str
    observed: Observed
    state: CbsdState | None = None
    desired: Desired | None = None
    #: CBSD's node name ('' when unknown).
    host: str = ""
    #: ``standalone`` reconcilers with health on in agent mode: whether a daemon's
    #: heartbeat is alive in Consul, so that its health is left to it.
    daemon_running: bool = False
    #: ``observed`` is the last cycle's read of Consul, kept because the Consul watch
    #: saw no change since (its check statuses may be older than the health loop's).
    cached: bool = False
    #: Records registered while CBSD was read (``Reconciler._read_registering``):
    #: absent from ``observed`` (read before), done before ``plan``; ``apply`` skips them.
    registered: tuple[Record, ...] = ()


#: Registering while CBSD is read (``Reconciler._read_registering``) starts when at
#: least this many running environments have nothing in Consul: a transaction's
#: worth in catalog mode (two operations per jail, 64 per transaction). Fewer are
#: written after the read as they always were, reusing the last desired state.
EARLY_MIN = 32
#: Environments per part of that read: about one transaction's worth of new jails.
EARLY_PART = 32


def _new_environments(reading: CbsdReading, observed: Observed, skipped: frozenset[str]) -> int:
    """How many running environments of the node DB have nothing in Consul and were
    not skipped by the last desired state (``skipped``: opted out, unaddressable, a
    conflict...: those stay unregistered cycle after cycle, and must not send every
    cycle down the path of a cold start)."""
    have = {r.jail for r in observed.owned}
    return sum(1 for env in reading.listed if env.running and env.jname not in have and env.jname not in skipped)


#: Reasons for a cycle that always read both sides (``run``): everything but the
#: periodic tick and the two change feeds, whose cycles may reuse what is known.
INCREMENTAL_REASONS = frozenset({"interval", "change", "consul"})


@dataclass(frozen=True)
class Applied:
    """What ``Reconciler.apply`` did. ``counts`` are jail services only (never the
    heartbeat service); ``failed`` holds each action that failed alone, with its error;
    ``abandoned`` says the cycle stopped early (``should_stop``)."""

    counts: tuple[tuple[str, int], ...]
    failed: tuple[tuple[Action, JailsyncdError], ...] = ()
    abandoned: bool = False

    def count(self, kind: str) -> int:
        return dict(self.counts).get(kind, 0)


@dataclass
class CycleResult:
    """What one cycle did. ``error`` is set when the cycle stopped early.

    ``applied`` counts jail services only (never the heartbeat service);
    ``failed`` holds each action that failed alone, with its error.
    """

    cycle: int
    plan: Plan | None = None
    applied: dict[str, int] = field(default_factory=lambda: {"register": 0, "update": 0, "deregister": 0})
    failed: list[tuple[Action, JailsyncdError]] = field(default_factory=list)
    error: JailsyncdError | None = None
    duration: float = 0.0
    requests: int = 0
    writes: int = 0
    #: Bytes of the answers' bodies (uncompressed), reads and writes.
    bytes_read: int = 0
    #: Nothing changed on either side since the last cycle: nothing was read, planned
    #: or written (``run``'s periodic and change-feed cycles only).
    skipped: bool = False
    #: Consul was not read: the last cycle's read was reused (the watch saw no change).
    consul_cached: bool = False
    #: Services this host owns in Consul after the cycle (from the observed state
    #: plus what was applied).
    managed: int = 0
    desired: Desired | None = None
    observed: Observed | None = None
    #: The CBSD state the cycle planned from (for per-kind numbers in metrics).
    state: CbsdState | None = None
    #: The owner identity this cycle used: ``host.name``, else CBSD's node name.
    owner: str = ""
    #: ``standalone`` cycles (``once``, ``plan``) with health on in agent mode: whether
    #: a daemon's heartbeat is alive in Consul, so that its health is left to it.
    daemon_running: bool = False

    @property
    def failures(self) -> list[JailsyncdError]:
        """The errors of the actions that failed alone (``failed`` without the actions)."""
        return [error for _, error in self.failed]

    @property
    def ok(self) -> bool:
        return self.error is None and not self.failures and not (self.plan and (self.plan.refused or self.plan.collisions))


class Reconciler:
    """Runs cycles for one host; remembers what it already reported.

    The operations are public and separate: ``observe`` (read CBSD and Consul, build
    the desired state), ``plan`` (the diff with the safety rails), ``apply`` (write
    it), ``observe_owned`` and ``purge_plan`` (everything this host owns, to remove).
    ``cycle`` runs them in order, logs, and returns one ``CycleResult``. Built by
    ``app.App.reconciler`` (CLI, daemon, benchmark) or by tests with in-memory ports.
    """

    def __init__(
        self,
        settings: Settings,
        source: CbsdReader,
        store: ConsulStore,
        *,
        should_stop: Callable[[], bool] = lambda: False,
        quiet_noop: bool = False,
        health: HealthLoop | None = None,
        startup: StartupWindow | None = None,
        standalone: bool = False,
        discovery: AddressFinder | None = None,
        wall: Callable[[], float] = time.time,
        watch: ConsulWatch | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        #: ``run`` with ``sync.watch_consul``: Consul's change feed, whose generation
        #: tells whether the last read of Consul still holds (``cycle``'s ``reasons``).
        self.watch = watch
        self.clock = clock
        #: The last read of Consul: owner, what it said, the watch generation it was
        #: made at, and when (``clock``).
        self._consul: ConsulRead | None = None
        #: The last cycle succeeded, wrote nothing and left nothing waiting on time
        #: (a held or confirming deregistration, a refused burst): with nothing
        #: changed since, the next one would do nothing.
        self._quiet = False
        self.source = source
        #: The mode's store, made once per process (``app``); its counters are read
        #: before and after a cycle.
        self.store = store
        #: Checked between actions: a stopping daemon abandons the rest of a cycle
        #: (each action is one atomic request, so nothing is left half-written).
        self.should_stop = should_stop
        #: The daemon logs a cycle that changed nothing at debug level only.
        self.quiet_noop = quiet_noop
        #: With health on: probes new services before they are registered, and is
        #: told after each cycle which checks exist and what Consul holds for them.
        self.health = health
        #: ``run`` only (or ``--startup-grace``): holds back deregistrations of jails
        #: CBSD has yet to start at boot (``plan.hold_for_autostart``).
        self.startup = startup
        #: The owner identity of the last cycle that could tell (``CycleResult.owner``).
        self.owner = settings.host.name
        #: ``once``/``plan``/``purge``: no daemon behind this reconciler. In agent mode
        #: with health on, the heartbeat service is then left as a running daemon
        #: registered it, or (no daemon alive) registered with the long ``health.ttl``
        #: so that the statuses ``once`` writes hold until their own TTL.
        self.standalone = standalone
        #: ``sync.discover_addresses``: finds addresses of environments CBSD gives
        #: none; ``wall`` is the clock lease expiry is judged against.
        self.discovery = discovery
        self.wall = wall
        self.cycles = 0
        #: The last CBSD state (with what discovery found) and the desired state built
        #: from it: ``build_desired`` is pure, so an unchanged input (the common case)
        #: reuses its result.
        self._memo: tuple[CbsdState, Desired, dict[str, Discovered]] | None = None
        self.log = get_logger()
        self._reported: set[tuple[str, str, str]] = set()
        #: ``run``: the deregistration burst waiting for its confirming read.
        self._pending: Pending | None = None
        #: ``run``: when deregistrations were applied without a confirmation, and how
        #: many (the last ``sync.interval`` of them count towards the bulk rail).
        self._deregistered: list[tuple[float, int]] = []

    def carry_on(self, previous: Reconciler) -> None:
        """Take over what ``previous`` (the same daemon's, before a ``SIGHUP``) knew
        about time: the cycle count, the deregistrations applied within the last
        ``sync.interval`` (they count towards ``sync.max_deregistrations``), the burst
        waiting for its confirming read and what was already reported. A
        reload changes settings; it does not open a new window for the safety rails.
        What was read is not taken over: the new settings may want something else."""
        self.cycles = previous.cycles
        self._deregistered = list(previous._deregistered)
        self._pending = previous._pending
        self._reported = set(previous._reported)

    # -- the operations ------------------------------------------------------------

    def observe(self, *, reuse_consul: bool = False, early: bool = False, log: Any = None) -> Observation:
        """Read CBSD's node DB (a failed read raises before Consul is touched), read
        what this host owns in Consul, read the rest of CBSD (the per-VM DBs), build
        the desired state and the mode's records of it, ask whether the places it
        wants that are not ours are taken, and let the mode finish the records with
        what only Consul can tell (agent mode: the token's accessor, a running
        daemon's heartbeat).
        ``reuse_consul``: take the last read of Consul instead, if it was made for the
        same owner at the watch's current generation.
        ``early`` (a cycle that applies, with health off):
        when at least ``EARLY_MIN`` running environments have nothing in Consul,
        those are registered while CBSD is still being read (``_read_registering``;
        docs/architecture.md, "Registering while reading"); ``log`` logs them."""
        reading = self.source.begin()  # raises (retryable) while CBSD's node name cannot be read
        # The owner is never guessed: host.name, else the node name read with this state.
        owner = self.owner = self.settings.host.name or reading.nodename or ""
        last = self._current_read()
        cached = reuse_consul and last is not None and last.owner == owner
        if cached and last is not None:
            observed = last.observed
        else:
            cached = False
            # The generation before the read: a change during it is read next time.
            generation = self.watch.generation if self.watch is not None else 0
            last = self._consul = None  # the last read goes before the next is made (peak memory)
            observed = self.store.read(owner)
            self._consul = last = ConsulRead(owner, observed, generation, self.clock())
        registered: tuple[Record, ...] = ()
        skipped = frozenset(k.jail for k in self._memo[1].skipped) if self._memo is not None else frozenset()
        if early and not self.settings.health.enabled and _new_environments(reading, observed, skipped) >= EARLY_MIN:
            state, desired, registered = self._read_registering(reading, owner, observed, log if log is not None else self.log)
        else:
            state = reading.state()
            desired = self._desired(state, owner)
        # The places wanted that the read did not cover (not ours, not known to be
        # taken, not registered just now): ask whether they are taken, so that a clash
        # is reported as a conflict before the cas create (which refuses it anyway).
        places = frozenset(r.place for r in desired.records if r.place)
        missing = places - {r.place for r in observed.owned} - {r.place for r in registered} - observed.foreign_places
        if missing:
            observed = replace(observed, foreign_places=observed.foreign_places | self.store.places_taken(frozenset(missing)))
            if not cached:
                self._consul = replace(last, observed=observed)
        desired, daemon_running = self.store.settle(desired, observed, standalone=self.standalone, settings=self.settings)
        return Observation(owner, observed, state, desired, desired.host, daemon_running, cached=cached, registered=registered)

    def _desired(self, state: CbsdState, owner: str) -> Desired:
        """The desired state and the mode's records for a complete read (with what
        address discovery finds); an unchanged input reuses the last result."""
        discovered = self._discover(state, self.cycles)
        if self._memo is not None and self._memo[0] == state and self._memo[2] == discovered:
            return self._memo[1]
        # Let the old state and desired state go before the new one is built: at
        # thousands of jails both at once would raise the peak memory by ~10 MB.
        self._memo = None
        desired = without_reserved_names(self.store.records(self._build(state, owner, discovered), self.settings))
        self._memo = (state, desired, discovered)
        return desired

    def _build(self, state: CbsdState, owner: str, discovered: dict[str, Discovered], naming: Naming | None = None) -> Desired:
        """``build_desired`` with this reconciler's settings (``naming``: for a part of
        the table, the names settled over all of it)."""
        return build_desired(
            state,
            owner=owner,
            rules=self.settings.rules,
            prefer_ipv6=self.settings.sync.prefer_ipv6,
            health=self.settings.health if self.settings.health.enabled else None,
            discovered=discovered,
            naming=naming,
        )

    def _targets(self, environments: Sequence[Environment], unreadable: Sequence[tuple[str, str]]) -> tuple[Target, ...]:
        """The environments address discovery is asked about: those CBSD gives no
        address, but not those whose own data could not be read."""
        lost = dict(unreadable)
        return tuple(t for t in targets(environments, self.settings.rules) if t.jname not in lost)

    def _read_registering(self, reading: CbsdReading, owner: str, observed: Observed, log: Any) -> tuple[CbsdState, Desired, tuple[Record, ...]]:
        """Read the rest of CBSD part by part (``EARLY_PART`` environments, in jname
        order), build each part's desired state and records (``desired.combine``
        joins them into exactly what one build over the whole read gives), and
        register each new record as soon as its part is built: one whose service ID
        and place (catalog mode's node) Consul holds nothing of for this host, nor
        anyone else's service ID (catalog mode creates the node with ``cas`` at
        index 0, so a node someone else holds is refused, never overwritten). Consul
        works on one transaction while the next part is read (``store.register_new``).

        Only registrations go early: they add, never remove, and each is what the
        cycle's plan would register (the plan is made afterwards from the complete
        read, as always; ``apply`` skips what was done here). A registration that
        fails here is left to that plan: read again (a node taken: a conflict) and
        tried again or reported. Returns the complete state, its desired state and
        the records registered."""
        naming = Naming.of(env.jname for env in reading.listed)
        taken: dict[str, str] = {}
        parts: list[Desired] = []
        finding = self.discovery.session(self.wall()) if self.discovery is not None else None
        discovered: dict[str, Discovered] = {}
        ids = {r.service_id.casefold() for r in observed.owned} | {i.casefold() for i in observed.foreign_ids}
        places = {r.place.casefold() for r in observed.owned if r.place}

        def new_records() -> Iterator[Action]:
            for environments, unreadable in reading.parts(EARLY_PART):
                found: dict[str, Discovered] = {}
                if finding is not None:
                    wanted = self._targets(environments, unreadable)
                    found = finding.discover(wanted) if wanted else {}
                    discovered.update(found)
                part = self._build(CbsdState(reading.nodename, environments, unreadable), owner, found, naming)
                part = self.store.records(part, self.settings, taken=taken)
                # Before the reserved names go: as in one build, their places are taken.
                taken.update((r.place, r.jail) for r in part.records if r.place)
                part = without_reserved_names(part)
                parts.append(part)
                final, _ = self.store.settle(part, observed, standalone=self.standalone, settings=self.settings)
                for r in final.records:
                    if not r.is_self and r.service_id.casefold() not in ids and not (r.place and r.place.casefold() in places):
                        yield Action("register", r)

        registered: list[Record] = []
        actions = new_records()
        for act, error in self.store.register_new(actions, self.should_stop):
            if error is None:
                svc = act.service
                registered.append(svc)
                _log_missing(log, svc)
                log.info(events.APPLIED["register"], jail=svc.jail, service_id=svc.service_id, **_registered(svc))
        for _ in actions:  # stopped early (the daemon stops): read the rest, write nothing more
            pass
        if finding is not None:
            finding.finish()
            self._log_discovery(discovered)
        state = reading.state()
        desired = combine(parts, state, owner=owner)
        self._memo = (state, desired, discovered)
        return state, desired, tuple(registered)

    def plan(self, observation: Observation, *, force: bool = False) -> Plan:
        """The changes that make Consul match the desired state, with the safety rails
        (``plan.plan``); the start-up grace is taken from ``startup``; in ``run``, a
        deregistration burst waits for a confirming read (``plan.track_burst``)."""
        assert observation.state is not None and observation.desired is not None, "plan needs observe(), not observe_owned()"
        startup = self.startup.observe(observation.state, self.settings.sync.startup_grace) if self.startup is not None else None
        limit = self.settings.sync.max_deregistrations
        now = self.clock()
        confirm = None
        if not self.standalone:  # only run has an earlier read to confirm a burst with
            pending = self._pending
            window = now - self.settings.sync.interval
            self._deregistered = [(t, n) for t, n in self._deregistered if t > window]
            confirm = Confirmation(
                self.settings.sync.confirm_after,
                pending.ids if pending else None,
                now - pending.since if pending else 0.0,
                recent=sum(n for _, n in self._deregistered),
            )
        plan = make_plan(observation.desired, observation.observed, max_deregistrations=limit, force=force, startup=startup, confirm=confirm)
        if not self.standalone:
            self._pending = track_burst(self._pending, plan.burst, applied=bool(plan.burst and plan.deregister), now=now, limit=limit)
        return plan

    def observe_owned(self) -> Observation:
        """For ``purge``: what this host owns in Consul, and CBSD's node name ('' when it
        cannot be read: then every entry with our owner is purged, as before)."""
        host = self._nodename()
        # Read once; only when it failed and host.name is unset is it read again,
        # to raise its error (the owner is never guessed).
        owner = self.owner = self.settings.host.name or host or self.source.nodename()
        return Observation(owner, self.store.read(owner), host=host)

    def purge_plan(self, observation: Observation) -> Plan:
        """Deregister everything this host owns (never another CBSD node's entries)."""
        return purge_plan(observation.observed, observation.host)

    def apply(self, observation: Observation, plan: Plan, log: Any = None) -> Applied:
        """Write ``plan``: register, then update, then deregister (new instances appear
        before old ones go), except that an action freeing a place another action of
        the plan takes goes first (``plan.frees_first``); with health on, new checks are
        probed first so they start with a real status, and the health loop is told afterwards which checks exist.
        A rejected action fails alone; errors that would fail every action raise."""
        log = log if log is not None else self.log.bind(cycle=self.cycles)
        statuses: dict[str, str] = {}
        if self.health is not None and observation.desired is not None:
            # New checks, and checks whose target changed (an address or port moved):
            # probed now, so that they are written with a status about what they probe.
            fresh = tuple(plan.register) + tuple(
                u.new for u in plan.update if "checks" in u.fields or u.new.place != u.old.place or retargeted(u.old, u.new)
            )
            statuses = self.health.initial_statuses(fresh) if fresh else {}

        def action(kind: str, service: Record, old: Record | None = None) -> Action:
            own = tuple((c.check_id, statuses[c.check_id]) for c in service.checks if c.check_id in statuses)
            return Action(kind, service, old, own)

        early = {s.service_id for s in observation.registered}
        actions = [action("register", s) for s in plan.register if s.service_id not in early]
        actions += [action("update", u.new, u.old) for u in plan.update]
        actions += [action("deregister", s, s) for s in plan.deregister]
        actions = frees_first(actions)
        fields = {u.new.service_id: list(u.fields) for u in plan.update}
        counts = {"register": len(early), "update": 0, "deregister": 0}
        registered: dict[str, str] = {}
        failed: list[tuple[Action, JailsyncdError]] = []
        done = 0
        for act, error in self.store.apply(actions, self.should_stop):
            done += 1
            svc = act.service
            if error is not None:
                failed.append((act, error))
                log.error(events.ACTION_FAILED, action=act.kind, jail=svc.jail, service_id=svc.service_id, error=str(error))
                continue
            registered.update(dict(act.statuses))
            extra: dict[str, Any] = (
                _registered(svc) if act.kind == "register" else {"fields": fields[svc.service_id]} if act.kind == "update" else {}
            )
            if svc.place and act.kind != "register":
                extra["node"] = svc.place
            if svc.is_self:
                log.info(f"heartbeat_service_{events.APPLIED[act.kind].removeprefix('service_')}", service_id=svc.service_id, **extra)
                continue
            counts[act.kind] += 1
            log.info(events.APPLIED[act.kind], jail=svc.jail, service_id=svc.service_id, **extra)
        if counts["deregister"] and not plan.burst and not self.standalone:
            self._deregistered.append((self.clock(), counts["deregister"]))
        if done < len(actions):
            log.warning("cycle_abandoned", remaining=len(actions) - done)
            return Applied(tuple(counts.items()), tuple(failed), abandoned=True)
        if self.health is not None and observation.desired is not None:
            # A reused read's statuses may be older than what the health loop wrote since:
            # it keeps its own record then.
            consul_status = {} if observation.cached else {check_id: status for check_id, status, _ in observation.observed.check_status}
            held = tuple(with_ttl(s, self.settings.health.ttl) for s in plan.held)  # still probed
            failed_ids = {a.service.service_id for a, _ in failed}
            self.health.sync(health_services(observation.desired, observation.observed, plan, failed_ids) + held, consul_status, registered)
        return Applied(tuple(counts.items()), tuple(failed))

    # -- one cycle -----------------------------------------------------------------

    def incremental(self, reasons: Sequence[str] | None) -> bool:
        """Whether a cycle asked for by ``reasons`` may reuse what the last one knew:
        only in ``run`` (``reasons`` given) with the Consul watch answering, for the
        periodic tick and the change feeds, after a quiet cycle, and while a full read
        of Consul is younger than ``sync.resync`` (the safety net)."""
        last = self._consul
        return (
            reasons is not None
            and set(reasons) <= INCREMENTAL_REASONS
            and not self.standalone
            and self.watch is not None
            and self.watch.healthy
            and self._quiet
            and last is not None
            and self.clock() - last.at < self.settings.sync.resync
        )

    def _current_read(self) -> ConsulRead | None:
        """The last read of Consul if the watch saw no change since it was made."""
        last = self._consul
        return last if last is not None and self.watch is not None and last.generation == self.watch.generation else None

    def cycle(self, *, apply: bool = True, force: bool = False, purge: bool = False, reasons: Sequence[str] | None = None) -> CycleResult:
        """observe, plan and (with ``apply``) apply, or the same for ``purge``; logs the
        drift and one summary; never raises a ``JailsyncdError`` (it is in ``error``).

        ``reasons`` (``run`` only: why the daemon asked) lets a cycle work in proportion
        to what changed (docs/architecture.md, "Work in proportion to what changed"):
        with nothing changed on either side (CBSD's files keep their stamps, address
        discovery finds what it found, the Consul watch's generation has not moved)
        it is skipped, reading no DB and nothing from Consul;
        with only CBSD changed it reuses the last read of Consul."""
        incremental = apply and not purge and not force and self.incremental(reasons)
        if (
            incremental and self._current_read() is not None and self.source.unchanged() and self._discovery_unchanged()
        ):
            self.cycles += 1
            self.log.debug("cycle_skipped", cycle=self.cycles, reasons=list(reasons or ()))
            return CycleResult(self.cycles, skipped=True, owner=self.owner)
        self.cycles += 1
        result = CycleResult(self.cycles)
        log = self.log.bind(cycle=self.cycles)
        started = time.monotonic()
        requests, writes, read_bytes = self.store.requests, self.store.writes, self.store.bytes_read
        # A mode that writes a changed check's definition with the statuses of its
        # last read (catalog mode) needs that read fresh when health is on.
        reuse = incremental and not (self.store.applies_read_statuses and self.settings.health.enabled)
        self._quiet = False
        try:
            if purge:
                observation = self.observe_owned()
                result.owner = observation.owner
                result.plan = self.purge_plan(observation)
                self._report_collisions(log, result.plan, observation.host)
            else:
                observation = self.observe(reuse_consul=reuse, early=apply, log=log)
                result.consul_cached = observation.cached
                result.owner = observation.owner
                result.plan = self.plan(observation, force=force)
                result.desired, result.state, result.daemon_running = observation.desired, observation.state, observation.daemon_running
                self._report(log, result.plan, observation.host, logged=frozenset(s.service_id for s in observation.registered))
            result.observed = observation.observed
            result.managed = sum(1 for s in observation.observed.owned if not s.is_self)
            if apply:
                done = self.apply(observation, result.plan, log)
                result.applied = dict(done.counts)
                result.failed = list(done.failed)
                result.managed += done.count("register") - done.count("deregister")
        except JailsyncdError as exc:
            result.error = exc
        finally:
            result.duration = time.monotonic() - started
            result.requests, result.writes = self.store.requests - requests, self.store.writes - writes
            result.bytes_read = self.store.bytes_read - read_bytes
        plan = result.plan
        self._quiet = bool(
            apply and not purge and result.error is None and not result.failed and result.writes == 0 and plan is not None
            and not (plan.held or plan.confirming or plan.refused or plan.burst) and self._pending is None
        )
        if result.error is not None or result.failed:
            self._consul = None  # read again next time
        self._summarise(log, result, apply)
        return result

    def _discovery_unchanged(self) -> bool:
        """Whether address discovery, asked again for the environments of the last
        state, finds what it found then (lease files are stat'ed, not parsed, while
        unchanged; an expired lease or a new neighbor entry makes it differ)."""
        if self.discovery is None:
            return True
        if self._memo is None:
            return False
        state, _, discovered = self._memo
        return self._discover(state, self.cycles) == discovered

    def _nodename(self) -> str:
        """The CBSD node name for ``purge`` ('' when it cannot be read)."""
        try:
            return self.source.nodename()
        except SourceError:
            return ""

    def _discover(self, state: CbsdState, cycle: int) -> dict[str, Discovered]:
        """Addresses for the environments that need them (none: nothing is read)."""
        if self.discovery is None:
            return {}
        wanted = self._targets(state.environments, state.unreadable)
        if not wanted:
            return {}
        found = self.discovery.discover(wanted, self.wall())
        self._log_discovery(found, cycle)
        return found

    def _log_discovery(self, found: dict[str, Discovered], cycle: int | None = None) -> None:
        """One debug line: how many targets, and what each source found."""
        if not found:
            return
        by_source: dict[str, int] = {}
        for item in found.values():
            key = item.source or ("unknown" if item.unknown else "none")
            by_source[key] = by_source.get(key, 0) + 1
        self.log.debug("address_discovery", cycle=self.cycles if cycle is None else cycle, targets=len(found), found=dict(sorted(by_source.items())))

    def _report(self, log: Any, plan: Plan, host: str, logged: frozenset[str] = frozenset()) -> None:
        """Log the plan's drift (but that of ``logged``, the registrations made while
        CBSD was read, logged then), the skips and notes not reported yet, and the
        collisions."""
        current_held: set[tuple[str, str, str]] = set()
        # The heartbeat service is not a jail: its own writes are logged by _apply.
        for svc in plan.register:
            if not svc.is_self and svc.service_id not in logged:
                _log_missing(log, svc)
        for upd in plan.update:
            if not upd.new.is_self:
                log.info(events.DRIFT_DETECTED, kind="changed", jail=upd.new.jail, service_id=upd.new.service_id, fields=field_changes(upd))
        for svc in plan.deregister + plan.refused + plan.confirming:
            if not svc.is_self:
                log.info(events.DRIFT_DETECTED, kind="orphan", jail=svc.jail, service_id=svc.service_id)
        if plan.confirming:
            log.warning(
                "deregistrations_awaiting_confirmation",
                count=len(plan.confirming),
                max_deregistrations=self.settings.sync.max_deregistrations,
                jails=[s.jail for s in plan.confirming],
                confirm_in_s=round(plan.confirm_in, 1),
            )
        elif plan.burst and plan.deregister:
            log.warning("deregistrations_confirmed", count=len(plan.deregister), max_deregistrations=self.settings.sync.max_deregistrations)
        for svc in plan.held:
            key = ("held", svc.jail, plan.held_until)
            current_held.add(key)
            if key not in self._reported:
                log.info("deregistration_held", jail=svc.jail, service_id=svc.service_id, until=plan.held_until, reason="startup_grace")
        if plan.refused:
            log.error(
                events.DEREGISTRATIONS_REFUSED,
                count=len(plan.refused),
                max_deregistrations=self.settings.sync.max_deregistrations,
                jails=[s.jail for s in plan.refused],
                reason=plan.refused_why,
            )
        self._report_collisions(log, plan, host)
        current: set[tuple[str, str, str]] = set()
        for skip in plan.skipped:
            key = ("skip", skip.jail, skip.reason)
            current.add(key)
            if key not in self._reported and skip.reason not in ("refused", "collision"):
                level = log.warning if skip.reason in ("conflict", "source_error") else log.info
                level(events.JAIL_SKIPPED, jail=skip.jail, reason=skip.reason, detail=skip.detail)
        for note in plan.notes:
            key = ("note", note.jail, note.detail)
            current.add(key)
            if key not in self._reported:
                log.warning("jail_note", jail=note.jail, kind=note.kind, detail=note.detail)
        self._reported = current | current_held

    def _report_collisions(self, log: Any, plan: Plan, host: str) -> None:
        """Every cycle, one error per entry of another CBSD node under our owner."""
        for svc in plan.collisions:
            log.error(
                "owner_collision",
                jail=svc.jail,
                service_id=svc.service_id,
                **({"node": svc.place} if svc.place else {}),
                owner=self.owner,
                other_cbsd_node=svc.cbsd_host,
                this_cbsd_node=host,
            )

    def _summarise(self, log: Any, result: CycleResult, apply: bool) -> None:
        if result.error is not None:
            log.error(
                events.CYCLE_FAILED,
                error=str(result.error),
                error_kind=type(result.error).__name__,
                retryable=result.error.retryable,
                duration_ms=round(result.duration * 1000, 1),
            )
            return
        if not apply:
            return
        plan = result.plan
        assert plan is not None
        changed = result.writes or result.failures or plan.refused or plan.collisions
        emit = log.debug if self.quiet_noop and not changed else log.info
        emit(
            events.CYCLE_FINISHED,
            registered=result.applied["register"],
            updated=result.applied["update"],
            deregistered=result.applied["deregister"],
            refused=len(plan.refused),
            held=len(plan.held),
            skipped=len(plan.skipped),
            collisions=len(plan.collisions),
            failed=len(result.failures),
            writes=result.writes,
            requests=result.requests,
            bytes_read=result.bytes_read,
            duration_ms=round(result.duration * 1000, 1),
        )


def _log_missing(log: Any, svc: Record) -> None:
    """The drift line of a service Consul lacks (logged when planned, or when it is
    registered while CBSD is read)."""
    log.info(events.DRIFT_DETECTED, kind="missing", jail=svc.jail, service_id=svc.service_id, service=svc.name, address=svc.address)


def _registered(svc: Record) -> dict[str, Any]:
    """The keys of a ``service_registered`` line beside ``jail`` and ``service_id``."""
    return {"service": svc.name, "address": svc.address, **({"node": svc.place} if svc.place else {})}


def health_services(desired: Desired, observed: Observed, plan: Plan, failed: set[str]) -> tuple[Record, ...]:
    """The records whose checks the health loop may write after a cycle: the desired
    records that this host holds in Consul now. Never a service skipped as a
    conflict or collision (someone else's entry under that ID or node), never one
    whose registration failed (its checks do not exist); a service whose update
    failed keeps only the checks Consul already has."""
    held = {s.service_id: s for s in observed.owned if s not in plan.collisions}
    registered = {s.service_id for s in plan.register if s.service_id not in failed}
    elsewhere = {k.jail for k in plan.skipped if k.reason in ("conflict", "collision")}
    out: list[Record] = []
    for svc in desired.records:
        old = held.get(svc.service_id)
        if svc.jail in elsewhere and not svc.is_self:
            continue
        if svc.service_id in registered:
            out.append(svc)
        elif old is not None:
            if svc.service_id in failed:
                have = old.check_ids
                svc = replace(svc, checks=tuple(c for c in svc.checks if c.check_id in have))
            out.append(svc)
    return tuple(out)
