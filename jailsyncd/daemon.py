"""The long-running service behind ``jailsyncd run``.

Called by ``cli`` only. One worker thread runs reconcile cycles, one at a time;
everything else only *asks* for a cycle:

- APScheduler (3.x, ``BackgroundScheduler``) asks every ``sync.interval`` with up to
  ``sync.jitter`` of random delay;
- the node DB watcher (``adapters.fswatch.DbWatcher``, its own thread) asks as soon
  as CBSD's node DB or its ``-wal`` changed: told by inotify/kqueue
  (``sync.watch = "auto"``) and in any case by a stat every ``sync.watch_interval``
  (``adapters.cbsd.db_stamp``, the same change detector the per-VM cache uses; CBSD
  writes only on events, so a changed stamp means "re-read now");
- the Consul-watch thread (``sync.watch_consul``) asks when Consul says that what
  this host owns changed there (``adapters.consul.watch``: one blocking query at a
  time, at most one return every ``WATCH_MIN_GAP`` seconds, backing off 1, 2, 4, ...
  up to ``WATCH_BACKOFF_MAX`` seconds while Consul cannot answer; its first answer
  after an outage counts as a change, and ends a retry wait like a kick);
- ``SIGUSR1`` and ``jailsyncd kick`` ask at once;
- the first cycle is asked for at start-up, and one more when ``sync.startup_grace``
  ends (for the deregistrations it held back), and one ``sync.confirm_after`` after
  a cycle that planned a deregistration burst (its confirming read).

Requests are a flag, not a queue: any number of them while a cycle runs become
exactly one more cycle right after it (never dropped, never piled up). After a
failed cycle the worker waits 1, 2, 4, ... seconds (capped at ``sync.backoff_max``)
before retrying; any request for a cycle (a kick, a reload, a DB change seen by the
watcher, the periodic tick) cuts the wait short, and so does Consul answering again
after a cycle failed to reach it (``probe``: one ``GET /v1/status/leader`` to the
configured agent every ``PROBE_EVERY`` seconds, each bounded by ``PROBE_TIMEOUT``).
One success resets it and logs ``cycle_recovered`` (how many failed cycles, for how
long).
``SIGHUP`` reloads the settings (a bad file is logged and the old settings stay);
``SIGTERM``/``SIGINT`` stop: the current cycle is abandoned between two requests
(each request is atomic), registrations stay unless ``sync.deregister_on_stop``; in
catalog mode with health on every check is set critical first
(``catalog.critical_on_stop``: catalog checks have no TTL); in agent mode the
heartbeat is left passing with an output saying the daemon stopped (for ``once``).
"""

from __future__ import annotations

import os
import signal
from datetime import datetime, timedelta, timezone
import threading
import time
from pathlib import Path
from typing import Callable

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger

from jailsyncd.adapters.cbsd import node_db_path, nodename_path
from jailsyncd.adapters.fswatch import DbWatcher
from jailsyncd.errors import ConsulError, JailsyncdError
from jailsyncd.ports import ConsulWatch
from jailsyncd.logs import configure, get_logger
from jailsyncd.pidfile import Pidfile
from jailsyncd.platform import current as current_platform
from jailsyncd.reconcile import CycleResult, Reconciler
from jailsyncd.settings import ConsulSettings, Settings, token_file_problem

#: How long a stopping daemon waits for the current cycle before it exits anyway.
STOP_GRACE = 3.0

#: While a backoff wait follows a cycle that could not reach Consul, how often the
#: probe asks whether Consul answers again, and how long one probe may take. Bounded
#: and rate limited: at most two cheap requests a second to the local agent, so that
#: the host converges within about a second of Consul's return (issue 14, item 2).
PROBE_EVERY = 0.5
PROBE_TIMEOUT = 1.0


def wait_event(event: threading.Event, timeout: float) -> bool:
    """Block until ``event`` is set or ``timeout`` seconds pass; whether it is set."""
    return event.wait(timeout)


#: The Consul watch's rate limit: at least this long between two blocking queries, so
#: that a burst of changes (a thousand registrations syncing one by one) costs a few
#: requests a second, not one per change; short beside the one-second repair target.
WATCH_MIN_GAP = 0.25
#: The Consul watch's retry delay while Consul cannot answer doubles up to this.
WATCH_BACKOFF_MAX = 10.0
#: How long the start-up cycle waits for the Consul watch's first answer (its
#: baseline), when the owner is known before it: a read of Consul made before that
#: answer would count as stale the moment it comes, and cost one more full read.
WATCH_BASELINE_WAIT = 1.0


def backoff_delay(failures: int, cap: float) -> float:
    """1, 2, 4, ... seconds after 1, 2, 3, ... consecutive failures, at most ``cap``."""
    return min(2.0 ** (failures - 1), cap) if failures > 0 else 0.0


class Daemon:
    def __init__(
        self,
        settings: Settings,
        reconciler_factory: Callable[[Settings, Callable[[], bool]], Reconciler],
        load: Callable[[], Settings],
        *,
        log_overrides: tuple[str | None, str | None] = (None, None),
        metrics=None,
        health=None,
        startup=None,
        drop_privileges: Callable[[], None] | None = None,
        probe: Callable[[ConsulSettings], bool] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wait: Callable[[threading.Event, float], bool] = wait_event,
        watch: ConsulWatch | None = None,
    ) -> None:
        self.settings = settings
        self._make_reconciler = reconciler_factory
        self._load = load
        self._log_overrides = log_overrides
        self.metrics = metrics
        #: The ``HealthLoop`` (health on) whose rounds and heartbeat are scheduled here.
        self.health = health
        #: The ``reconcile.StartupWindow`` its reconcilers share: one more cycle is
        #: asked for when ``sync.startup_grace`` ends, for the deregistrations it held.
        self.startup = startup
        if health is not None:
            # A check write Consul refused (a check removed by hand, unseen by the
            # Consul watch): a full cycle reads Consul and registers it again.
            health.on_refused = lambda: self.request("health")
        #: Called once by ``run`` after the pidfile is locked and before anything
        #: serves or runs a cycle: the switch to ``daemon.user`` (``privileges``).
        self._drop_privileges = drop_privileges
        #: Whether Consul answers again (``adapters.consul.consul_answers``): ends a
        #: backoff wait after a ``ConsulError``.
        self._probe = probe
        #: The worker's clock and its way of waiting for a request: the real ones, or
        #: a virtual time in the unit tests (the backoff is tested in milliseconds).
        self._clock = clock
        self._wait = wait
        #: Consul's change feed (``sync.watch_consul``), run by its own thread.
        self.watch = watch
        self.consul_watcher: threading.Thread | None = None
        self.log = get_logger()
        self._stop = threading.Event()
        #: The Consul watch has answered (or failed, or cannot ask yet) once.
        self._watch_baseline = threading.Event()
        self._wanted = threading.Event()  # a cycle was asked for
        self._kicked = threading.Event()  # an explicit request: cuts a backoff short
        self._main_wake = threading.Event()
        self._reload_requested = False
        self._reasons: set[str] = set()
        self._reasons_lock = threading.Lock()
        self._reconciler = reconciler_factory(settings, self._stop.is_set)
        #: The node DB watcher (started by ``run``).
        self.watcher: DbWatcher | None = None
        self.failures = 0
        self._consul_down = False
        #: When the current run of failed cycles began, and what the last one failed on.
        self._failing_since = 0.0
        self._last_error_kind = ""
        self.scheduler: BackgroundScheduler | None = None
        self.worker: threading.Thread | None = None

    # -- requests -------------------------------------------------------------

    def request(self, reason: str) -> None:
        with self._reasons_lock:
            self._reasons.add(reason)
        self._wanted.set()

    def kick(self, reason: str = "kick") -> None:
        self.request(reason)
        self._kicked.set()

    def stop(self) -> None:
        self._stop.set()
        self._wanted.set()
        self._kicked.set()
        self._main_wake.set()

    def _db_changed(self) -> None:
        # Like a kick, a change ends a backoff wait: a DB that comes back after an
        # outage (or is fixed) is read now, not up to sync.backoff_max later. Never a
        # hot loop: a change is one request per CBSD write (the watcher coalesces a
        # write's events), and requests during a cycle become one more cycle.
        self.kick("change")

    def _start_watcher(self) -> None:
        sync = self.settings.sync
        watcher = DbWatcher(
            node_db_path(self.settings.cbsd.workdir),
            self._db_changed,
            sync.watch_interval,
            events=current_platform().file_events if sync.watch == "auto" else None,
            warn=lambda event, **fields: self.log.warning(event, **fields),
            # The node name is read every cycle too (the owner, or cbsd-host): its
            # file appearing or changing is a change like the DB's.
            also=(nodename_path(self.settings.cbsd.workdir),),
        )
        watcher.start()
        self.watcher = watcher
        self.log.info(
            "db_watch_started", backend=watcher.backend, path=watcher.path, interval_s=sync.watch_interval, fallback=watcher.fallback
        )

    def _stop_watcher(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
            self.watcher = None

    # -- the Consul watch ---------------------------------------------------------

    def _consul_watch(self) -> None:
        """The Consul-watch thread: one blocking query after another; a change asks
        for a cycle (a kick while the worker waits to retry: Consul is back). Ends by
        itself once the daemon stops (at the latest when the query in flight returns:
        the thread is a daemon thread, so a stopping process never waits for it)."""
        assert self.watch is not None
        failures = 0
        last_error = ""
        while not self._stop.is_set():
            owner = self._reconciler.owner
            if not self.settings.sync.watch_consul or not owner:
                self._watch_baseline.set()  # nothing to wait for
                self._stop.wait(0.5)  # off (a reload may turn it on), or before the first read
                continue
            started = time.monotonic()
            try:
                changed = self.watch.wait_change(owner)
            except JailsyncdError as exc:
                self._watch_baseline.set()
                failures += 1
                delay = backoff_delay(failures, WATCH_BACKOFF_MAX) if exc.retryable else WATCH_BACKOFF_MAX
                # A warning for the first failure and for each new reason (the outage
                # may end in an error that lasts): the rest are debug.
                warn = failures == 1 or str(exc) != last_error
                last_error = str(exc)
                (self.log.warning if warn else self.log.debug)("consul_watch_failed", error=str(exc), failures=failures, retry_in_s=delay)
                self._stop.wait(delay)
                continue
            except Exception as exc:  # noqa: BLE001 - a bug here must not end the watch for good
                failures += 1
                self.log.exception("consul_watch_crashed", error=f"{type(exc).__name__}: {exc}")
                self._stop.wait(WATCH_BACKOFF_MAX)
                continue
            if failures:
                self.log.info("consul_watch_recovered", failures=failures)
                failures, last_error = 0, ""
            self._watch_baseline.set()  # the start-up cycle may read Consul now
            if changed and not self._stop.is_set():
                self.log.debug("consul_changed", generation=self.watch.generation)
                if self.failures:
                    self.kick("consul")
                else:
                    self.request("consul")
            self._stop.wait(max(0.0, WATCH_MIN_GAP - (time.monotonic() - started)))

    # -- the worker -------------------------------------------------------------

    def _worker(self) -> None:
        if self.watch is not None:
            self._watch_baseline.wait(WATCH_BASELINE_WAIT)
        while not self._stop.is_set():
            if not self._wait(self._wanted, 0.5):
                continue
            if self._stop.is_set():
                break
            delay = self.run_requested()
            if delay:
                self._backoff_wait(delay, probing=self._consul_down and self._probe is not None)
                self.request("retry")

    def run_requested(self) -> float:
        """Run the one cycle that every request since the last one asked for; returns
        how long to back off before retrying (0 after a success, which resets the
        backoff). The worker thread's step; unit tests call it directly."""
        self._wanted.clear()
        self._kicked.clear()
        with self._reasons_lock:
            reasons, self._reasons = sorted(self._reasons), set()
        result = self._cycle(reasons)
        if result is not None and result.plan is not None and result.plan.confirm_in > 0:
            # A deregistration burst waits for its confirming read: ask for it.
            self._ask_later(result.plan.confirm_in + 0.1, "confirm")
        if result is not None and result.error is None:
            if self.failures:
                self.log.info(
                    "cycle_recovered",
                    cycle=result.cycle,
                    failed_cycles=self.failures,
                    failing_for_s=round(self._clock() - self._failing_since, 1),
                    last_error_kind=self._last_error_kind,
                )
            self.failures = 0
            return 0.0
        if not self.failures:
            self._failing_since = self._clock()
        self._last_error_kind = type(result.error).__name__ if result is not None else "crash"
        self.failures += 1
        delay = backoff_delay(self.failures, self.settings.sync.backoff_max)
        self.log.warning("backoff", failures=self.failures, delay_s=delay)
        #: The cycle could not reach Consul: the wait also ends when Consul answers.
        self._consul_down = result is not None and isinstance(result.error, ConsulError) and result.error.retryable
        return delay

    def _ask_later(self, delay: float, reason: str) -> None:
        """One cycle in ``delay`` seconds (a later ask replaces an earlier one)."""
        if self.scheduler is not None:
            when = datetime.now(timezone.utc) + timedelta(seconds=delay)
            self.scheduler.add_job(self.request, DateTrigger(run_date=when), args=(reason,), id=reason, replace_existing=True)
            return
        timer = threading.Timer(delay, self.request, args=(reason,))
        timer.daemon = True
        timer.start()

    def _backoff_wait(self, delay: float, *, probing: bool) -> None:
        """Wait ``delay`` seconds, or until a cycle is asked for (kick, reload, DB
        change, the periodic tick), or, when ``probing``, until Consul answers again."""
        started = self._clock()
        deadline = started + delay
        while not self._stop.is_set():
            remaining = deadline - self._clock()
            if remaining <= 0:
                return
            if self._wait(self._wanted, min(remaining, PROBE_EVERY) if probing else remaining):
                return
            if probing and self._probe_once():
                self.log.info("consul_answers", waited_s=round(self._clock() - started, 2), delay_s=delay)
                return

    def _probe_once(self) -> bool:
        """One probe; rate limited by the wait before it in ``_backoff_wait``, even
        when it fails at once (connection refused)."""
        assert self._probe is not None
        try:
            return bool(self._probe(self.settings.consul))
        except Exception:  # noqa: BLE001 - a probe never ends the daemon; it only says "not yet"
            return False

    def _cycle(self, reasons: list[str]) -> CycleResult | None:
        reconciler = self._reconciler
        self.log.debug("cycle_started", cycle=reconciler.cycles + 1, reasons=reasons)
        try:
            result = reconciler.cycle(reasons=reasons)
        except Exception as exc:  # noqa: BLE001 - the daemon must outlive a bug in one cycle
            self.log.exception("cycle_crashed", cycle=reconciler.cycles, error=f"{type(exc).__name__}: {exc}")
            if self.metrics:
                self.metrics.record_crash()
            return None
        if self.metrics:
            if result.skipped:
                self.metrics.record_skipped()
            else:
                self.metrics.record(result)
        return result

    # -- reload -------------------------------------------------------------------

    def reload(self) -> None:
        """Load the settings file again (SIGHUP); a file that fails to load or changes
        what needs a restart is logged and the old settings stay, whole."""
        try:
            new = self._load()
        except JailsyncdError as exc:
            self.log.error("config_reload_failed", error=str(exc), kept=str(self.settings.source))
            return
        except Exception as exc:  # noqa: BLE001 - a loader bug must not kill run on SIGHUP
            self.log.error("config_reload_failed", error=f"{type(exc).__name__}: {exc}", kept=str(self.settings.source))
            return
        restart_only = [key for key, old_value, new_value in (
            ("consul", self.settings.consul, new.consul),
            ("health.enabled", self.settings.health.enabled, new.health.enabled),
            ("metrics", self.settings.metrics, new.metrics),
            ("daemon", self.settings.daemon, new.daemon),
        ) if old_value != new_value]
        if restart_only:
            # The health loop's Consul client, its heartbeat and the metrics listener
            # are built once at start: refuse rather than apply half of the file.
            self.log.error(
                "config_reload_failed",
                error=f"{', '.join(restart_only)} changed: restart jailsyncd to apply them; nothing was reloaded",
                kept=str(self.settings.source),
            )
            return
        fmt, level = self._log_overrides
        configure(fmt or new.log.format, level or new.log.level)
        self.log = get_logger()
        problem = token_file_problem(new.consul.token_file)
        if problem is not None:
            self.log.warning("token_file_insecure", path=str(new.consul.token_file), problem=problem)
        old, self.settings = self.settings, new
        previous, self._reconciler = self._reconciler, self._make_reconciler(new, self._stop.is_set)
        self._reconciler.carry_on(previous)
        if self.health is not None:
            self.health.reload(new.health)
        if self.scheduler is not None and (old.sync, old.health) != (new.sync, new.health):
            self._schedule(replace=True)
        watched = (old.cbsd.workdir, old.sync.watch, old.sync.watch_interval)
        if self.watcher is not None and watched != (new.cbsd.workdir, new.sync.watch, new.sync.watch_interval):
            self._stop_watcher()
            self._start_watcher()
        self.log.info("config_reloaded", settings=new.redacted())
        self.kick("reload")

    # -- lifecycle ----------------------------------------------------------------

    def _schedule(self, replace: bool = False) -> None:
        assert self.scheduler is not None
        sync = self.settings.sync
        common = dict(max_instances=1, coalesce=True, replace_existing=replace)
        self.scheduler.add_job(
            self.request, IntervalTrigger(seconds=sync.interval, jitter=sync.jitter or None), args=("interval",), id="interval", **common
        )
        if self.startup is not None:
            ends = self.startup.ends_at(sync.startup_grace)
            if ends > datetime.now(timezone.utc):
                self.scheduler.add_job(self.request, DateTrigger(run_date=ends), args=("startup_grace_ended",), id="grace", **common)
        if self.health is not None:
            health = self.settings.health
            soon = datetime.now(timezone.utc) + timedelta(seconds=1)  # after the first cycle, usually
            # Two instances: a tick that comes while a (paced) round still runs starts one
            # that returns at once (HealthLoop.safe_round), instead of APScheduler's
            # "skipped: maximum number of running instances" warning on every tick.
            self.scheduler.add_job(
                self.health.safe_round, IntervalTrigger(seconds=health.interval), id="health", next_run_time=soon, **{**common, "max_instances": 2}
            )
            if self.health.checks.has_heartbeat:  # catalog mode has no heartbeat service
                self.scheduler.add_job(
                    self.health.safe_heartbeat, IntervalTrigger(seconds=health.heartbeat_ttl / 3), id="heartbeat", next_run_time=soon, **common
                )

    def _install_signals(self) -> None:
        def on_stop(signum, _frame):
            self.log.info("stop_requested", signal=signal.Signals(signum).name)
            self.stop()

        def on_hup(_signum, _frame):
            self._reload_requested = True
            self._main_wake.set()

        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)
        signal.signal(signal.SIGHUP, on_hup)
        signal.signal(signal.SIGUSR1, lambda *_: self.kick("signal"))

    def run(self, pidfile: Path | None = None) -> int:
        """Serve until SIGTERM/SIGINT; returns the exit status (0).

        The pidfile is locked first (a second ``run`` on it fails here, naming the
        first) and written only once start-up succeeded: a start that fails (a busy
        metrics port) removes it again, so no ``kick`` trusts a PID that never ran."""
        lock = Pidfile(pidfile) if pidfile is not None else None
        if lock is not None:
            lock.lock()
        try:
            if self._drop_privileges is not None:
                self._drop_privileges()  # the pidfile stays open: written through its fd
            self._install_signals()
            if self.metrics:
                self.metrics.start(self.settings.metrics.listen, lambda: self.worker is not None and self.worker.is_alive())
            self.scheduler = BackgroundScheduler(timezone="UTC")
            self._schedule()
            self.scheduler.start()
            self._start_watcher()
        except BaseException:
            self._stop_watcher()
            if lock is not None:
                lock.release()
            raise
        self.worker = threading.Thread(target=self._worker, name="reconcile", daemon=True)
        self.worker.start()
        if self.watch is not None:
            self.consul_watcher = threading.Thread(target=self._consul_watch, name="consul-watch", daemon=True)
            self.consul_watcher.start()
        if lock is not None:
            lock.write()
        self.log.info(
            "daemon_started",
            pid=os.getpid(),
            pidfile=str(pidfile) if pidfile else None,
            pidfile_by_supervisor=bool(lock and lock.supervised),
            settings=self.settings.redacted(),
        )
        self.request("startup")
        try:
            while not self._stop.is_set():
                self._main_wake.wait(timeout=1.0)
                self._main_wake.clear()
                if self._reload_requested:
                    self._reload_requested = False
                    self.reload()
        finally:
            self._stop_watcher()
            self.scheduler.shutdown(wait=False)
            self.worker.join(timeout=STOP_GRACE)
            if self.settings.sync.deregister_on_stop:
                self._deregister_all()
            elif self.health is not None and not self.health.checks.checks_expire and self.settings.catalog.critical_on_stop:
                self._mark_critical()
            elif self.health is not None and self.health.checks.has_heartbeat:
                self._stop_heartbeat()
            if self.metrics:
                self.metrics.stop()
            if lock is not None:
                lock.release()
            self.log.info("daemon_stopped", cycles=self._reconciler.cycles, abandoned=self.worker.is_alive())
        return 0

    def _mark_critical(self) -> None:
        """Catalog checks are inert: left alone, a host that shuts down would leave its
        jails passing for as long as it is down (docs/architecture.md, "Stopping")."""
        try:
            count = self.health.mark_stopped(f"jailsyncd on {self.settings.host.name or self._reconciler.owner} stopped; status unknown until it runs again")
        except JailsyncdError as exc:
            self.log.error("checks_critical_on_stop", checks=0, error=str(exc))
            return
        self.log.info("checks_critical_on_stop", checks=count)

    def _stop_heartbeat(self) -> None:
        """Agent mode: the heartbeat stays passing (a restart must not flap the jails)
        but says the daemon stopped, for ``once`` (docs/architecture.md, "Stopping")."""
        try:
            self.health.stop_heartbeat()
        except JailsyncdError as exc:
            self.log.warning("heartbeat_stopped", error=str(exc))
            return
        self.log.info("heartbeat_stopped", error=None)

    def _deregister_all(self) -> None:
        started = time.monotonic()
        reconciler = self._make_reconciler(self.settings, lambda: time.monotonic() - started > STOP_GRACE)
        result = reconciler.cycle(purge=True)
        self.log.info("deregistered_on_stop", deregistered=result.applied["deregister"], error=str(result.error) if result.error else None)
