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
