"""Prometheus metrics and ``/healthz`` for ``jailsyncd run`` (optional: ``[metrics] listen``).

Called by ``daemon``: ``record(result)`` after every cycle, ``start``/``stop`` around
the daemon's life. The only module that imports prometheus_client. Metrics live in a
registry of their own, so tests and reloads never collide with global state.

``/healthz`` is about the process itself: 200 while the reconcile worker thread is
alive, 503 once it is not. Whether Consul or CBSD are reachable shows in the metrics
(``jailsyncd_errors_total``, ``jailsyncd_last_success_timestamp_seconds``), not here:
a supervisor must not restart jailsyncd because Consul is down.
"""

from __future__ import annotations

import threading
import time
from typing import Callable
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app

from jailsyncd.errors import ConfigError
from jailsyncd.reconcile import CycleResult
from jailsyncd.settings import split_listen


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, *args) -> None:  # scrapes are not worth a log line each
        pass


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.cycles = Counter("jailsyncd_cycles", "Reconcile cycles run, by result (ok, failed, crashed).", ["result"], registry=r)
        self.duration = Histogram(
            "jailsyncd_cycle_duration_seconds", "Wall time of reconcile cycles.", registry=r,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        self.actions = Counter("jailsyncd_actions", "Changes applied to Consul, by action.", ["action"], registry=r)
        self.drift = Counter("jailsyncd_drift", "Drift found, by kind (missing, changed, orphan, refused, conflict, unaddressable).", ["kind"], registry=r)
        self.errors = Counter("jailsyncd_errors", "Failed cycles and actions, by error class.", ["kind"], registry=r)
        self.last_success = Gauge("jailsyncd_last_success_timestamp_seconds", "Unix time of the last cycle without error.", registry=r)
        self.managed = Gauge("jailsyncd_managed_services", "Services this host owns in Consul after the last cycle.", registry=r)
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        self._alive: Callable[[], bool] = lambda: False

    def record(self, result: CycleResult) -> None:
        self.duration.observe(result.duration)
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
        plan = result.plan
        if plan is None:
            return
        for kind, count in (
            ("missing", len(plan.register)),
            ("changed", len(plan.update)),
            ("orphan", len(plan.deregister)),
            ("refused", len(plan.refused)),
            ("conflict", sum(1 for s in plan.skipped if s.reason == "conflict")),
            ("unaddressable", sum(1 for s in plan.skipped if s.reason == "unaddressable")),
        ):
            if count:
                self.drift.labels(kind).inc(count)
        if not result.failures:
            self.last_success.set(time.time())
        self.managed.set(result.managed)

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
            if environ.get("PATH_INFO") == "/healthz":
                alive = self._alive()
                start_response("200 OK" if alive else "503 Service Unavailable", [("Content-Type", "text/plain")])
                return [b"ok\n" if alive else b"reconcile worker is not running\n"]
            return metrics_app(environ, start_response)

        try:
            self._server = make_server(host, port, app, handler_class=_QuietHandler)
        except OSError as exc:
            raise ConfigError(f"metrics.listen: cannot listen on {listen}: {exc.strerror}") from None
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
