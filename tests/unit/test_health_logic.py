"""The pure health rules: which checks a service gets, the anti-flap state machine,
and which statuses a round writes."""

from __future__ import annotations

import pytest

from jailsyncd.health import CRITICAL, PASSING, CheckState, ProbeResult, Target, Written, advance, decide, jail_checks, pace_of, ping_addresses

OK, BAD = ProbeResult(True, "ok"), ProbeResult(False, "bad")


@pytest.mark.parametrize(
    ("probes", "catalog", "external", "expected"),
    [
        ((), False, False, [("s:ping", "ttl"), ("s:alive", "alias")]),
        (("tcp", "http:/a", "http:/b"), False, False, [("s:ping", "ttl"), ("s:tcp", "ttl"), ("s:http", "ttl"), ("s:http-2", "ttl"), ("s:alive", "alias")]),
        (("tcp",), True, False, [("s:ping", "node"), ("s:tcp", "service")]),
        (("tcp",), True, True, [("s:tcp", "service")]),
        ((), True, True, []),
    ],
)
def test_checks_per_mode(probes, catalog, external, expected) -> None:
    """The core's checks (the ping about the jail itself, one per other probe), as
    each mode writes them: agent mode TTL checks plus the alias on the heartbeat,
    catalog mode node and service checks, no ping of ours with consul-esm."""
    from records import catalog_record, service

    from jailsyncd.adapters.consul.agent import record_of
    from jailsyncd.settings import CatalogSettings

    checks = jail_checks("s", "10.0.0.1", probes, 3600.0)
    assert [c.probe for c in checks] == ["ping", *probes] and [c.on_host for c in checks] == [True] + [False] * len(probes)
    assert len({c.check_id for c in checks}) == len(checks)
    if catalog:
        record = catalog_record("x", probes=probes, settings=CatalogSettings(external_probe=external))
    else:
        record = record_of(service("x", probes=probes))
    triples = record.value("checks")
    want = [(f"jailsyncd-x:{c.removeprefix('s:')}", kind) for c, kind in expected]
    assert sorted((c, k) for c, k, _ in triples) == sorted(want)


@pytest.mark.parametrize(
    ("results", "sbp", "fbc", "statuses"),
    [
        ("BBB", 1, 3, [CRITICAL, CRITICAL, CRITICAL]),  # starts critical (as registered)
        ("OBBOBBB", 1, 3, [PASSING, PASSING, PASSING, PASSING, PASSING, PASSING, CRITICAL]),
        ("OOB", 2, 1, [CRITICAL, PASSING, CRITICAL]),
        ("OBOBO", 2, 2, [CRITICAL] * 5),
    ],
)
def test_anti_flap_state_machine(results: str, sbp: int, fbc: int, statuses: list[str]) -> None:
    state = CheckState(CRITICAL)
    seen = []
    for r in results:
        state = advance(state, OK if r == "O" else BAD, success_before_passing=sbp, failures_before_critical=fbc)
        seen.append(state.status)
    assert seen == statuses


def _target(check_id: str, ttl: float = 100.0) -> Target:
    return Target("j", check_id, "ping", "10.0.0.1", 0, ttl)


@pytest.mark.parametrize(
    ("written", "result", "now", "writes"),
    [
        (Written(PASSING, 0.0), OK, 10.0, 0),  # unchanged, refresh not due
        (Written(PASSING, 0.0), OK, 50.0, 1),  # refresh due at half the TTL
        (Written(CRITICAL, 0.0), OK, 10.0, 1),  # status changed
        (None, OK, 10.0, 1),  # never written
        (Written(PASSING, 0.0), None, 99.0, 0),  # not probed this round: never written
    ],
)
def test_write_decisions(written, result, now, writes) -> None:
    t = _target("c")
    states = {"c": CheckState(PASSING, successes=1)}
    _, out, _ = decide((t,), states, {"c": written} if written else {}, {"c": result} if result else {}, now, success_before_passing=1, failures_before_critical=1)
    assert len(out) == writes


@pytest.mark.parametrize(
    ("addresses", "count", "rate", "seconds", "fits", "needed"),
    [
        (1000, 2, 165, 2000 / 165 + 1, False, 2000 / 9),  # FreeBSD defaults, 1,000 jails
        (500, 2, 165, 1000 / 165 + 1, True, 1000 / 9),
        (1000, 2, 0, 1.0, True, 2000 / 9),  # no limit: one timeout
        (0, 2, 165, 1.0, True, 0.0),
    ],
)
def test_pace_of_a_round(addresses, count, rate, seconds, fits, needed) -> None:
    pace = pace_of(addresses, count=count, rate=rate, timeout=1.0, interval=10.0)
    assert (pace.requests, pace.fits) == (addresses * count, fits)
    assert pace.seconds == pytest.approx(seconds) and pace.needed == pytest.approx(needed)


def test_ping_addresses_counts_each_address_once() -> None:
    targets = (
        Target("a", "a:ping", "ping", "10.0.0.1", 0, 60.0),
        Target("a", "a:tcp", "tcp", "10.0.0.1", 80, 60.0),
        Target("b", "b:ping", "ping", "10.0.0.1", 0, 60.0),  # a shared address is pinged once
        Target("c", "c:ping", "ping", "10.0.0.3", 0, 60.0),
    )
    assert ping_addresses(targets) == 2
