"""Work in proportion to what changed (issue 13, target 3), over in-memory ports: a
``run`` cycle asked for by the periodic tick or a change feed skips everything when
neither side changed, reuses the last read of Consul when only CBSD changed, and
reads both sides whenever it cannot tell (kick, reload, confirm, retry, the watch
down, a failed or writing cycle, the resync safety net)."""

from __future__ import annotations

from pathlib import Path

import pytest
from memory import MemorySource, MemoryStore, MemoryWatch, jail

from jailsyncd.errors import SourceLocked
from jailsyncd.leases import Discovered
from jailsyncd.reconcile import Reconciler
from jailsyncd.settings import CbsdSettings, HealthSettings, HostSettings, Settings, SyncSettings


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def setup(tmp_path: Path, *jails, resync: float = 300.0):
    settings = Settings(
        host=HostSettings(name="n1"),
        cbsd=CbsdSettings(workdir=tmp_path),
        sync=SyncSettings(resync=resync),
        health=HealthSettings(enabled=False),
    )
    source, store, watch, clock = MemorySource(*jails), MemoryStore(), MemoryWatch(), Clock()
    reconciler = Reconciler(settings, source, store, watch=watch, clock=clock)
    assert reconciler.cycle(reasons=["startup"]).writes == len(jails)  # registers
    assert reconciler.cycle(reasons=["consul"]).writes == 0  # the agent synced our writes: a quiet cycle
    return reconciler, source, store, watch, clock


def test_a_no_op_periodic_cycle_reads_nothing(tmp_path: Path) -> None:
    reconciler, source, store, _, _ = setup(tmp_path, jail("a", 1), jail("b", 2))
    reads, requests = source.reads, store.requests
    result = reconciler.cycle(reasons=["interval"])
    assert result.skipped and result.ok and result.plan is None
    assert (source.reads, store.requests) == (reads, requests)
    assert result.cycle == reconciler.cycles


def test_the_watch_moving_makes_the_next_cycle_read_consul(tmp_path: Path) -> None:
    reconciler, _, store, watch, _ = setup(tmp_path, jail("a", 1))
    del store.services["jailsyncd-a"]  # removed by hand; the watch saw it
    watch.generation += 1
    result = reconciler.cycle(reasons=["consul"])
    assert not result.skipped and not result.consul_cached
    assert result.applied["register"] == 1 and "jailsyncd-a" in store.services


def test_a_cbsd_change_reuses_the_last_read_of_consul(tmp_path: Path) -> None:
    reconciler, source, store, _, _ = setup(tmp_path, jail("a", 1), jail("b", 2))
    requests = store.requests
    source.set(jail("a", 1), jail("b", 2), jail("c", 3))
    result = reconciler.cycle(reasons=["change"])
    assert result.consul_cached and not result.skipped
    assert store.applied[-1] == ("register", "jailsyncd-c")
    assert store.requests - requests == 1  # the write alone: no read of Consul
    # It wrote: the next cycle reads Consul again, then quiet ones skip.
    assert not reconciler.cycle(reasons=["interval"]).consul_cached
    assert reconciler.cycle(reasons=["interval"]).skipped


@pytest.mark.parametrize("reason", ["kick", "signal", "reload", "confirm", "retry", "startup", "startup_grace_ended"])
def test_explicit_reasons_always_read_both_sides(tmp_path: Path, reason: str) -> None:
    reconciler, source, store, _, _ = setup(tmp_path, jail("a", 1))
    reads, requests = source.reads, store.requests
    result = reconciler.cycle(reasons=["interval", reason])
    assert not result.skipped and not result.consul_cached
    assert (source.reads - reads, store.requests - requests) == (1, 1)


def test_no_reasons_is_a_full_cycle(tmp_path: Path) -> None:
    """``once``, ``plan``, ``purge`` and direct callers give no reasons."""
    reconciler, source, store, _, _ = setup(tmp_path, jail("a", 1))
    requests = store.requests
    assert not reconciler.cycle().skipped and store.requests == requests + 1


def test_a_watch_that_is_down_means_full_reads(tmp_path: Path) -> None:
    reconciler, _, store, watch, _ = setup(tmp_path, jail("a", 1))
    watch.healthy = False
    del store.services["jailsyncd-a"]  # a change the watch could not report
    result = reconciler.cycle(reasons=["interval"])
    assert not result.skipped and not result.consul_cached and result.applied["register"] == 1


def test_the_resync_safety_net_reads_consul_again(tmp_path: Path) -> None:
    reconciler, _, store, _, clock = setup(tmp_path, jail("a", 1), resync=300.0)
    del store.services["jailsyncd-a"]  # a change the watch missed
    clock.now += 299
    assert reconciler.cycle(reasons=["interval"]).skipped
    clock.now += 2
    result = reconciler.cycle(reasons=["interval"])
    assert not result.skipped and result.applied["register"] == 1


def test_after_a_failed_cycle_both_sides_are_read(tmp_path: Path) -> None:
    reconciler, source, store, _, _ = setup(tmp_path, jail("a", 1))
    source.fail = SourceLocked("locked")
    assert reconciler.cycle(reasons=["change"]).error is not None
    source.fail = None
    requests = store.requests
    result = reconciler.cycle(reasons=["interval"])
    assert result.ok and not result.skipped and not result.consul_cached and store.requests == requests + 1


def test_a_refused_burst_is_never_skipped(tmp_path: Path) -> None:
    """A cycle that left something waiting on time (a deregistration burst awaiting
    its confirming read, the start-up grace) is not quiet: the next one plans again."""
    reconciler, source, store, _, _ = setup(tmp_path, *(jail(f"j{i}", i + 1) for i in range(12)))
    source.set(jail("j0", 1))  # 11 jails gone: a burst above max_deregistrations (10)
    first = reconciler.cycle(reasons=["change"])
    assert first.plan is not None and first.plan.confirming and first.writes == 0
    assert not reconciler.cycle(reasons=["interval"]).skipped


class MemoryFinder:
    """Address discovery as the reconciler sees it (``ports.AddressFinder``): answers
    ``found`` for every target."""

    def __init__(self) -> None:
        self.found: dict[str, Discovered] = {}
        self.calls = 0

    def discover(self, wanted, now: float) -> dict[str, Discovered]:
        self.calls += 1
        return {t.jname: self.found.get(t.jname, Discovered(detail="no lease")) for t in wanted}


def test_a_skip_asks_address_discovery_again(tmp_path: Path) -> None:
    """A DHCP jail's address comes from discovery, which can change while CBSD does
    not (a new lease): the skip asks discovery again, and a different answer is a
    full cycle that registers the address."""
    settings = Settings(host=HostSettings(name="n1"), cbsd=CbsdSettings(workdir=tmp_path), health=HealthSettings(enabled=False))
    source, store, watch, finder = MemorySource(jail("a", 1), jail("d", 2, "DHCP")), MemoryStore(), MemoryWatch(), MemoryFinder()
    reconciler = Reconciler(settings, source, store, watch=watch, discovery=finder)
    reconciler.cycle(reasons=["startup"])
    reconciler.cycle(reasons=["interval"])
    calls = finder.calls
    assert reconciler.cycle(reasons=["interval"]).skipped and finder.calls == calls + 1
    assert "jailsyncd-d" not in store.services
    finder.found["d"] = Discovered(addresses=("10.0.0.77",), source="dhclient")
    result = reconciler.cycle(reasons=["interval"])
    assert not result.skipped and result.applied["register"] == 1 and store.services["jailsyncd-d"].address == "10.0.0.77"


def test_a_skipped_cycle_keeps_the_staleness_gauges_fresh(tmp_path: Path) -> None:
    """With every periodic cycle skipped for minutes, the alerts on
    ``jailsyncd_last_cycle_timestamp_seconds`` and ``..._last_success_...`` must not
    fire: a skip ends a cycle and follows a success."""
    from jailsyncd.metrics import Metrics

    metrics = Metrics()
    metrics.last_cycle.set(1.0)
    metrics.last_success.set(1.0)
    metrics.record_skipped()
    assert metrics.last_cycle._value.get() > 1.0 and metrics.last_success._value.get() > 1.0
    assert metrics.cycles.labels("skipped")._value.get() == 1
