"""Runs health rounds: probe every jail, write only the statuses that changed.

Called by ``daemon`` (``round`` every ``health.interval``, ``heartbeat`` every third
of ``health.heartbeat_ttl``), by ``reconcile`` (``initial_statuses`` for services
about to be registered, ``sync`` after every cycle) and by ``cli`` (``once``,
``plan``). The decisions themselves are pure functions in ``health``.

What it remembers between rounds: each check's state (status and its run of
consecutive results) and what was last written to Consul. Every reconcile cycle
that reads Consul hands over its statuses (``sync``; under ``run`` at least every
``sync.resync``): if a status there differs from what we last wrote (a TTL ran out
while the daemon was down, someone wrote to it), the next round writes ours again.
So health is level-triggered too, and costs O(changes) in writes.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Callable

from jailsyncd import events
from jailsyncd.errors import JailsyncdError
from jailsyncd.health import (
    CRITICAL,
    HEARTBEAT_RUNNING,
    HEARTBEAT_STOPPED,
    CheckState,
    Pace,
    Probe,
    ProbeResult,
    RoundReport,
    Target,
    Written,
    advance,
    check_name,
    decide,
    pace_of,
    ping_addresses,
    targets_of,
)
from jailsyncd.logs import get_logger
from jailsyncd.model import Record
from jailsyncd.ports import CheckWriter, Prober
from jailsyncd.settings import HealthSettings


@dataclass(frozen=True)
class RoundStats:
    probed: int
    writes: int
    changes: int
    duration: float
    #: Problems of the prober itself this round (logged as ``health_probe_failed``);
    #: the probes concerned got no result and their checks kept their status.
    probe_errors: int = 0
    #: Seconds spent waiting for the pace (``health.rate_limit``).
    paced: float = 0.0
    #: The round's pace: a round that cannot fit in ``health.interval`` at the rate
    #: limit says so here (and in the ``health_round`` event and the metrics).
    pace: Pace | None = None
    #: Probes that got a result, by outcome (``jailsyncd_health_probes_total``).
    probes_ok: int = 0
    probes_failed: int = 0
    #: Check writes Consul refused (each alone; the others were still written).
    failed: int = 0


class HealthLoop:
    def __init__(
        self,
        settings: HealthSettings,
        prober: Prober,
        checks: CheckWriter,
        clock: Callable[[], float] = time.monotonic,
        *,
        default_rate: int = 0,
        advice: Callable[[float, bool], str] | None = None,
    ) -> None:
        self.settings = settings
        self.prober = prober
        #: The rate limit when ``health.rate_limit`` is unset (the platform's, read at start).
        self.default_rate = default_rate
        #: What to change so that a rate (requests per second) is allowed; the flag says
        #: whether the rate in force comes from ``health.rate_limit``.
        self._advice = advice or (lambda needed, explicit: f"set health.rate_limit = {math.ceil(needed)} or more")
        self._pace_reported: tuple[int, float, bool] | None = None
        #: Where statuses are written: the mode's store, made once (``app``).
        self.checks = checks
        self.clock = clock
        self.log = get_logger()
        self.rounds = 0
        #: Unix time the last round ended and how long it took (``jailsyncd status``,
        #: metrics); None before the first round.
        self.last_round_at: float | None = None
        self.last_round_duration: float | None = None
        #: Problems of the prober itself since start (each one logged).
        self.probe_errors = 0
        #: The last round's pace (metrics); None before the first round.
        self.last_pace: Pace | None = None
        #: Told about every scheduled round (``safe_round``): its stats, or None when it
        #: failed, and its duration. Set by ``metrics``.
        self.on_round: Callable[[RoundStats | None, float], None] | None = None
        #: Called after a round in which Consul refused a check write it had not
        #: refused in the round before (a check removed by hand, which the Consul watch
        #: cannot see): the daemon asks for a full cycle, which registers it again.
        #: Once per new refusal, not per round: a write the token may never make does
        #: not cost a full read every round.
        self.on_refused: Callable[[], None] | None = None
        self._refused: frozenset[str] = frozenset()
        self._lock = threading.Lock()
        self._round_running = threading.Lock()
        self._targets: tuple[Target, ...] = ()
        self._states: dict[str, CheckState] = {}
        #: What each state is about (``Target.aim``): a check pointed at another address
        #: or port starts over, its old run of results being about something else.
        self._aims: dict[str, tuple[str, str, int]] = {}
        self._written: dict[str, Written] = {}
        #: Held while statuses are written; once ``_stopped``, rounds write nothing, so a
        #: round still running when the daemon stops cannot undo ``mark_stopped``.
        self._write_lock = threading.Lock()
        self._stopped = False
        #: The heartbeat's own: once ``stop_heartbeat`` wrote, no refresh follows.
        self._heartbeat_lock = threading.Lock()
        self._heartbeat_stopped = False

    def reload(self, settings: HealthSettings) -> None:
        """New settings, from the daemon's main thread (SIGHUP) while rounds run on the
        scheduler's: swapped under the loop's lock, like every other shared state."""
        with self._lock:
            self.settings = settings

    # -- used by reconcile ---------------------------------------------------------

    @property
    def rate(self) -> float:
        """Echo requests per second in force (0: no limit)."""
        return self.settings.rate_limit if self.settings.rate_limit is not None else self.default_rate

    def pace(self, targets: tuple[Target, ...] | None = None) -> Pace:
        s = self.settings
        with self._lock:
            targets = self._targets if targets is None else targets
        return pace_of(ping_addresses(targets), count=s.count, rate=self.rate, timeout=s.timeout, interval=s.interval)

    def advice(self, pace: Pace) -> str:
        return self._advice(pace.needed, self.settings.rate_limit is not None)

    def probe(self, targets: tuple[Target, ...]) -> dict[str, ProbeResult]:
        return self._probe(targets).results

    def _probe(self, targets: tuple[Target, ...]) -> RoundReport:
        """Probe the targets; a failure of the prober itself is logged and counted,
        never raised: health problems never stop registration."""
        probes = [Probe(t.check_id, t.probe, t.address, t.port) for t in targets]
        try:
            report = self.prober.run_round(probes, count=self.settings.count, timeout=self.settings.timeout, rate=self.rate)
        except Exception as exc:  # noqa: BLE001 - a prober bug must not end a cycle
            report = RoundReport(problems=[f"{type(exc).__name__}: {exc}"])
        for problem in report.problems:
            self.log.warning("health_probe_failed", error=problem)
        with self._lock:
            self.probe_errors += len(report.problems)
        return report

    def initial_statuses(self, services: tuple[Record, ...]) -> dict[str, str]:
        """Probe the checks of services about to be registered, so that they start
        with a real status instead of a write later. Also records that state."""
        targets = targets_of(services)
        results = self.probe(targets) if targets else {}
        statuses: dict[str, str] = {}
        with self._lock:
            for t in targets:
                if self._aims.get(t.check_id) != t.aim:
                    self._states.pop(t.check_id, None)
                    self._aims[t.check_id] = t.aim
                if t.check_id not in results:  # not probed (the prober failed): registered critical
                    statuses[t.check_id] = (self._states.get(t.check_id) or CheckState(CRITICAL)).status
                    continue
                state = advance(
                    self._states.get(t.check_id) or CheckState(CRITICAL),
                    results[t.check_id],
                    success_before_passing=self.settings.success_before_passing,
                    failures_before_critical=self.settings.failures_before_critical,
                )
                self._states[t.check_id] = state
                statuses[t.check_id] = state.status
        return statuses

    def sync(self, services: tuple[Record, ...], consul_status: dict[str, str], registered: dict[str, str]) -> bool:
        """After a cycle: the checks to probe from now on, and what Consul holds for
        them (``consul_status`` as read, ``registered`` as just written). Returns
        whether there are checks that have never been probed."""
        now = self.clock()
        targets = targets_of(services)
        with self._lock:
            self._targets = targets
            known = {t.check_id for t in targets}
            aims = {t.check_id: t.aim for t in targets}
            self._states = {k: v for k, v in self._states.items() if k in known and self._aims.get(k) == aims[k]}
            self._aims = aims
            written = {k: v for k, v in self._written.items() if k in known}
            for check_id, status in consul_status.items():
                if check_id in known and (check_id not in written or written[check_id].status != status):
                    written[check_id] = Written(status, now)
            for check_id, status in registered.items():
                # A registration can carry a status but not the probe's output: let the
                # next round write it once (as if a refresh were due).
                if check_id in known:
                    written[check_id] = Written(status, now - self.settings.ttl)
            self._written = written
            unprobed = any(t.check_id not in self._states for t in targets)
        self._report_pace(self.pace(targets))
        return unprobed

    def _report_pace(self, pace: Pace) -> None:
        """Warn once per change when a round cannot fit in ``health.interval`` at the
        rate limit, and once when it fits again."""
        key = (pace.addresses, pace.rate, pace.fits)
        previous, self._pace_reported = self._pace_reported, key
        if key == previous or (pace.fits and (previous is None or previous[2])):
            return
        if pace.fits:
            self.log.info("health_round_fits", addresses=pace.addresses, rate_limit=pace.rate, round_s=round(pace.seconds, 1), interval_s=self.settings.interval)
            return
        self.log.warning(
            "health_round_too_long",
            addresses=pace.addresses,
            requests=pace.requests,
            rate_limit=pace.rate,
            round_s=round(pace.seconds, 1),
            interval_s=self.settings.interval,
            needed_rate=math.ceil(pace.needed),
            fix=f"{self.advice(pace)}; or raise health.interval, or lower health.count",
        )

    # -- used by the daemon -----------------------------------------------------------

    def round(self, *, refresh_all: bool = False) -> RoundStats:
        """Probe every target, write what changed (and refreshes due). ``refresh_all``
        (``once`` with no daemon) writes every probed check, so that each one's TTL
        starts now. A check write Consul refuses fails that check alone (logged as
        ``health_write_failed``; retried next round); Consul unreachable or the token
        refused raises, as every other write would fail the same way."""
        started = self.clock()
        with self._lock:
            targets = self._targets
        report = self._probe(targets) if targets else RoundReport()
        results = report.results
        with self._lock:
            written = {k: Written(v.status, float("-inf")) for k, v in self._written.items()} if refresh_all else self._written
            states, writes, changes = decide(
                targets,
                self._states,
                written,
                results,
                self.clock(),
                success_before_passing=self.settings.success_before_passing,
                failures_before_critical=self.settings.failures_before_critical,
            )
            self._states = states
        self.rounds += 1
        self.last_round_at, self.last_round_duration = time.time(), self.clock() - started
        for change in changes:
            check = check_name(change.check_id)
            self.log.info(events.HEALTH_CHANGED, jail=change.jail, check=check, check_id=change.check_id, **{"from": change.old, "to": change.new}, output=change.output)
        done: list[tuple[Target, str]] = []
        failed = 0
        refused: set[str] = set()
        if writes:
            with self._write_lock:
                if self._stopped:
                    return RoundStats(len(targets), 0, len(changes), self.clock() - started)
                try:
                    for (target, status, _), error in self.checks.write_checks([(target, state.status, state.output) for target, state in writes]):
                        if error is None:
                            done.append((target, status))
                            continue
                        failed += 1
                        refused.add(target.check_id)
                        self.log.warning("health_write_failed", jail=target.jail, check_id=target.check_id, status=status, error=str(error))
                finally:
                    # What was written stays written even when a later write raised.
                    now = self.clock()
                    with self._lock:
                        self._written.update({target.check_id: Written(status, now) for target, status in done})
        # A check whose write failed and was not written since stays "refused".
        written_now = {t.check_id for t, _ in done}
        current = {t.check_id for t in targets}
        new = refused - self._refused
        self._refused = frozenset(refused | ((self._refused - written_now) & current))
        if new and self.on_refused is not None:
            self.on_refused()
        pace = self.pace(targets)
        self.last_pace = pace
        ok = sum(1 for result in results.values() if result.ok)
        return RoundStats(
            len(targets), len(done), len(changes), self.clock() - started, len(report.problems), report.paced, pace,
            probes_ok=ok, probes_failed=len(results) - ok, failed=failed,
        )

    def count(self, status: str) -> int:
        """How many checks jailsyncd currently holds at ``status`` (passing, critical)."""
        with self._lock:
            return sum(1 for t in self._targets if (state := self._states.get(t.check_id)) is not None and state.status == status)

    def heartbeat(self, output: str = HEARTBEAT_RUNNING) -> None:
        # A constant output: an unchanged check is not synced to the catalog again,
        # so the heartbeat does not move Consul's index every few seconds.
        # Its own lock, not the rounds' (a round writing thousands of statuses must
        # not hold the heartbeat back towards its TTL).
        with self._heartbeat_lock:
            if self._heartbeat_stopped:
                return  # a refresh still running at stop must not undo stop_heartbeat
            self.checks.heartbeat(output)

    def stop_heartbeat(self) -> None:
        """Agent mode, when ``run`` stops cleanly: the heartbeat says so (still passing,
        until its TTL runs out), so that ``once`` run before then does not take it for a
        live daemon and leave the statuses to nobody; no heartbeat is written after it."""
        with self._heartbeat_lock:
            self._heartbeat_stopped = True
            self.checks.heartbeat(HEARTBEAT_STOPPED)

    def mark_stopped(self, output: str) -> int:
        """Catalog mode, when ``run`` stops: write ``critical`` to every check this loop
        keeps (catalog checks have no TTL, so nothing else would ever change them), and
        write nothing after that. Returns how many checks were written."""
        with self._write_lock:
            self._stopped = True
            with self._lock:
                targets = self._targets
            if not targets:
                return 0
            written = 0
            # write_checks yields each write's outcome: a refused check fails alone.
            for (target, _, _), error in self.checks.write_checks([(target, CRITICAL, output) for target in targets]):
                if error is None:
                    written += 1
                else:
                    self.log.warning("health_write_failed", jail=target.jail, check_id=target.check_id, status=CRITICAL, error=str(error))
            return written

    def safe_round(self) -> None:
        """``round`` for the scheduler: errors are logged, never raised. A call while a
        round still runs (a round longer than ``health.interval``, e.g. paced by
        ``health.rate_limit``) returns at once: rounds then run back to back, and
        ``health_round_too_long`` has said why."""
        if not self._round_running.acquire(blocking=False):
            return
        try:
            self._safe_round()
        finally:
            self._round_running.release()

    def _safe_round(self) -> None:
        started = self.clock()
        try:
            stats = self.round()
        except JailsyncdError as exc:
            self.log.warning("health_round_failed", error=str(exc))
            if self.on_round is not None:
                self.on_round(None, self.clock() - started)
            return
        if self.on_round is not None:
            self.on_round(stats, stats.duration)
        over = stats.pace is not None and not stats.pace.fits
        log = self.log.info if stats.writes or stats.failed or stats.probe_errors or over else self.log.debug
        extra = {}
        if over:
            assert stats.pace is not None
            extra = {"round_s": round(stats.pace.seconds, 1), "needed_rate": math.ceil(stats.pace.needed), "fix": self.advice(stats.pace)}
        log(
            "health_round",
            probed=stats.probed,
            writes=stats.writes,
            changes=stats.changes,
            failed=stats.failed,
            duration_ms=round(stats.duration * 1000, 1),
            probe_errors=stats.probe_errors,
            paced_ms=round(stats.paced * 1000, 1),
            rate_limit=self.rate,
            over_interval=over,
            **extra,
        )

    def safe_heartbeat(self) -> None:
        try:
            self.heartbeat()
        except JailsyncdError as exc:
            self.log.warning("heartbeat_failed", error=str(exc))
