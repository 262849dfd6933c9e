"""Prometheus metrics and ``/healthz`` for ``jailsyncd run`` (optional: ``[metrics] listen``).

Called by ``daemon``: ``record(result)`` after every cycle, ``start``/``stop`` around
the daemon's life; by ``cli`` (``watch``), which also makes the health loop report
every round here (``record_health_round``). Drift is counted when it appears
(``summary.new_drift``), not in every cycle that still finds it. The only module that imports prometheus_client. Metrics live in a
registry of their own, so tests and reloads never collide with global state.

``/healthz`` is about the process itself: 200 while the reconcile worker thread is
alive, 503 once it is not. Whether Consul or CBSD are reachable shows in the metrics
(``jailsyncd_errors_total``, ``jailsyncd_last_success_timestamp_seconds``), not here:
a supervisor must not restart jailsyncd because Consul is down.

The listener serves up to ``MAX_CONNECTIONS`` connections at once, each in a thread
of its own and each cut after ``CONNECTION_DEADLINE`` seconds whatever it does, so
a client that connects and says nothing (or trickles its request) never stalls
``/healthz`` for the supervisor. With every slot taken, a new client gets a 503 at
once. Any path but ``/metrics`` and ``/healthz`` is a 404.
"""

from __future__ import annotations

import contextlib
import io
import socket
import socketserver
import threading
import time
from typing import Callable
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.parser import text_string_to_metric_families

from jailsyncd import __version__
from jailsyncd.errors import ConfigError, ConsulError, ConsulRefused, DaemonUnreachable
from jailsyncd.reconcile import CycleResult
from jailsyncd.settings import split_listen
from jailsyncd.summary import drift_found, drift_streaks, new_drift, summarise


#: Connections served at once; one more gets a 503.
MAX_CONNECTIONS = 16
#: Seconds a connection may last in all (reading the request, answering it).
CONNECTION_DEADLINE = 5.0

_BUSY = b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 5\r\nConnection: close\r\n\r\nbusy\n"


class _QuietHandler(WSGIRequestHandler):
    #: A socket timeout for each read and write; the connection's deadline bounds the sum.
    timeout = CONNECTION_DEADLINE

    def log_message(self, *args) -> None:  # scrapes are not worth a log line each
        pass

    def get_stderr(self):  # wsgiref would print tracebacks there, into the JSON log
        return io.StringIO()


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    """A WSGI server with a thread per connection, at most ``MAX_CONNECTIONS`` of them,
    each shut down once it is older than ``CONNECTION_DEADLINE``."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], family: int) -> None:
        self.address_family = family
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._open: dict[socket.socket, float] = {}
        self._open_lock = threading.Lock()
        super().__init__(address, _QuietHandler)

    def process_request(self, request, client_address) -> None:
        if not self._slots.acquire(blocking=False):
            self._refuse(request)
            return
        with self._open_lock:
            self._open[request] = time.monotonic() + CONNECTION_DEADLINE
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._done(request)
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._done(request)

    def _done(self, request) -> None:
        with self._open_lock:
            self._open.pop(request, None)
        self._slots.release()

    def _refuse(self, request) -> None:
        """Every slot is taken: read what the client sent so far (briefly, so that closing
        does not reset the connection under our answer), answer 503, close."""
        with contextlib.suppress(OSError):
            request.settimeout(0.2)
            request.recv(65536)
        with contextlib.suppress(OSError):
            request.sendall(_BUSY)
        self.shutdown_request(request)

    def service_actions(self) -> None:
        """Called by ``serve_forever`` between polls (every 0.5 s): cut overdue connections.
        shutdown(2) wakes the handler thread blocked on the socket; close(2) would not."""
        now = time.monotonic()
        with self._open_lock:
            overdue = [sock for sock, deadline in self._open.items() if deadline <= now]
        for sock in overdue:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request, client_address) -> None:
        pass  # a client that went away or ran out of time: nothing to report


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.cycles = Counter("jailsyncd_cycles", "Reconcile cycles run, by result (ok, failed, crashed; skipped: nothing changed on either side, nothing read).", ["result"], registry=r)
        self.duration = Histogram(
            "jailsyncd_cycle_duration_seconds", "Wall time of reconcile cycles.", registry=r,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        self.actions = Counter("jailsyncd_actions", "Changes applied to Consul, by action.", ["action"], registry=r)
        self.drift = Counter(
            "jailsyncd_drift",
            "Drift that appeared (counted once, when a cycle first finds it), by kind: missing, changed, orphan, refused, or a skip reason (conflict, unaddressable...).",
            ["kind"],
            registry=r,
        )
        #: The drift the last planned cycle found (``summary.drift_found``).
        self._drift_seen: frozenset = frozenset()
        self.errors = Counter("jailsyncd_errors", "Failed cycles and actions, by error class.", ["kind"], registry=r)
        self.last_success = Gauge("jailsyncd_last_success_timestamp_seconds", "Unix time of the last cycle without error.", registry=r)
        self.managed = Gauge("jailsyncd_managed_services", "Services this host owns in Consul after the last cycle.", registry=r)
        self._state_gauges(r)
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        self._alive: Callable[[], bool] = lambda: False

    def record(self, result: CycleResult) -> None:
        self._record_state(result)
        self.duration.observe(result.duration)
        if result.plan is not None:
            found = drift_found(result.plan)
            for kind, count in new_drift(self._drift_seen, found).items():
                self.drift.labels(kind).inc(count)
            self._drift_seen = found
        if result.error is not None:
            self.cycles.labels("failed").inc()
            self.errors.labels(type(result.error).__name__).inc()
            return
        self.cycles.labels("ok").inc()
        for exc in result.failures:
            self.errors.labels(type(exc).__name__).inc()
        for action, count in result.applied.items():
            if count:
                self.actions.labels(action).inc(count)
        if result.plan is None:
            return
        if not result.failures:
            self.last_success.set(time.time())
        self.managed.set(result.managed)

    # -- the state after the last cycle: gauges for ``jailsyncd status`` and alerts ------

    def _state_gauges(self, r: CollectorRegistry) -> None:
        G = Gauge
        G("jailsyncd_build_info", "Always 1; the version label is jailsyncd's version.", ["version"], registry=r).labels(__version__).set(1)
        G("jailsyncd_start_time_seconds", "Unix time the daemon started.", registry=r).set(time.time())
        self.last_cycle = G("jailsyncd_last_cycle_timestamp_seconds", "Unix time the last cycle ended, whatever its result.", registry=r)
        self.last_duration = G("jailsyncd_last_cycle_duration_seconds", "Wall time of the last cycle.", registry=r)
        self.last_actions = G("jailsyncd_last_cycle_actions", "Changes the last cycle applied to Consul, by action.", ["action"], registry=r)
        self.last_errors = G(
            "jailsyncd_last_cycle_errors", "Errors of the last cycle, by error class (the cycle's own error or failed actions).", ["kind"], registry=r
        )
        self.consul_up = G(
            "jailsyncd_consul_up", "1 when the last cycle that talked to Consul reached it, 0 when Consul was unreachable or failing; NaN before.", registry=r
        )
        self.consul_up.set(float("nan"))
        self.services = G("jailsyncd_services", "Services this host keeps registered in Consul (desired state of the last cycle), by CBSD kind.", ["kind"], registry=r)
        self.skipped = G("jailsyncd_skipped", "Environments not registered by the last cycle, by CBSD kind and reason (conflict, unaddressable...).", ["kind", "reason"], registry=r)
        self.refused = G("jailsyncd_deregistrations_refused", "Deregistrations the last cycle refused (an empty jails table, or a burst two reads disagree on).", registry=r)
        self.unconfirmed = G(
            "jailsyncd_deregistrations_unconfirmed",
            "Deregistrations above sync.max_deregistrations waiting for a confirming read (sync.confirm_after); lasting means no two reads agree.",
            registry=r,
        )
        self.pending = G("jailsyncd_drift_pending", "Drift items (missing, changed, orphan) the last cycle found.", registry=r)
        self.repeated = G(
            "jailsyncd_drift_repeated_cycles", "Consecutive cycles in which the same drift (one service, one kind) was found; 0 when there is none.", registry=r
        )
        self._streaks: dict = {}
        self.sync_interval = G("jailsyncd_sync_interval_seconds", "sync.interval in force.", registry=r)

    def watch(self, settings: Callable, health=None) -> None:
        """Values read at scrape time: ``settings()`` returns the settings in force
        (they change on reload), ``health`` is the daemon's ``HealthLoop`` or None.
        The health gauges exist only with health on, so that alerts on them never
        see a health-off host as one whose rounds stopped."""
        self.sync_interval.set_function(lambda: settings().sync.interval)
        if health is None:
            return
        G, r = Gauge, self.registry
        checks = G("jailsyncd_health_checks", "Ping checks by the status jailsyncd holds for them.", ["status"], registry=r)
        for status in ("passing", "critical"):
            checks.labels(status).set_function(lambda status=status: health.count(status))
        G("jailsyncd_health_interval_seconds", "health.interval in force.", registry=r).set_function(lambda: settings().health.interval)
        G("jailsyncd_health_last_round_timestamp_seconds", "Unix time the last health round ended; 0 before.", registry=r).set_function(
            lambda: health.last_round_at or 0.0
        )
        G("jailsyncd_health_last_round_duration_seconds", "Wall time of the last health round; 0 before.", registry=r).set_function(
            lambda: health.last_round_duration or 0.0
        )
        G("jailsyncd_health_rate_limit", "Echo requests per second in force (health.rate_limit or the platform's); 0: no limit.", registry=r).set_function(
            lambda: health.rate
        )
        G(
            "jailsyncd_health_round_over_interval", "1 when the last health round could not fit in health.interval at the rate limit.", registry=r
        ).set_function(lambda: 1.0 if health.last_pace is not None and not health.last_pace.fits else 0.0)
        G("jailsyncd_health_probe_errors", "Failures of the prober itself since start; the probes concerned kept their status.", registry=r).set_function(
            lambda: health.probe_errors
        )
        # Counted as rounds end (``HealthLoop.on_round``), like the cycle metrics.
        self.health_rounds = Counter("jailsyncd_health_rounds", "Health rounds run, by result (ok; failed: Consul could not be written).", ["result"], registry=r)
        self.health_duration = Histogram(
            "jailsyncd_health_round_duration_seconds", "Wall time of health rounds (probing and writing), failed ones included.", registry=r,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        self.health_probes = Counter("jailsyncd_health_probes", "Probes of health rounds that got a result, by result (ok, failed).", ["result"], registry=r)
        self.health_writes = Counter("jailsyncd_health_writes", "Check statuses health rounds wrote to Consul.", registry=r)
        self.health_write_failures = Counter(
            "jailsyncd_health_write_failures", "Check writes of health rounds Consul refused, each alone (the round went on; retried next round).", registry=r
        )
        for result in ("ok", "failed"):
            self.health_rounds.labels(result)
            self.health_probes.labels(result)
        health.on_round = self.record_health_round

    def record_health_round(self, stats, duration: float) -> None:
        """After each scheduled health round: its ``RoundStats``, or None when it failed."""
        self.health_duration.observe(duration)
        if stats is None:
            self.health_rounds.labels("failed").inc()
            return
        self.health_rounds.labels("ok").inc()
        self.health_probes.labels("ok").inc(stats.probes_ok)
        self.health_probes.labels("failed").inc(stats.probes_failed)
        self.health_writes.inc(stats.writes)
        self.health_write_failures.inc(stats.failed)

    def _record_state(self, result: CycleResult) -> None:
        self.last_cycle.set(time.time())
        self.last_duration.set(result.duration)
        self.last_errors.clear()
        errors = [result.error] if result.error is not None else list(result.failures)
        for exc in errors:
            self.last_errors.labels(type(exc).__name__).inc()
        if result.error is not None and isinstance(result.error, ConsulError):
            # Refused means Consul answered; anything else of the class: it did not.
            self.consul_up.set(1 if isinstance(result.error, ConsulRefused) else 0)
        elif result.error is None:
            self.consul_up.set(1)
        for action, count in result.applied.items():
            self.last_actions.labels(action).set(count if result.error is None else 0)
        if result.error is not None or result.plan is None:
            return
        summary = summarise(result.plan, result.desired.records if result.desired else (), result.state)
        self.services.clear()
        for kind, count in summary.services:
            self.services.labels(kind).set(count)
        self.skipped.clear()
        for (kind, reason), count in summary.skipped:
            self.skipped.labels(kind, reason).set(count)
        self.refused.set(summary.refused)
        self.unconfirmed.set(summary.unconfirmed)
        self.pending.set(len(summary.drift))
        self._streaks = drift_streaks(self._streaks, summary.drift)
        self.repeated.set(max(self._streaks.values(), default=0))

    def record_skipped(self) -> None:
        """A cycle with nothing changed on either side: counted, and, since it follows
        a quiet cycle (a success that left nothing to do), a cycle that ended and a
        success now (the staleness alerts stay quiet while every periodic cycle is
        skipped); the other gauges stay as the last cycle that ran left them."""
        self.cycles.labels("skipped").inc()
        now = time.time()
        self.last_cycle.set(now)
        self.last_success.set(now)

    def record_crash(self) -> None:
        self.cycles.labels("crashed").inc()
        self.errors.labels("crash").inc()

    def start(self, listen: str, alive: Callable[[], bool]) -> None:
        """Serve ``/metrics`` and ``/healthz`` on ``listen``; ``alive`` tells whether the
        reconcile worker runs."""
        if not listen:
            return
        self._alive = alive
        host, port = split_listen(listen)
        metrics_app = make_wsgi_app(self.registry)

        def app(environ, start_response):
            path = environ.get("PATH_INFO")
            if path == "/healthz":
                alive = self._alive()
                start_response("200 OK" if alive else "503 Service Unavailable", [("Content-Type", "text/plain")])
                return [b"ok\n" if alive else b"reconcile worker is not running\n"]
            if path == "/metrics":
                return metrics_app(environ, start_response)
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found: try /metrics or /healthz\n"]

        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            self._server = _Server((host, port), family)
        except OSError as exc:
            raise ConfigError(f"metrics.listen: cannot listen on {listen}: {exc.strerror}") from None
        self._server.set_app(app)
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


def scrape_url(listen: str) -> str:
    """The ``/metrics`` URL of a daemon listening on ``listen``: an unspecified
    address (0.0.0.0, ::) is reached on loopback."""
    host, port = split_listen(listen)
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/metrics"


def read_endpoint(url: str, timeout: float = 3.0) -> list[tuple[str, dict[str, str], float]]:
    """GET a running daemon's metrics (``jailsyncd status``): ``(sample name, labels,
    value)`` for every sample. Raises ``DaemonUnreachable`` naming the URL."""
    import urllib.error
    import urllib.request

    try:
        # The daemon's own endpoint, never through an http_proxy of the environment.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(url, timeout=timeout) as answer:  # noqa: S310 - a URL built from metrics.listen
            text = answer.read(4 * 1024 * 1024).decode("utf-8", errors="replace")
    except urllib.error.HTTPError as exc:
        raise DaemonUnreachable(f"{url}: answered HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DaemonUnreachable(f"{url}: {getattr(reason, 'strerror', None) or reason}") from None
    try:
        return [(s.name, dict(s.labels), s.value) for family in text_string_to_metric_families(text) for s in family.samples]
    except (ValueError, TypeError, IndexError) as exc:
        raise DaemonUnreachable(f"{url}: not Prometheus metrics ({exc})") from None
