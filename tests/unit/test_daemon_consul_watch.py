"""The daemon's Consul-watch thread over an in-memory ``ports.ConsulWatch``: a change
asks for a cycle (reason ``consul``), a failure backs off with a growing delay (never
a busy loop), the first answer after failures is a kick, and the thread ends when the
daemon stops. The real blocking queries: tests/integration/test_consul_watch.py."""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

import pytest

from jailsyncd import daemon as daemon_module
from jailsyncd.daemon import Daemon
from jailsyncd.errors import ConsulError, ConsulRefused
from jailsyncd.reconcile import CycleResult
from jailsyncd.settings import Settings, load_settings


class IdleReconciler:
    cycles = 0
    owner = "n1"

    def cycle(self, reasons: object = None) -> CycleResult:
        raise AssertionError("no cycle runs in these tests")

    def carry_on(self, previous: object) -> None:
        """A reload hands over the old reconciler's state (nothing to take here)."""


class ScriptedWatch:
    """Answers from ``script`` (True/False, or an exception to raise), one per call;
    stops the daemon when it runs out."""

    def __init__(self, daemon_stop: threading.Event, *script: object) -> None:
        self.script = list(script)
        self.stop = daemon_stop
        self.calls = 0
        self.generation = 0
        self.healthy = False
        self.owners: list[str] = []

    def wait_change(self, owner: str, timeout: float | None = None) -> bool:
        self.calls += 1
        self.owners.append(owner)
        if not self.script:
            self.stop.set()
            return False
        step = self.script.pop(0)
        if isinstance(step, Exception):
            self.healthy = False
            raise step
        self.healthy = True
        if step:
            self.generation += 1
        return bool(step)


def settings() -> Settings:
    s = load_settings(None, env={})
    return replace(s, host=replace(s.host, name="n1"))


@pytest.fixture
def fast(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The thread's waits, recorded and shortened to nothing."""
    waits: list[float] = []
    monkeypatch.setattr(daemon_module, "WATCH_MIN_GAP", 0.0)
    return waits


def run(daemon: Daemon, waits: list[float]) -> None:
    real = daemon._stop.wait

    def wait(timeout: float | None = None) -> bool:
        if timeout:
            waits.append(timeout)
        return real(0)

    daemon._stop.wait = wait  # type: ignore[method-assign]
    thread = threading.Thread(target=daemon._consul_watch)
    thread.start()
    thread.join(5)
    assert not thread.is_alive(), "the thread did not end when the daemon stopped"


def test_a_change_asks_for_a_cycle_with_reason_consul(tmp_path: Path, fast: list[float]) -> None:
    daemon = Daemon(settings(), lambda s, stop: IdleReconciler(), settings)
    daemon.watch = watch = ScriptedWatch(daemon._stop, True, False, False)
    run(daemon, fast)
    assert daemon._wanted.is_set() and daemon._reasons == {"consul"}
    assert not daemon._kicked.is_set()  # no failed cycle to cut short: a request, not a kick
    assert watch.owners[0] == "n1"


def test_failures_back_off_and_the_first_answer_after_them_is_a_kick(tmp_path: Path, fast: list[float]) -> None:
    daemon = Daemon(settings(), lambda s, stop: IdleReconciler(), settings)
    down = ConsulError("GET /v1/catalog/node-services/x: cannot connect")
    daemon.watch = ScriptedWatch(daemon._stop, *([down] * 6), True)
    daemon.failures = 2  # the worker is waiting to retry
    run(daemon, fast)
    assert fast[:6] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]  # grows, capped at WATCH_BACKOFF_MAX
    assert daemon._kicked.is_set() and daemon._reasons == {"consul"}


def test_a_refusal_waits_the_longest_delay_at_once(tmp_path: Path, fast: list[float]) -> None:
    daemon = Daemon(settings(), lambda s, stop: IdleReconciler(), settings)
    daemon.watch = ScriptedWatch(daemon._stop, ConsulRefused("no node:read"), ConsulRefused("no node:read"))
    run(daemon, fast)
    assert fast[:2] == [daemon_module.WATCH_BACKOFF_MAX] * 2
    assert not daemon._wanted.is_set()


def test_off_or_without_an_owner_the_watch_is_not_asked(tmp_path: Path, fast: list[float]) -> None:
    off = replace(settings(), sync=replace(settings().sync, watch_consul=False))
    daemon = Daemon(off, lambda s, stop: IdleReconciler(), lambda: off)
    watch = daemon.watch = ScriptedWatch(daemon._stop, True)
    timer = threading.Timer(0.2, daemon._stop.set)
    timer.start()
    run(daemon, fast)
    assert watch.calls == 0 and not daemon._wanted.is_set()


class SlowFirstAnswer:
    """A watch whose first answer (the baseline) comes only after ``delay``; every
    later call blocks until the daemon stops, like a blocking query with no change."""

    def __init__(self, daemon_stop: threading.Event, delay: float) -> None:
        self.stop = daemon_stop
        self.delay = delay
        self.generation = 0
        self.healthy = False
        self.calls = 0

    def wait_change(self, owner: str, timeout: float | None = None) -> bool:
        self.calls += 1
        if self.calls == 1:
            self.stop.wait(self.delay)
            self.healthy, self.generation = True, self.generation + 1
            return True
        self.stop.wait(5)
        return False


def test_the_start_up_cycle_reads_consul_after_the_watch_s_first_answer(tmp_path: Path) -> None:
    """With the owner known at start (host.name), the start-up cycle waits (up to
    WATCH_BASELINE_WAIT) for the watch's first answer, its baseline, before it reads
    Consul: a read made before it would be taken as stale the moment the answer
    comes, and the next cycle would read everything again instead of being skipped."""
    from memory import MemorySource, MemoryStore, jail

    from jailsyncd.reconcile import Reconciler

    s = settings()
    source, store = MemorySource(jail("a", 1)), MemoryStore()
    watch = None

    def make(st: Settings, stop: object) -> Reconciler:
        return Reconciler(st, source, store, should_stop=stop, watch=watch)  # type: ignore[arg-type]

    daemon = Daemon(s, make, lambda: s)
    watch = daemon.watch = SlowFirstAnswer(daemon._stop, 0.3)
    daemon._reconciler = make(s, daemon._stop.is_set)
    threads = [threading.Thread(target=daemon._worker), threading.Thread(target=daemon._consul_watch)]
    for t in threads:
        t.start()
    daemon.request("startup")
    try:
        deadline = threading.Event()
        for _ in range(100):  # poll up to 5 s for the start-up cycle
            if daemon._reconciler._consul is not None:
                break
            deadline.wait(0.05)
        read = daemon._reconciler._consul
        assert read is not None, "the start-up cycle did not run"
        assert read.generation == 1, "Consul was read before the watch's baseline answer"
    finally:
        daemon._stop.set()
        daemon._wanted.set()
        for t in threads:
            t.join(6)
