"""Unit tests for jailsyncd.summary: the per-kind numbers and drift streaks of a cycle."""

from __future__ import annotations

from records import agent_record

from jailsyncd.adapters.consul.agent import self_record
from jailsyncd.model import CbsdState, Environment, Plan, Record, Skip, Update
from jailsyncd.summary import UNKNOWN_KIND, drift_streaks, summarise


def env(jname: str, emulator: str = "jail") -> Environment:
    return Environment(jname=jname, emulator=emulator, status=1, jid=3, ip4_addr="127.0.0.2", host_hostname=None, tags=None)


def svc(jail: str, address: str = "127.0.0.2") -> Record:
    return agent_record(jail, address=address)


STATE = CbsdState("node1", (env("web1"), env("web2"), env("cross", "qemu-aarch64-static"), env("vm1", "bhyve"), env("dhcp1"), env("vm2", "bhyve")))


def test_services_and_skips_per_kind() -> None:
    desired = [svc("web1"), svc("web2"), svc("cross"), svc("vm1"), self_record("node1", "node1", 30)]
    plan = Plan(skipped=(Skip("web2", "conflict", "taken"), Skip("dhcp1", "unaddressable", "DHCP"), Skip("vm2", "unaddressable", "DHCP")))
    s = summarise(plan, desired, STATE)
    # web2 is desired but held back by the conflict; the heartbeat is not a jail;
    # a qemu-*-static cross-arch jail is a jail.
    assert s.services == (("bhyve", 1), ("jail", 2))
    assert s.skipped == ((("bhyve", "unaddressable"), 1), (("jail", "conflict"), 1), (("jail", "unaddressable"), 1))
    assert s.refused == 0 and s.drift == frozenset()


def test_drift_keys_and_refusals() -> None:
    old, new = svc("web1"), svc("web1", "127.0.0.9")
    plan = Plan(
        register=(svc("vm1"),),
        update=(Update(old, new, ("tagged_addresses", "address")),),
        deregister=(svc("gone"),),
        refused=(svc("web2"), svc("dhcp1")),
    )
    s = summarise(plan, [svc("vm1"), new], STATE)
    assert s.drift == {("missing", "jailsyncd-vm1", ""), ("changed", "jailsyncd-web1", "address,tagged_addresses"), ("orphan", "jailsyncd-gone", "")}
    assert s.refused == 2
    assert dict(s.services) == {"bhyve": 1, "jail": 1}


def test_unknown_environment_kind() -> None:
    s = summarise(Plan(skipped=(Skip("ghost", "source_error", "x"),)), [svc("ghost")], None)
    assert s.skipped == (((UNKNOWN_KIND, "source_error"), 1),)


def test_drift_streaks_grow_only_for_drift_found_again() -> None:
    a, b, c = ("changed", "jailsyncd-a", "port"), ("missing", "jailsyncd-b", ""), ("changed", "jailsyncd-a", "tags")
    streaks = drift_streaks({}, {a, b})
    assert streaks == {a: 1, b: 1}
    streaks = drift_streaks(streaks, {a})
    assert streaks == {a: 2}
    streaks = drift_streaks(streaks, {a, b})
    assert streaks == {a: 3, b: 1}
    # The same service drifting in other fields is another drift.
    assert drift_streaks(streaks, {c}) == {c: 1}
    assert drift_streaks(streaks, set()) == {}
