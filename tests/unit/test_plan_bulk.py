"""The bulk-deregistration rail (issue 14, item 3; plan docstring, docs/architecture.md
"Safety rails"): more than ``max_deregistrations`` deregistrations are applied under
``run`` only when a second read at least ``sync.confirm_after`` seconds after the first
plans nearly the same ones (they differ by at most ``max_deregistrations``); a read that
disagrees more than that is refused. ``once``/``plan`` (no earlier read) refuse as before."""

from __future__ import annotations

import pytest

from records import agent_record

from jailsyncd.model import Confirmation, Desired, Observed, Pending, Record
from jailsyncd.plan import plan, track_burst


def svc(jail: str) -> Record:
    meta = {"external-source": "cbsd", "jailsyncd-owner": "node1", "cbsd-jname": jail}
    return agent_record(jail, meta=meta)

ALL = [f"j{i:02d}" for i in range(30)]


def ids(names):
    return frozenset(f"jailsyncd-{n}" for n in names)


def bulk(stopped, *, previous=None, age=0.0, after=10.0, limit=10, empty=False, force=False, confirm=True, recent=0):
    """A 30-jail host whose jails ``stopped`` are no longer desired."""
    desired = Desired((), empty_source=empty, records=tuple(svc(j) for j in ALL if j not in stopped))
    observed = Observed(tuple(svc(j) for j in ALL))
    conf = Confirmation(after=after, previous=ids(previous) if previous is not None else None, age=age, recent=recent) if confirm else None
    return plan(desired, observed, max_deregistrations=limit, force=force, confirm=conf)


STOP20 = ALL[:20]


@pytest.mark.parametrize(
    "case, kwargs, outcome",
    [
        ("under the limit: at once", dict(stopped=ALL[:10]), "apply"),
        ("first read of a burst: wait for a confirming read", dict(stopped=STOP20), "confirming"),
        ("confirming read too soon", dict(stopped=STOP20, previous=STOP20, age=4.0), "confirming"),
        ("confirming read agrees", dict(stopped=STOP20, previous=STOP20, age=10.0), "apply"),
        ("agrees within the limit (jails stopped one by one)", dict(stopped=ALL[:22], previous=STOP20[:15], age=12.0), "apply"),
        ("disagrees beyond the limit", dict(stopped=STOP20, previous=ALL[10:30], age=12.0), "refused"),
        ("disagrees beyond the limit, too soon: the wait restarts", dict(stopped=STOP20, previous=ALL[10:30], age=3.0), "confirming"),
        ("no confirmation (once, plan)", dict(stopped=STOP20, confirm=False), "refused"),
        ("confirm_after = 0: bursts refused as before", dict(stopped=STOP20, previous=STOP20, age=99.0, after=0.0), "refused"),
        ("empty jails table: refused even when confirmed", dict(stopped=ALL, previous=ALL, age=60.0, empty=True), "refused"),
        ("force", dict(stopped=STOP20, force=True), "apply"),
        ("limit 0: one deregistration is a burst", dict(stopped=ALL[:1], limit=0), "confirming"),
        ("limit 0: confirmed by an identical read", dict(stopped=ALL[:1], previous=ALL[:1], age=10.0, limit=0), "apply"),
        # Cycles follow events: one burst may be read in steps. What this run applied
        # unconfirmed within the last sync.interval counts towards the limit.
        ("a step of a burst read in steps: over the limit with the recent ones", dict(stopped=ALL[:6], recent=6), "confirming"),
        ("a step that stays within the limit with the recent ones", dict(stopped=ALL[:4], recent=6), "apply"),
        ("a step of a burst, confirmed by the next read", dict(stopped=ALL[:6], previous=ALL[:6], age=10.0, recent=6), "apply"),
        ("recent ones count under run only (once, plan: no history)", dict(stopped=ALL[:4], recent=6, confirm=False), "apply"),
    ],
)
def test_bulk_rule(case, kwargs, outcome):
    stopped = kwargs["stopped"]
    result = bulk(**kwargs)
    if outcome == "apply":
        assert {s.service_id for s in result.deregister} == ids(stopped), case
        assert result.refused == () and result.confirming == () and result.confirm_in == 0, case
    elif outcome == "confirming":
        assert result.deregister == () and result.refused == (), case
        assert {s.service_id for s in result.confirming} == ids(stopped), case
        assert 0 < result.confirm_in <= kwargs.get("after", 10.0), case
        assert all(s.reason != "refused" for s in result.skipped), case
    else:
        assert result.deregister == () and result.confirming == (), case
        assert {s.service_id for s in result.refused} == ids(stopped), case
        assert result.refused_why and [s.reason for s in result.skipped] == ["refused"] * len(stopped), case


def test_confirm_in_counts_from_the_first_read():
    assert bulk(stopped=STOP20, previous=STOP20, age=4.0).confirm_in == pytest.approx(6.0)
    assert bulk(stopped=STOP20).confirm_in == pytest.approx(10.0)


def test_refusal_names_both_counts():
    result = bulk(stopped=STOP20, previous=ALL[10:30], age=12.0)
    assert "20" in result.refused_why and "max_deregistrations=10" in result.refused_why and "12s" in result.refused_why


@pytest.mark.parametrize(
    "pending, burst, result_kind, now, expected",
    [
        (None, frozenset(), "none", 5.0, None),  # no burst: nothing pending
        (None, ids(STOP20), "confirming", 5.0, Pending(ids(STOP20), 5.0)),  # first sight
        (Pending(ids(STOP20[:15]), 1.0), ids(STOP20), "confirming", 5.0, Pending(ids(STOP20), 1.0)),  # agrees: keeps its start
        (Pending(ids(ALL[10:30]), 1.0), ids(STOP20), "confirming", 5.0, Pending(ids(STOP20), 5.0)),  # disagrees: restarts
        (Pending(ids(ALL[10:30]), 1.0), ids(STOP20), "refused", 15.0, Pending(ids(STOP20), 15.0)),  # refused: restarts
        (Pending(ids(STOP20), 1.0), ids(STOP20), "applied", 15.0, None),  # applied: done
    ],
)
def test_track_burst(pending, burst, result_kind, now, expected):
    assert track_burst(pending, burst, applied=result_kind == "applied", now=now, limit=10) == expected


def test_the_plan_reports_its_burst_for_tracking():
    assert bulk(stopped=STOP20).burst == ids(STOP20)
    assert bulk(stopped=ALL[:10]).burst == frozenset()
    assert bulk(stopped=ALL, empty=True).burst == frozenset()  # the empty-table rail, not a burst


# -- the rail over several cycles of one run (reconcile keeps the window) ---------------


def _run_of_30(tmp_path):
    from memory import MemorySource, MemoryStore, jail

    from jailsyncd.reconcile import Reconciler
    from jailsyncd.settings import CbsdSettings, HealthSettings, HostSettings, Settings, SyncSettings

    clock = type("Clock", (), {"now": 1000.0, "__call__": lambda self: self.now})()
    settings = Settings(
        host=HostSettings(name="n1"), cbsd=CbsdSettings(workdir=tmp_path), health=HealthSettings(enabled=False),
        sync=SyncSettings(interval=30.0, max_deregistrations=10, confirm_after=10.0),
    )
    jails = [jail(f"j{i:02d}", i + 1) for i in range(30)]
    source, store = MemorySource(*jails), MemoryStore()
    reconciler = Reconciler(settings, source, store, clock=clock)
    assert reconciler.cycle(reasons=["startup"]).applied["register"] == 30

    def stop(count: int) -> None:
        running = [e for e in source.state.environments if e.status == 1]
        stopped = {e.jname for e in running[:count]}
        source.set(*(jail(e.jname, int(e.jname[1:]) + 1, running=e.jname not in stopped and e.status == 1) for e in source.state.environments))

    return reconciler, store, clock, stop


def test_a_burst_read_in_steps_is_still_a_burst(tmp_path) -> None:
    """Cycles follow CBSD's file events: 20 stops written one by one are read as
    4, 6 and 10 (seen in a daemon test). The third step takes this run past 10
    deregistrations within one sync.interval: it waits for a confirming read."""
    reconciler, store, clock, stop = _run_of_30(tmp_path)
    stop(4)
    assert reconciler.cycle(reasons=["change"]).applied["deregister"] == 4
    clock.now += 1
    stop(6)
    assert reconciler.cycle(reasons=["change"]).applied["deregister"] == 6
    clock.now += 1
    stop(10)
    held = reconciler.cycle(reasons=["change"])
    assert held.applied["deregister"] == 0 and len(held.plan.confirming) == 10 and held.plan.confirm_in == 10.0
    clock.now += 10
    confirmed = reconciler.cycle(reasons=["confirm"])
    assert confirmed.applied["deregister"] == 10 and not confirmed.plan.refused
    assert len(store.services) == 10


def test_steps_further_apart_than_sync_interval_are_not_one_burst(tmp_path) -> None:
    reconciler, _, clock, stop = _run_of_30(tmp_path)
    stop(8)
    assert reconciler.cycle(reasons=["change"]).applied["deregister"] == 8
    clock.now += 31  # older than sync.interval: no longer counted
    stop(8)
    assert reconciler.cycle(reasons=["change"]).applied["deregister"] == 8
