"""The daemon's backoff wait (issue 14, item 2): after a failed cycle the wait ends as
soon as Consul answers again (a cheap probe), or any request for a cycle comes (kick,
DB change, the periodic tick), else after the backoff delay.

Orchestration tested with in-memory implementations of our own interfaces: a
reconciler whose cycles fail until told otherwise, and a probe function."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from pathlib import Path

from jailsyncd.daemon import PROBE_EVERY, Daemon
from jailsyncd.errors import ConsulError, SourceMissing
from jailsyncd.reconcile import CycleResult
from jailsyncd.settings import load_settings


class FailingReconciler:
    """Cycles fail with ``error`` until ``healed``; records when each cycle ran."""

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.healed = threading.Event()
        self.cycles = 0
        self.times: list[float] = []

    def cycle(self) -> CycleResult:
        self.cycles += 1
        self.times.append(time.monotonic())
        result = CycleResult(self.cycles)
        if not self.healed.is_set():
            result.error = self.error
        return result


class Probe:
    def __init__(self) -> None:
        self.up = threading.Event()
        self.calls: list[float] = []

    def __call__(self, _consul) -> bool:
        self.calls.append(time.monotonic())
        return self.up.is_set()


def start(tmp_path: Path, error: Exception, probe: Probe | None, backoff_max: float = 60.0) -> tuple[Daemon, FailingReconciler]:
    settings = load_settings(None, env={})
    settings = replace(settings, sync=replace(settings.sync, backoff_max=backoff_max), cbsd=replace(settings.cbsd, workdir=tmp_path))
    reconciler = FailingReconciler(error)
    daemon = Daemon(settings, lambda s, stop: reconciler, lambda: settings, probe=probe)
    daemon.worker = threading.Thread(target=daemon._worker, daemon=True)
    daemon.worker.start()
    return daemon, reconciler


def wait_until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def drive_up(daemon: Daemon, reconciler: FailingReconciler, failures: int) -> None:
    """Fail ``failures`` cycles quickly (each kick cuts the wait), so the next wait is long."""
    daemon.request("startup")
    for n in range(1, failures):
        wait_until(lambda: daemon.failures >= n)
        daemon.kick()
    wait_until(lambda: daemon.failures >= failures)


def test_consul_answering_again_ends_a_long_wait(tmp_path: Path) -> None:
    probe = Probe()
    daemon, reconciler = start(tmp_path, ConsulError("GET /v1/catalog/nodes: cannot connect"), probe)
    try:
        drive_up(daemon, reconciler, 6)  # the wait is now 32 s
        before = reconciler.cycles
        time.sleep(3 * PROBE_EVERY)
        assert reconciler.cycles == before, "no retry while Consul does not answer"
        assert len(probe.calls) >= 2, "the wait probes"
        reconciler.healed.set()
        probe.up.set()
        back = time.monotonic()
        wait_until(lambda: daemon.failures == 0, timeout=5)
        assert reconciler.times[-1] - back <= PROBE_EVERY + 0.3
        calls = len(probe.calls)
        time.sleep(3 * PROBE_EVERY)
        assert len(probe.calls) == calls, "no probing once cycles succeed"
    finally:
        daemon.stop()


def test_probes_are_rate_limited(tmp_path: Path) -> None:
    probe = Probe()
    daemon, reconciler = start(tmp_path, ConsulError("unreachable"), probe)
    try:
        drive_up(daemon, reconciler, 6)
        first = len(probe.calls)
        time.sleep(2.0)
        assert len(probe.calls) - first <= 2.0 / PROBE_EVERY + 1
    finally:
        daemon.stop()


def test_the_periodic_cycle_ends_the_wait(tmp_path: Path) -> None:
    daemon, reconciler = start(tmp_path, SourceMissing("local.sqlite: not found"), Probe())
    try:
        drive_up(daemon, reconciler, 6)
        before = reconciler.cycles
        daemon.request("interval")  # what APScheduler's interval job does
        wait_until(lambda: reconciler.cycles > before, timeout=2)
    finally:
        daemon.stop()


def test_a_source_failure_does_not_probe_consul(tmp_path: Path) -> None:
    probe = Probe()
    probe.up.set()
    daemon, reconciler = start(tmp_path, SourceMissing("local.sqlite: not found"), probe)
    try:
        drive_up(daemon, reconciler, 4)
        before = reconciler.cycles
        time.sleep(3 * PROBE_EVERY)
        assert probe.calls == [] and reconciler.cycles == before
    finally:
        daemon.stop()
