"""The daemon's backoff wait (issue 14, item 2): after a failed cycle the wait ends as
soon as Consul answers again (a cheap probe), or any request for a cycle comes (kick,
DB change, the periodic tick), else after the backoff delay.

Orchestration tested with in-memory implementations of our own interfaces: a
reconciler whose cycles fail until told otherwise, and a probe function. The worker
loop runs in the test's thread on a virtual clock (``VirtualTime``: the daemon's
``clock`` and ``wait`` seams), so a 32 s backoff takes milliseconds and what happens
at which second is exact, not a matter of the machine's load."""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path
from typing import Callable

from jailsyncd.daemon import PROBE_EVERY, Daemon
from jailsyncd.errors import ConsulError, SourceMissing
from jailsyncd.reconcile import CycleResult
from jailsyncd.settings import load_settings

#: A virtual time that runs away means the worker waits without end: give up there.
GIVE_UP_AFTER = 3600.0


class VirtualTime:
    """A clock and an event wait for the daemon's worker: a wait advances the clock by
    its timeout, running on the way the actions scheduled with ``at`` (a request, a
    healed Consul, a stop); it returns early, at that virtual moment, if one of them
    sets the event."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.waits = 0
        self._actions: list[tuple[float, int, Callable[[], None]]] = []

    def clock(self) -> float:
        return self.now

    def at(self, when: float, action: Callable[[], None]) -> None:
        self._actions.append((when, len(self._actions), action))
        self._actions.sort()

    def wait(self, event: threading.Event, timeout: float) -> bool:
        self.waits += 1
        assert timeout >= 0 and self.now < 1000.0 + GIVE_UP_AFTER, "the worker never stopped"
        if event.is_set():
            return True
        until = self.now + timeout
        while self._actions and self._actions[0][0] <= until:
            when, _, action = self._actions.pop(0)
            self.now = max(self.now, when)
            action()
            if event.is_set():
                return True
        self.now = until
        return event.is_set()


class FailingReconciler:
    """Cycles fail with ``error`` until ``healed``; records when each cycle ran."""

    def __init__(self, error: Exception, clock: Callable[[], float]) -> None:
        self.error = error
        self.healed = False
        self.cycles = 0
        self.times: list[float] = []
        self._clock = clock

    def cycle(self, reasons: object = None) -> CycleResult:
        self.cycles += 1
        self.times.append(self._clock())
        result = CycleResult(self.cycles)
        if not self.healed:
            result.error = self.error
        return result


class Probe:
    """Whether Consul answers (``up``); records when it was asked. Past ``limit`` calls
    it stops the daemon: a probe loop without a wait must end the test, not hang it."""

    def __init__(self, clock: Callable[[], float], limit: int = 1000) -> None:
        self.up = False
        self.calls: list[float] = []
        self.daemon: Daemon | None = None
        self._clock = clock
        self._limit = limit

    def __call__(self, _consul) -> bool:
        self.calls.append(self._clock())
        if len(self.calls) > self._limit and self.daemon is not None:
            self.daemon.stop()
        return self.up


def start(tmp_path: Path, vt: VirtualTime, error: Exception, probe: Probe | None, backoff_max: float = 60.0) -> tuple[Daemon, FailingReconciler]:
    settings = load_settings(None, env={})
    settings = replace(settings, sync=replace(settings.sync, backoff_max=backoff_max), cbsd=replace(settings.cbsd, workdir=tmp_path))
    reconciler = FailingReconciler(error, vt.clock)
    daemon = Daemon(settings, lambda s, stop: reconciler, lambda: settings, probe=probe, clock=vt.clock, wait=vt.wait)
    if probe is not None:
        probe.daemon = daemon
    return daemon, reconciler


def drive_up(daemon: Daemon, failures: int) -> None:
    """``failures - 1`` failed cycles, then a request: the worker's first cycle is the
    ``failures``-th failure, at the current virtual moment, and its wait is long."""
    for _ in range(failures - 1):
        daemon.run_requested()
    assert daemon.failures == failures - 1
    daemon.request("startup")


def test_consul_answering_again_ends_a_long_wait(tmp_path: Path) -> None:
    vt = VirtualTime()
    probe = Probe(vt.clock)
    daemon, reconciler = start(tmp_path, vt, ConsulError("GET /v1/catalog/nodes: cannot connect"), probe)
    drive_up(daemon, 6)  # the wait after the worker's first cycle is 32 s
    t0 = vt.now
    seen: dict[str, float] = {}

    def consul_returns() -> None:
        assert reconciler.cycles == 6, "no retry while Consul does not answer"
        assert len(probe.calls) >= 2, "the wait probes"
        seen["back"] = vt.now
        reconciler.healed = True
        probe.up = True

    vt.at(t0 + 3 * PROBE_EVERY + 0.2, consul_returns)
    vt.at(t0 + 3 * PROBE_EVERY + 0.2 + PROBE_EVERY + 3 * PROBE_EVERY, daemon.stop)
    daemon._worker()
    assert daemon.failures == 0 and reconciler.cycles == 7
    back = seen["back"]
    assert reconciler.times[-1] - back <= PROBE_EVERY + 0.3
    recovered = reconciler.times[-1]
    assert vt.now - recovered >= 3 * PROBE_EVERY
    assert [t for t in probe.calls if t > recovered] == [], "no probing once cycles succeed"


def test_probes_are_rate_limited(tmp_path: Path) -> None:
    vt = VirtualTime()
    probe = Probe(vt.clock)
    daemon, reconciler = start(tmp_path, vt, ConsulError("unreachable"), probe)
    drive_up(daemon, 6)
    t0 = vt.now
    vt.at(t0 + 2.0, daemon.stop)
    daemon._worker()
    assert reconciler.cycles == 6 and reconciler.times[-1] == t0
    window = [t for t in probe.calls if t0 <= t <= t0 + 2.0]
    assert len(window) >= 2, "the wait probes"
    assert len(window) <= 2.0 / PROBE_EVERY + 1


def test_the_periodic_cycle_ends_the_wait(tmp_path: Path) -> None:
    vt = VirtualTime()
    daemon, reconciler = start(tmp_path, vt, SourceMissing("local.sqlite: not found"), Probe(vt.clock))
    drive_up(daemon, 6)  # a 32 s wait, not probing
    t0 = vt.now
    asked = t0 + 1.0
    vt.at(asked, lambda: daemon.request("interval"))  # what APScheduler's interval job does
    vt.at(asked + 2.0, daemon.stop)
    daemon._worker()
    assert reconciler.cycles == 7
    assert asked <= reconciler.times[-1] <= asked + 2.0


def test_a_source_failure_does_not_probe_consul(tmp_path: Path) -> None:
    vt = VirtualTime()
    probe = Probe(vt.clock)
    probe.up = True
    daemon, reconciler = start(tmp_path, vt, SourceMissing("local.sqlite: not found"), probe)
    drive_up(daemon, 4)
    t0 = vt.now
    vt.at(t0 + 3 * PROBE_EVERY, daemon.stop)
    daemon._worker()
    assert probe.calls == [] and reconciler.cycles == 4
    assert vt.now >= t0 + 3 * PROBE_EVERY


def test_the_backoff_delay_ends_the_wait(tmp_path: Path) -> None:
    """Nothing cuts the wait short: the retry comes when the delay is over, not before."""
    vt = VirtualTime()
    daemon, reconciler = start(tmp_path, vt, SourceMissing("local.sqlite: not found"), None)
    drive_up(daemon, 3)  # a 4 s wait
    t0 = vt.now
    vt.at(t0 + 4.0 + 0.25, daemon.stop)
    daemon._worker()
    assert reconciler.times[-2:] == [t0, t0 + 4.0]
