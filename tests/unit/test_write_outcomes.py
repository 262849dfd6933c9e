"""Pure parts of the write path (issue 10, items 1, 2, 3, 6): which Consul answers
fail one action, which services the health loop may write after a cycle, how
``once`` recognises a running daemon's heartbeat, per-check health rounds (with an
in-memory store of OUR interface), and the collision metric."""

from __future__ import annotations

import pytest
from records import service

from jailsyncd.adapters.consul import _rejects_payload
from jailsyncd.adapters.probe import RoundReport
from jailsyncd.errors import ConsulError, ConsulRejected
from jailsyncd.adapters.consul import agent
from jailsyncd.adapters.consul.agent import STANDALONE_MARK, daemon_heartbeat, self_record, standalone_self_record
from jailsyncd.health import PASSING, ProbeResult
from jailsyncd.healthloop import HealthLoop
from jailsyncd.metrics import Metrics
from jailsyncd.model import SELF_CHECK_ID, Desired, Observed, Plan, Record, Skip
from jailsyncd.reconcile import CycleResult, health_services
from jailsyncd.settings import HealthSettings


@pytest.mark.parametrize(
    ("answer", "one_action"),
    [
        # What Consul 1.8.7 answered in the integration tests:
        ('500 Service tagged address "lan_ipv6" must be a valid ipv6 address', True),
        ('500 CheckID "jailsyncd-a:ping" does not have associated TTL', True),
        ('500 Unknown check "jailsyncd-a:ping"', True),
        ('500 Unknown service {"jailsyncd-a" {}}', True),
        ("400 Invalid Service Meta: Couldn't load metadata pair", True),
        ("413 Request body too large", True),
        # Consul itself failing: every later write would fail the same way.
        ("500 No cluster leader", False),
        ("500 rpc error making call: EOF", False),
        ("502 Bad Gateway", False),
        ("503 Service Unavailable", False),
        ("429 Your IP is issuing too many concurrent connections", False),
        ("408 Request Timeout", False),
        ("garbage", False),
    ],
)
def test_which_answers_fail_one_action(answer, one_action):
    assert _rejects_payload(answer) is one_action


def svc(jail: str, probes: tuple[str, ...] = (), meta: dict[str, str] | None = None) -> Record:
    return agent.record_of(service(jail, address="10.0.0.1", port=80, meta={"jailsyncd-owner": "n1", **(meta or {})}, probes=probes))


def test_health_targets_are_the_services_held_in_consul():
    held, new, failed_new, conflict = svc("held"), svc("new"), svc("failednew"), svc("conflict")
    changed = svc("changed", ("tcp",))
    old_changed = svc("changed")  # Consul has ping + alive, not tcp
    desired = Desired((), skipped=(Skip("conflict", "conflict", "..."),), records=(held, new, failed_new, conflict, changed))
    observed = Observed((held, old_changed))
    plan = Plan(register=(new, failed_new, conflict), skipped=desired.skipped)
    out = {s.service_id: s for s in health_services(desired, observed, plan, {"jailsyncd-failednew", "jailsyncd-changed"})}
    assert set(out) == {"jailsyncd-held", "jailsyncd-new", "jailsyncd-changed"}
    assert [c.check_id for c in out["jailsyncd-changed"].checks] == ["jailsyncd-changed:ping"]  # (the alias is not probed)


def test_health_targets_exclude_collisions():
    theirs = svc("x", meta={"cbsd-host": "other"})
    desired = Desired((), skipped=(Skip("x", "collision", "..."),), records=(svc("x"),))
    assert health_services(desired, Observed((theirs,)), Plan(collisions=(theirs,), skipped=desired.skipped), set()) == ()


def observed_heartbeat(notes_of: Record, status: str) -> Observed:
    return Observed((notes_of,), check_status=((SELF_CHECK_ID, status, ""),))


def test_a_running_daemons_heartbeat_is_recognised():
    daemon = self_record("n1", "node1", 30)
    standalone = standalone_self_record(daemon, 3600)
    assert daemon_heartbeat(observed_heartbeat(daemon, PASSING)) == daemon
    assert daemon_heartbeat(observed_heartbeat(daemon, "critical")) is None  # dead (expired)
    assert daemon_heartbeat(observed_heartbeat(standalone, PASSING)) is None  # once's, not a daemon's
    assert daemon_heartbeat(Observed(())) is None
    [spec] = standalone.checks
    [(_, _, notes)] = standalone.value("checks")  # type: ignore[misc]
    assert spec.ttl == 3600 and STANDALONE_MARK in notes and "ttl=3600s" in notes
    assert standalone.value("checks") != daemon.value("checks")  # so the daemon re-registers its own


class Store:
    """An in-memory store for write_checks (our interface): refuses some check IDs,
    or fails as a whole after ``fail_after`` writes (Consul gone)."""

    def __init__(self, refuse=(), fail_after=None):
        self.refuse, self.fail_after, self.written = set(refuse), fail_after, []

    def write_checks(self, writes):
        for write in writes:
            if self.fail_after is not None and len(self.written) >= self.fail_after:
                raise ConsulError("cannot connect")
            if write[0].check_id in self.refuse:
                yield write, ConsulRejected("refused")
                continue
            self.written.append(write[0].check_id)
            yield write, None

    def close(self):
        pass


class Prober:
    """Every probe fails (an in-memory prober: our interface, no socket)."""

    rate = 100.0

    def run(self, probes, count, timeout, rate=None):
        return {p.key: ProbeResult(False, "down") for p in probes}

    def run_round(self, probes, *, count, timeout, rate=None):
        return RoundReport(results=self.run(probes, count, timeout))


def loop(store: Store) -> HealthLoop:
    settings = HealthSettings(failures_before_critical=1)
    health = HealthLoop(settings, Prober(), store, clock=lambda: 1000.0)
    services = (svc("a"), svc("b"), svc("c"))
    health.sync(services, {f"jailsyncd-{j}:ping": PASSING for j in "abc"}, {})
    return health


def test_a_refused_check_write_fails_that_check_only():
    store = Store(refuse={"jailsyncd-a:ping"})
    health = loop(store)
    stats = health.round()
    assert (stats.writes, stats.failed) == (2, 1) and store.written == ["jailsyncd-b:ping", "jailsyncd-c:ping"]
    store.refuse.clear()
    assert health.round().writes == 1 and store.written[-1] == "jailsyncd-a:ping"  # retried next round


def test_consul_gone_mid_round_keeps_what_was_written():
    store = Store(fail_after=1)
    health = loop(store)
    with pytest.raises(ConsulError):
        health.round()
    store.fail_after = None
    health.round()
    assert store.written == ["jailsyncd-a:ping", "jailsyncd-b:ping", "jailsyncd-c:ping"]  # a not written twice


def test_collisions_are_counted_in_metrics():
    """Counted when they appear (drift counts transitions, not states)."""
    metrics = Metrics()
    plan = plan_of(collide=("x", "y"))
    metrics.record(CycleResult(1, plan=plan))
    metrics.record(CycleResult(2, plan=plan))
    assert metrics.registry.get_sample_value("jailsyncd_drift_total", {"kind": "collision"}) == 2


def plan_of(collide: tuple[str, ...]) -> Plan:
    from jailsyncd.plan import plan

    theirs = [svc(j, meta={"cbsd-host": "node2"}) for j in collide]
    return plan(Desired((), host="node1"), Observed(tuple(theirs)), max_deregistrations=10)


def test_the_heartbeat_service_is_not_drift():
    """Issue 10, item 20: registering or updating jailsyncd's own service is not a jail's drift."""
    from jailsyncd.summary import drift_found

    heartbeat = self_record("n1", "node1", 30)
    jail = svc("web1")
    found = drift_found(Plan(register=(heartbeat, jail), deregister=(heartbeat,)))
    assert found == {("missing", "jailsyncd-web1", "")}
