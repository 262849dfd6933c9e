"""Unit tests for the start-up grace rail (``sync.startup_grace``, issue 11 item 9).

At boot CBSD's ``cbsdd`` only queues the ``astart=1`` environments (``rc.d/jails-astart``
hands one ``jstart``/``bstart`` task per kind to its task daemon, which starts them one
after another), and after a clean shutdown every row says ``jid=0, status=0``. The rule
(``plan.hold_for_autostart``): while ``elapsed < grace``, the deregistration of a jail
with ``astart=1`` that looks stopped is held back, unless CBSD has shown it running
since ``run`` started. Registrations are never delayed. Pure: no clock, no I/O.
"""

from __future__ import annotations

import pytest

from records import agent_record, catalog_record

from jailsyncd.model import CbsdState, Desired, Environment, Observed, Record, Startup
from jailsyncd.plan import autostart_stopped, hold_for_autostart, plan


def svc(jail: str) -> Record:
    return agent_record(jail, address="127.0.0.1")


def env(jname: str, *, status: int = 0, jid: int = 0, astart: bool = True, emulator: str = "jail") -> Environment:
    return Environment(jname, emulator, status, jid, "127.0.0.1", None, None, astart=astart)


# -- which environments CBSD has yet to start ------------------------------------------

AUTOSTART_CASES = [
    # (environment, awaiting autostart?)
    (env("off"), True),
    (env("off-no-astart", astart=False), False),
    (env("running", status=1, jid=3), False),
    (env("slave", status=2), False),  # its live instance runs on another node
    (env("maintenance", status=3), False),
    (env("stale-jid", status=0, jid=9), True),  # a jail needs status=1 as well
    (env("vm-off", emulator="bhyve"), True),
    (env("vm-running", emulator="bhyve", jid=4242), False),  # bhyve: running = jid>0
]


@pytest.mark.parametrize("environment,awaiting", AUTOSTART_CASES, ids=[c[0].jname for c in AUTOSTART_CASES])
def test_autostart_stopped(environment: Environment, awaiting: bool) -> None:
    state = CbsdState("node1", (environment,))
    assert (environment.jname in autostart_stopped(state)) is awaiting


# -- the rule ---------------------------------------------------------------------------

RULE_CASES = [
    # (name, elapsed, grace, autostart_stopped, seen_running, held)
    ("inside the grace, astart jail not started yet", 10.0, 300.0, {"a"}, set(), {"a"}),
    ("grace over", 300.0, 300.0, {"a"}, set(), set()),
    ("long after the grace", 5000.0, 300.0, {"a"}, set(), set()),
    ("grace off (0)", 0.0, 0.0, {"a"}, set(), set()),
    ("seen running since start, then stopped: normal rules", 10.0, 300.0, {"a"}, {"a"}, set()),
    ("no astart: normal rules", 10.0, 300.0, set(), set(), set()),
    ("only the astart ones of several", 10.0, 300.0, {"a", "c"}, {"c"}, {"a"}),
]


@pytest.mark.parametrize("name,elapsed,grace,waiting,seen,held", RULE_CASES, ids=[c[0] for c in RULE_CASES])
def test_hold_for_autostart(name: str, elapsed: float, grace: float, waiting: set, seen: set, held: set) -> None:
    deregister = [svc("a"), svc("b"), svc("c")]
    startup = Startup(elapsed, grace, frozenset(waiting), frozenset(seen), until="2026-11-29T16:05:00Z")
    now, kept = hold_for_autostart(deregister, startup)
    assert {s.jail for s in kept} == held
    assert {s.jail for s in now} == {"a", "b", "c"} - held


def test_no_startup_means_no_hold() -> None:
    """``once`` and ``plan`` (without --startup-grace) have no start time."""
    now, held = hold_for_autostart([svc("a")], None)
    assert [s.jail for s in now] == ["a"] and held == []


# -- inside plan: before the max_deregistrations rail, never on registrations -------------


def test_held_deregistrations_do_not_count_against_max_deregistrations() -> None:
    """After a clean reboot every astart jail's row says stopped: 20 held, not 20 refused."""
    owned = tuple(svc(f"j{i}") for i in range(20))
    startup = Startup(5.0, 300.0, frozenset(s.jail for s in owned), frozenset(), until="2026-11-29T16:05:00Z")
    result = plan(Desired(()), Observed(owned), max_deregistrations=10, startup=startup)
    assert len(result.held) == 20 and result.held_until == "2026-11-29T16:05:00Z"
    assert result.deregister == () and result.refused == ()
    # The same state after the grace: the rail sees all 20 and refuses them.
    late = plan(Desired(()), Observed(owned), max_deregistrations=10, startup=Startup(301.0, 300.0, startup.autostart_stopped))
    assert len(late.refused) == 20 and late.held == () and late.held_until == ""


def test_registrations_and_other_deregistrations_go_ahead() -> None:
    startup = Startup(5.0, 300.0, frozenset({"kept"}), frozenset())
    result = plan(Desired((), records=(svc("new"),)), Observed((svc("kept"), svc("destroyed"))), max_deregistrations=10, startup=startup)
    assert [s.jail for s in result.register] == ["new"]
    assert [s.jail for s in result.deregister] == ["destroyed"]
    assert [s.jail for s in result.held] == ["kept"]


# -- held services keep being probed ------------------------------------------------------


def test_held_service_checks_are_rebuilt_from_what_consul_returns() -> None:
    """Consul returns each check's ID, type and notes; each mode rebuilds the probed
    ones as check definitions when it reads its records back (the alias check and the
    heartbeat are not probed), and ``with_ttl`` gives them the TTL to refresh at."""
    from jailsyncd.adapters.consul.agent import record_from_consul
    from jailsyncd.adapters.consul.catalog import record_from_catalog
    from jailsyncd.health import targets_of, with_ttl

    for mode in ("agent", "catalog"):
        make = agent_record if mode == "agent" else catalog_record
        as_registered = make("web1", address="127.0.0.1", port=80, probes=("tcp", "http:/health"))
        triples = sorted(as_registered.value("checks"))  # type: ignore[arg-type]
        entry = {"ID": "jailsyncd-web1", "Service": "web1", "Address": "127.0.0.1", "Port": 80, "Meta": dict(as_registered.meta)}
        if mode == "agent":
            as_observed = record_from_consul(entry, [{"CheckID": c, "Type": t, "Notes": n, "ServiceID": "jailsyncd-web1"} for c, t, n in triples])
            assert len(triples) == 4  # ping, tcp, http and the alias
        else:
            checks = [{"CheckID": c, "Notes": n, **({"ServiceID": "jailsyncd-web1"} if t == "service" else {})} for c, t, n in triples]
            as_observed = record_from_catalog({"Node": as_registered.place, "Meta": {}}, entry, checks)
        assert as_observed.value("checks") == as_registered.value("checks")
        rebuilt = with_ttl(as_observed, 3600.0)
        assert set(targets_of((rebuilt,))) == set(targets_of((as_registered,)))
        assert len(targets_of((rebuilt,))) == 3  # ping, tcp, http


def test_plan_text_and_json_show_held_deregistrations() -> None:
    from jailsyncd.commands import plan_as_json, plan_as_text
    from jailsyncd.model import Plan

    held = Plan(held=(svc("a"),), held_until="2026-11-29T16:05:00Z")
    text = plan_as_text(held).splitlines()
    assert text[0].split()[:3] == ["=", "a", "held"] and "2026-11-29T16:05:00Z" in text[0]
    assert text[-1] == "no changes now: 1 deregistrations held (=)"
    assert [(h["jail"], h["until"]) for h in plan_as_json(held)["held"]] == [("a", "2026-11-29T16:05:00Z")]
    assert plan_as_text(Plan()) == "no changes: Consul matches CBSD"
