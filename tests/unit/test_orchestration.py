"""The loop itself, in milliseconds: ``Reconciler``, ``Daemon`` and ``HealthLoop`` over
in-memory implementations of jailsyncd's own ports (``tests/memory.py``), never a fake
Consul. Covers the apply order, a stop mid-cycle, the backoff and its reset, request
coalescing, a reload that keeps the old settings, and a health round whose write fails.
The same behaviour against a real Consul is in tests/integration (test_daemon,
test_faults_*, test_health_write_path)."""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

from memory import MemoryChecks, MemoryProber, MemorySource, MemoryStore, jail
from structlog.testing import capture_logs

from jailsyncd.daemon import Daemon
from jailsyncd.errors import ConfigError, SourceLocked
from jailsyncd.healthloop import HealthLoop
from jailsyncd.reconcile import EARLY_MIN, Reconciler
from jailsyncd.settings import CbsdSettings, ConsulSettings, HealthSettings, HostSettings, Settings, SyncSettings


def settings(tmp_path: Path, *, health: bool = False, backoff_max: float = 120.0) -> Settings:
    return Settings(
        host=HostSettings(name="n1"),
        cbsd=CbsdSettings(workdir=tmp_path),
        sync=SyncSettings(backoff_max=backoff_max),
        health=HealthSettings(enabled=health, failures_before_critical=1, success_before_passing=1),
    )


def events(logs: list[dict], name: str) -> list[dict]:
    return [e for e in logs if e["event"] == name]


# -- one cycle ------------------------------------------------------------------------


def test_a_cycle_registers_then_updates_then_deregisters(tmp_path: Path) -> None:
    source, store = MemorySource(jail("b", 2), jail("c", 3)), MemoryStore()
    reconciler = Reconciler(settings(tmp_path), source, store)
    assert reconciler.cycle().ok and sorted(store.services) == ["jailsyncd-b", "jailsyncd-c"]
    source.set(jail("b", 2, "10.0.9.2"), jail("a", 1))  # b moved, c gone, a new
    store.applied.clear()
    result = reconciler.cycle()
    assert result.ok and result.applied == {"register": 1, "update": 1, "deregister": 1}
    assert store.applied == [("register", "jailsyncd-a"), ("update", "jailsyncd-b"), ("deregister", "jailsyncd-c")]
    assert (result.requests, result.writes) == (4, 3)  # this cycle's own: one read, three writes
    assert reconciler.cycle().writes == 0  # converged


def test_the_operations_are_separate(tmp_path: Path) -> None:
    """observe and plan write nothing; apply writes exactly the plan."""
    source, store = MemorySource(jail("a", 1)), MemoryStore()
    reconciler = Reconciler(settings(tmp_path), source, store)
    observation = reconciler.observe()
    plan = reconciler.plan(observation)
    assert [s.service_id for s in plan.register] == ["jailsyncd-a"] and store.writes == 0
    applied = reconciler.apply(observation, plan)
    assert applied.count("register") == 1 and not applied.failed and list(store.services) == ["jailsyncd-a"]
    owned = reconciler.observe_owned()
    assert [s.service_id for s in reconciler.purge_plan(owned).deregister] == ["jailsyncd-a"]


def test_a_stop_mid_cycle_abandons_the_rest_and_the_next_cycle_finishes(tmp_path: Path) -> None:
    source, store = MemorySource(*(jail(f"j{n}", n) for n in range(1, 6))), MemoryStore()
    stopping = {"after": 2}
    with capture_logs() as logs:
        reconciler = Reconciler(settings(tmp_path), source, store, should_stop=lambda: len(store.applied) >= stopping["after"])
        result = reconciler.cycle()
    assert len(store.services) == 2 and result.applied["register"] == 2
    assert [e["remaining"] for e in events(logs, "cycle_abandoned")] == [3]
    stopping["after"] = 99
    assert reconciler.cycle().applied["register"] == 3 and len(store.services) == 5


def test_a_rejected_action_fails_alone(tmp_path: Path) -> None:
    source, store = MemorySource(jail("a", 1), jail("b", 2), jail("c", 3)), MemoryStore()
    store.refuse = {"jailsyncd-b"}
    result = Reconciler(settings(tmp_path), source, store).cycle()
    assert not result.ok and result.error is None
    assert [a.service.service_id for a, _ in result.failed] == ["jailsyncd-b"]
    assert sorted(store.services) == ["jailsyncd-a", "jailsyncd-c"]


def test_a_failed_cbsd_read_touches_nothing(tmp_path: Path) -> None:
    source, store = MemorySource(jail("a", 1)), MemoryStore()
    reconciler = Reconciler(settings(tmp_path), source, store)
    assert reconciler.cycle().ok
    source.fail = SourceLocked("local.sqlite: locked")
    result = reconciler.cycle()
    assert isinstance(result.error, SourceLocked) and list(store.services) == ["jailsyncd-a"] and result.requests == 0


# -- the daemon -----------------------------------------------------------------------


def daemon(tmp_path: Path, source: MemorySource, store: MemoryStore, load=None, *, backoff_max: float = 120.0, health=None) -> Daemon:
    first = settings(tmp_path, backoff_max=backoff_max)
    return Daemon(
        first,
        lambda s, should_stop: Reconciler(s, source, store, should_stop=should_stop, quiet_noop=True),
        load or (lambda: first),
        health=health,
    )


def test_backoff_doubles_up_to_its_cap_and_one_success_resets_it(tmp_path: Path) -> None:
    source = MemorySource(jail("a", 1))
    source.fail = SourceLocked("local.sqlite: locked")
    with capture_logs() as logs:
        d = daemon(tmp_path, source, MemoryStore(), backoff_max=5.0)
        delays = []
        for _ in range(5):
            d.request("interval")
            delays.append(d.run_requested())
        source.fail = None
        d.request("retry")
        after = d.run_requested()
    assert delays == [1.0, 2.0, 4.0, 5.0, 5.0] and after == 0.0 and d.failures == 0
    [recovered] = events(logs, "cycle_recovered")
    assert recovered["failed_cycles"] == 5 and recovered["last_error_kind"] == "SourceLocked"
    source.fail = SourceLocked("again")
    d.request("interval")
    assert d.run_requested() == 1.0  # the backoff starts over


def test_under_run_a_refused_action_neither_backs_off_nor_blocks_later_changes(tmp_path: Path) -> None:
    """Issue 10, item 1, under ``run``: a write Consul refuses fails that action on
    every cycle, alone: the daemon does not back off (nothing is wrong with Consul),
    each later cycle applies every other change and tries the refused one again, and
    it lands once Consul takes it."""
    source, store = MemorySource(jail("a", 1), jail("b", 2)), MemoryStore()
    store.refuse = {"jailsyncd-b"}
    d = daemon(tmp_path, source, store)
    with capture_logs() as logs:
        d.request("startup")
        assert d.run_requested() == 0.0 and d.failures == 0
        source.set(jail("b", 2), jail("c", 3))  # a gone, c new; b still refused
        d.request("change")
        assert d.run_requested() == 0.0 and d.failures == 0
        assert sorted(store.services) == ["jailsyncd-c"]
        store.refuse.clear()
        d.request("interval")
        assert d.run_requested() == 0.0
    assert sorted(store.services) == ["jailsyncd-b", "jailsyncd-c"]
    assert [e["jail"] for e in events(logs, "action_failed")] == ["b", "b"]
    assert [e["failed"] for e in events(logs, "cycle_finished")] == [1, 1, 0]
    assert not events(logs, "backoff")


def test_requests_coalesce_into_one_cycle_and_one_during_a_cycle_into_one_more(tmp_path: Path) -> None:
    source = MemorySource(jail("a", 1))
    d = daemon(tmp_path, source, MemoryStore())
    for reason in ("interval", "change", "signal", "change"):
        d.request(reason)
    d.kick("kick")
    d.run_requested()
    assert source.reads == 1 and not d._wanted.is_set()

    begin = source.begin

    def read_and_ask():  # requests while the cycle runs
        for reason in ("change", "interval", "kick"):
            d.request(reason)
        return begin()

    source.begin = read_and_ask  # type: ignore[method-assign]
    d.request("interval")
    d.run_requested()
    source.begin = begin  # type: ignore[method-assign]
    assert d._wanted.is_set()  # exactly one more cycle is wanted...
    d.run_requested()
    assert source.reads == 3 and not d._wanted.is_set()  # ...and then none


def test_a_reload_that_fails_keeps_the_old_settings_whole(tmp_path: Path) -> None:
    source, store = MemorySource(jail("a", 1)), MemoryStore()
    loads: list[object] = [ConfigError("c.toml: sync.interval: must be at least 1s")]
    d = daemon(tmp_path, source, store, load=lambda: _next(loads))
    old, old_reconciler = d.settings, d._reconciler
    with capture_logs() as logs:
        d.log = d.log.bind()  # re-bound under the capture
        d.reload()
        moved = dataclasses.replace(old, consul=ConsulSettings(address="127.0.0.1:8501"), sync=SyncSettings(interval=60.0))
        loads.append(moved)
        d.reload()
    assert d.settings is old and d._reconciler is old_reconciler
    failed = events(logs, "config_reload_failed")
    assert len(failed) == 2 and "sync.interval" in failed[0]["error"] and "consul changed" in failed[1]["error"]


def test_a_reload_reaches_the_reconciler_and_the_health_loop(tmp_path: Path) -> None:
    source, store = MemorySource(jail("a", 1)), MemoryStore()
    health = HealthLoop(HealthSettings(interval=10.0), MemoryProber(set()), MemoryChecks())
    first = settings(tmp_path)
    newer = dataclasses.replace(first, sync=SyncSettings(max_deregistrations=3), health=dataclasses.replace(first.health, interval=20.0))
    d = daemon(tmp_path, source, store, load=lambda: newer, health=health)
    d.settings = first
    d.reload()
    assert d.settings is newer and d._reconciler.settings is newer and health.settings is newer.health


def _next(items: list[object]) -> Settings:
    item = items.pop(0)
    if isinstance(item, Exception):
        raise item
    assert isinstance(item, Settings)
    return item


# -- health ---------------------------------------------------------------------------


def test_a_cycle_hands_its_checks_to_health_and_a_refused_write_is_retried(tmp_path: Path) -> None:
    s = settings(tmp_path, health=True)
    s = dataclasses.replace(s, consul=ConsulSettings(mode="agent"))
    source, store, checks = MemorySource(jail("a", 1), jail("b", 2)), MemoryStore(), MemoryChecks(refuse={"jailsyncd-a:ping"})
    clock = [1000.0]
    health = HealthLoop(s.health, MemoryProber({"10.0.0.1"}), checks, clock=lambda: clock[0])
    reconciler = Reconciler(s, source, store, health=health)
    result = reconciler.cycle()
    assert result.ok and "jailsyncd-a" in store.services
    # Registered with the status probed first (a passing, b critical); the first round
    # writes each check's output once, and the write of a's is refused.
    stats = health.round()
    assert stats.failed == 1 and stats.writes == 1 and checks.written == [("jailsyncd-b:ping", "critical")]
    checks.refuse.clear()
    assert health.round().writes == 1 and checks.written[-1] == ("jailsyncd-a:ping", "passing")  # retried
    assert health.round().writes == 0  # and then left alone


def test_a_newly_refused_check_write_asks_the_daemon_for_one_full_cycle(tmp_path: Path) -> None:
    """A check write Consul refuses for the first time (a check removed by hand, which
    the Consul watch does not see) asks for one cycle with reason ``health``, which
    reads Consul again; the same refusal in the following rounds asks for none, and
    a check refused again after it was written asks again."""
    s = dataclasses.replace(settings(tmp_path, health=True), consul=ConsulSettings(mode="agent"))
    source, store, checks = MemorySource(jail("a", 1)), MemoryStore(), MemoryChecks()
    up = {"10.0.0.1"}
    health = HealthLoop(s.health, MemoryProber(up), checks)
    d = Daemon(s, lambda st, stop: Reconciler(st, source, store, should_stop=stop, health=health), lambda: s, health=health)
    d.run_requested()  # registers a (passing, probed first)
    assert not d._wanted.is_set()
    health.round()
    checks.refuse.add("jailsyncd-a:ping")
    up.clear()  # a stops answering: its status is written, and refused
    for _ in range(s.health.failures_before_critical):
        health.round()
    assert d._wanted.is_set() and d._reasons == {"health"}
    d.run_requested()
    for _ in range(3):
        health.round()  # refused again: no more cycles
    assert not d._wanted.is_set()
    checks.refuse.clear()
    health.round()
    assert ("jailsyncd-a:ping", "critical") in checks.written
    checks.refuse.add("jailsyncd-a:ping")
    up.add("10.0.0.1")
    for _ in range(s.health.success_before_passing):
        health.round()
    assert d._wanted.is_set()


# -- registering while CBSD is read ----------------------------------------------------


def many(count: int, start: int = 1) -> list:
    return [jail(f"j{n:03d}", n % 250 + 1) for n in range(start, start + count)]


def test_a_cold_start_registers_while_reading_each_jail_once(tmp_path: Path) -> None:
    """At least EARLY_MIN new jails: registered through ``register_new`` as CBSD is
    read; each logged once as drift and once as registered; counted once; nothing
    left for the plan, and the next cycle writes nothing."""
    source, store = MemorySource(*many(EARLY_MIN + 9)), MemoryStore()
    with capture_logs() as logs:
        result = Reconciler(settings(tmp_path), source, store).cycle()
    assert result.ok and store.streamed == 1
    assert len(store.services) == EARLY_MIN + 9 and result.applied == {"register": EARLY_MIN + 9, "update": 0, "deregister": 0}
    assert [e["jail"] for e in events(logs, "drift_detected")] == [e["jail"] for e in events(logs, "service_registered")]
    assert Counter(e["jail"] for e in events(logs, "service_registered")) == Counter(f"j{n:03d}" for n in range(1, EARLY_MIN + 10))
    assert [s.service_id for s in result.plan.register] == sorted(store.services)  # the plan still shows the drift
    assert events(logs, "cycle_finished")[0]["registered"] == EARLY_MIN + 9


def test_fewer_new_jails_than_a_transaction_are_written_after_the_read(tmp_path: Path) -> None:
    source, store = MemorySource(*many(EARLY_MIN - 1)), MemoryStore()
    result = Reconciler(settings(tmp_path), source, store).cycle()
    assert result.ok and store.streamed == 0 and len(store.services) == EARLY_MIN - 1


def test_with_health_on_new_jails_wait_for_their_first_probe(tmp_path: Path) -> None:
    """Health on: new checks are probed as one round before they are written, so
    nothing is registered while CBSD is read."""
    source, store = MemorySource(*many(EARLY_MIN + 1)), MemoryStore()
    config = settings(tmp_path, health=True)
    loop = HealthLoop(config.health, MemoryProber({j.ip4_addr or "" for j in many(EARLY_MIN + 1)}), MemoryChecks())
    result = Reconciler(config, source, store, health=loop).cycle()
    assert result.ok and store.streamed == 0 and len(store.services) == EARLY_MIN + 1


def test_only_jails_consul_has_nothing_of_go_early_and_the_rest_follows_the_plan(tmp_path: Path) -> None:
    """An owned service to update and one to deregister go after the read, in the
    plan's order; the new ones went before."""
    source, store = MemorySource(jail("a", 1), jail("z", 2)), MemoryStore()
    reconciler = Reconciler(settings(tmp_path), source, store)
    assert reconciler.cycle().ok
    source.set(jail("a", 1, "10.0.9.1"), *many(EARLY_MIN))  # a moved, z gone, EARLY_MIN new
    store.applied.clear()
    result = reconciler.cycle()
    assert result.ok and store.streamed == 1
    assert result.applied == {"register": EARLY_MIN, "update": 1, "deregister": 1}
    assert store.applied[-2:] == [("update", "jailsyncd-a"), ("deregister", "jailsyncd-z")]
    assert {sid for kind, sid in store.applied[:-2]} == {f"jailsyncd-j{n:03d}" for n in range(1, EARLY_MIN + 1)}


def test_a_registration_refused_early_is_tried_again_by_the_plan_and_reported_once(tmp_path: Path) -> None:
    source, store = MemorySource(*many(EARLY_MIN + 2)), MemoryStore()
    store.refuse = {"jailsyncd-j005"}
    with capture_logs() as logs:
        result = Reconciler(settings(tmp_path), source, store).cycle()
    assert [a.service.service_id for a, _ in result.failed] == ["jailsyncd-j005"]
    assert [e["jail"] for e in events(logs, "action_failed")] == ["j005"]
    assert result.applied["register"] == EARLY_MIN + 1 and "jailsyncd-j005" not in store.services
    assert [e["jail"] for e in events(logs, "drift_detected")].count("j005") == 1


def test_a_stop_while_registering_early_abandons_the_cycle(tmp_path: Path) -> None:
    source, store = MemorySource(*many(EARLY_MIN + 8)), MemoryStore()
    stopping = {"after": 5}
    with capture_logs() as logs:
        reconciler = Reconciler(settings(tmp_path), source, store, should_stop=lambda: len(store.applied) >= stopping["after"])
        result = reconciler.cycle()
    assert len(store.services) == 5 and result.applied["register"] == 5
    assert [e["remaining"] for e in events(logs, "cycle_abandoned")] == [EARLY_MIN + 3]
    stopping["after"] = 999
    assert reconciler.cycle().applied["register"] == EARLY_MIN + 3 and len(store.services) == EARLY_MIN + 8


def test_jails_that_stay_unregistered_do_not_make_every_cycle_a_cold_start(tmp_path: Path) -> None:
    """Running jails that are skipped cycle after cycle (no address, opted out) are
    not new jails: after the first cycle, a change of one jail is written after
    the read, reusing what the last cycle built, not by reading in parts."""
    dhcp = [dataclasses.replace(j, ip4_addr="DHCP") for j in many(EARLY_MIN + 5, start=100)]
    source, store = MemorySource(jail("a", 1), *dhcp), MemoryStore()
    reconciler = Reconciler(settings(tmp_path), source, store)
    assert reconciler.cycle().ok
    first = store.streamed
    source.set(jail("a", 1), jail("b", 2), *dhcp)
    result = reconciler.cycle()
    assert result.ok and result.applied["register"] == 1 and store.streamed == first
