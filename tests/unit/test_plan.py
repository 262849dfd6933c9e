"""Unit tests for jailsyncd.plan: (desired, observed) -> register / update / deregister.

Rules (plan docstring): unchanged -> no writes; tags compare as sets; a desired ID held
by a foreign owner is a ``conflict`` skip; protected jails are left alone; more than
``max_deregistrations`` deregistrations are all refused unless ``force``.
"""

from __future__ import annotations

import dataclasses

import pytest

from records import agent_record as svc
from records import catalog_record

from jailsyncd.model import Desired, Note, Observed, Plan, Skip
from jailsyncd.plan import changed_fields, plan, purge_plan


def run(desired=(), owned=(), *, foreign=(), protected=(), skipped=(), notes=(), limit=10, force=False):
    d = Desired((), tuple(skipped), tuple(notes), frozenset(protected), records=tuple(desired))
    o = Observed(tuple(owned), frozenset(foreign))
    return plan(d, o, max_deregistrations=limit, force=force)


def ids(services):
    return [s.service_id for s in services]


# --- no change -------------------------------------------------------------------------


@pytest.mark.parametrize("count", [0, 1, 5])
def test_nothing_changed_means_zero_writes(count):
    services = [svc(f"j{i}", address=f"10.0.0.{i + 1}") for i in range(count)]
    result = run(services, [dataclasses.replace(s) for s in services])
    assert result.writes == 0
    assert (result.register, result.update, result.deregister, result.refused) == ((), (), (), ())


def test_tags_compare_as_sets():
    new = svc("web1", tags=["web", "prod", "jail"])
    old = new.with_values(tags=frozenset(["jail", "prod", "web", "web"]))
    assert changed_fields(old, new) == ()
    assert run([new], [old]).writes == 0


# --- each compared field ---------------------------------------------------------------


_BASE = svc("web1", name="web1", address="10.0.0.1", port=80, tags=("jail", "web"), meta=(("team", "a"),))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("name", "www"),
        ("address", "10.0.0.2"),
        ("port", 8080),
        ("port", 0),
        ("tags", frozenset({"jail"})),
        ("tags", frozenset({"jail", "web", "prod"})),
        ("meta", tuple(sorted({**dict(_BASE.meta), "team": "b"}.items()))),
        ("meta", tuple(sorted({**dict(_BASE.meta), "new": "x"}.items()))),
        ("meta", tuple(p for p in _BASE.meta if p[0] != "team")),
        ("tagged_addresses", (("lan_ipv4", "10.0.0.1"), ("wan_ipv4", "10.0.0.9"))),
        ("tagged_addresses", ()),
        ("checks", frozenset({("jailsyncd-web1:ping", "ttl", "jailsyncd probe=ping ttl=3600s")})),
    ],
)
def test_each_field_change_is_detected(field, value):
    new = _BASE.with_values(**{field: value})
    assert changed_fields(_BASE, new) == (field,)
    result = run([new], [_BASE])
    assert result.register == () and result.deregister == ()
    assert len(result.update) == 1
    upd = result.update[0]
    assert (upd.old, upd.new, upd.fields) == (_BASE, new, (field,))
    assert result.writes == 1


def test_several_changes_reported_in_the_modes_order():
    new = _BASE.with_values(tagged_addresses=(), port=1, name="zzz")
    assert changed_fields(_BASE, new) == ("name", "port", "tagged_addresses")
    assert [name for name, _ in _BASE.fields] == ["name", "address", "port", "tags", "meta", "tagged_addresses", "checks"]
    node = catalog_record("web1")
    moved = node.with_values(node_meta=(), tagged_addresses=(("x", "y"),), node="web1.other")
    assert changed_fields(node, moved) == ("tagged_addresses", "node", "node_meta")


# --- register / deregister -------------------------------------------------------------


@pytest.mark.parametrize(
    ("desired", "owned", "register", "update", "deregister"),
    [
        pytest.param(["a"], [], ["a"], [], [], id="new"),
        pytest.param([], ["a"], [], [], ["a"], id="gone"),
        pytest.param(["b", "a", "c"], [], ["a", "b", "c"], [], [], id="register-sorted"),
        pytest.param([], ["c", "a", "b"], [], [], ["a", "b", "c"], id="deregister-sorted"),
        pytest.param(["a", "b*"], ["b", "c"], ["a"], ["b"], ["c"], id="mixed"),
    ],
)
def test_register_update_deregister_table(desired, owned, register, update, deregister):
    def make(spec):
        jail = spec.rstrip("*")
        return svc(jail, port=99 if spec.endswith("*") else 0)

    result = run([make(s) for s in desired], [make(s.rstrip("*")) for s in owned])
    assert ids(result.register) == [f"jailsyncd-{j}" for j in register]
    assert [u.new.service_id for u in result.update] == [f"jailsyncd-{j}" for j in update]
    assert ids(result.deregister) == [f"jailsyncd-{j}" for j in deregister]
    assert result.writes == len(register) + len(update) + len(deregister)


# --- conflicts -------------------------------------------------------------------------


def test_conflict_with_foreign_id_is_skipped_not_registered():
    result = run([svc("web1"), svc("db1")], foreign={"jailsyncd-web1", "jailsyncd-other"})
    assert ids(result.register) == ["jailsyncd-db1"]
    conflicts = [s for s in result.skipped if s.reason == "conflict"]
    assert [(s.jail, s.reason) for s in conflicts] == [("web1", "conflict")]
    assert "jailsyncd-web1" in conflicts[0].detail
    # foreign IDs never get deregistered either
    assert result.deregister == () and result.refused == ()


# --- protected -------------------------------------------------------------------------


def test_protected_jail_is_neither_deregistered_nor_refused():
    owned = [svc("vm1"), svc("gone")]
    result = run([], owned, protected={"vm1"}, skipped=[Skip("vm1", "source_error", "locked")])
    assert ids(result.deregister) == ["jailsyncd-gone"]
    assert result.refused == ()
    assert result.update == () and result.register == ()
    assert Skip("vm1", "source_error", "locked") in result.skipped


def test_protected_is_matched_by_service_id_when_meta_lacks_jname():
    result = run([], [svc("vm1", jname_meta=False)], protected={"vm1"})
    assert result.deregister == () and result.writes == 0


def test_protected_jails_do_not_count_toward_the_deregistration_limit():
    owned = [svc(f"p{i}") for i in range(5)] + [svc("gone1"), svc("gone2")]
    result = run([], owned, protected={f"p{i}" for i in range(5)}, limit=2)
    assert ids(result.deregister) == ["jailsyncd-gone1", "jailsyncd-gone2"]
    assert result.refused == ()


def test_protected_jail_is_not_updated_even_if_desired_lists_it():
    old = svc("vm1", address="10.0.0.1")
    new = svc("vm1", address="10.0.0.2")
    result = run([new], [old], protected={"vm1"})
    assert result.update == ()


# --- max_deregistrations ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("stale", "limit", "force", "deregistered"),
    [
        (0, 0, False, True),
        (1, 0, False, False),  # 0: any deregistration is refused
        (1, 0, True, True),
        (3, 3, False, True),  # exactly the limit passes
        (4, 3, False, False),  # limit + 1 refuses all
        (4, 3, True, True),  # force overrides
        (10, 10, False, True),
        (11, 10, False, False),
        (50, 10, True, True),
    ],
)
def test_max_deregistrations(stale, limit, force, deregistered):
    owned = [svc(f"old{i:02d}") for i in range(stale)] + [svc("keep")]
    desired = [svc("keep", port=1), svc("new")]  # one update, one registration
    result = run(desired, owned, limit=limit, force=force)
    stale_ids = [f"jailsyncd-old{i:02d}" for i in range(stale)]
    # registrations and updates are never held back by the deregistration rail
    assert ids(result.register) == ["jailsyncd-new"]
    assert [u.new.service_id for u in result.update] == ["jailsyncd-keep"]
    refused_skips = [s for s in result.skipped if s.reason == "refused"]
    if deregistered:
        assert ids(result.deregister) == stale_ids
        assert result.refused == () and refused_skips == []
    else:
        assert result.deregister == ()
        assert ids(result.refused) == stale_ids
        assert sorted(s.jail for s in refused_skips) == [f"old{i:02d}" for i in range(stale)]
        assert all(str(limit) in s.detail for s in refused_skips)
    assert result.writes == 2 + (stale if deregistered else 0)


# --- pass-through ----------------------------------------------------------------------


def test_desired_skips_and_notes_pass_through():
    skips = [Skip("x", "unaddressable", "DHCP"), Skip("y", "opted_out", "off")]
    notes = [Note("z", "name_collision", "...")]
    result = run([], [], skipped=skips, notes=notes)
    assert list(result.skipped[:2]) == skips
    assert result.notes == tuple(notes)


# --- purge -----------------------------------------------------------------------------


@pytest.mark.parametrize("count", [0, 1, 3, 25])
def test_purge_plan_deregisters_everything_owned(count):
    owned = [svc(f"j{i:02d}") for i in reversed(range(count))]
    result = purge_plan(Observed(tuple(owned), frozenset({"jailsyncd-foreign"})))
    assert ids(result.deregister) == [f"jailsyncd-j{i:02d}" for i in range(count)]
    assert "jailsyncd-foreign" not in ids(result.deregister)
    assert (result.register, result.update, result.refused) == ((), (), ())
    assert result.writes == count


def test_plan_writes_property():
    assert Plan().writes == 0
    assert Plan(register=(svc("a"),), deregister=(svc("b"), svc("c"))).writes == 3


# --- an empty jails table (issue 10, item 4) ---------------------------------------------


def run_host(desired=(), owned=(), *, host="node1", empty=False, limit=10, force=False):
    d = Desired((), host=host, empty_source=empty, records=tuple(desired))
    return plan(d, Observed(tuple(owned)), max_deregistrations=limit, force=force)


@pytest.mark.parametrize(
    ("empty", "owned", "limit", "force", "deregistered"),
    [
        (True, 1, 10, False, False),  # whatever the count: one entry is refused too
        (True, 3, 10, False, False),
        (True, 3, 0, False, False),
        (True, 3, 10, True, True),  # --force overrides
        (True, 0, 10, False, True),  # nothing to deregister: nothing refused
        (False, 3, 10, False, True),  # rows present, every jail stopped: normal
        (False, 3, 2, False, False),  # ... but still under max_deregistrations
    ],
)
def test_empty_jails_table_refuses_every_deregistration(empty, owned, limit, force, deregistered):
    stale = [svc(f"j{i}", meta={"cbsd-host": "node1"}) for i in range(owned)]
    result = run_host([], stale, empty=empty, limit=limit, force=force)
    if deregistered:
        assert ids(result.deregister) == ids(stale) and result.refused == () and result.refused_why == ""
    else:
        assert result.deregister == () and ids(result.refused) == ids(stale)
        assert [s.reason for s in result.skipped] == ["refused"] * owned
        assert ("jails table is empty" in result.refused_why) == empty
        assert "--force" in result.refused_why


# --- two hosts, one owner name (issue 10, item 6) ----------------------------------------


def test_entries_of_another_cbsd_node_are_collisions_never_touched():
    ours = svc("web1", meta={"cbsd-host": "node1"})
    theirs = svc("db1", meta={"cbsd-host": "node2"})  # same owner, other CBSD node
    same_id = svc("app1", meta={"cbsd-host": "node2"}, address="10.0.0.7")
    wanted_app = svc("app1", meta={"cbsd-host": "node1"}, address="10.0.0.8")
    result = run_host([ours, wanted_app], [ours, theirs, same_id])
    assert result.deregister == () and result.register == () and result.update == ()
    assert ids(result.collisions) == ["jailsyncd-app1", "jailsyncd-db1"]
    skips = {s.jail: s for s in result.skipped}
    assert set(skips) == {"app1", "db1"} and {s.reason for s in skips.values()} == {"collision"}
    assert "'node2'" in skips["db1"].detail and "'node1'" in skips["db1"].detail


@pytest.mark.parametrize(
    ("host", "entry_host", "collision"),
    [("node1", "node1", False), ("node1", "node2", True), ("node1", "", False), ("", "node2", False)],
)
def test_collision_needs_both_node_names(host, entry_host, collision):
    meta = {"cbsd-host": entry_host} if entry_host else {}
    result = run_host([], [svc("old", meta=meta)], host=host)
    assert (ids(result.collisions) == ["jailsyncd-old"]) == collision
    assert (ids(result.deregister) == ["jailsyncd-old"]) == (not collision)


def test_catalog_collision_reads_node_meta_and_is_not_purged():
    theirs = catalog_record("db1", host="node2")  # the CBSD node in the node meta only
    mine = svc("web1", meta={"cbsd-host": "node1"})
    result = run_host([], [theirs, mine])
    assert ids(result.collisions) == ["jailsyncd-db1"] and ids(result.deregister) == ["jailsyncd-web1"]
    assert "node db1.example" in result.skipped[0].detail
    purge = purge_plan(Observed((theirs, mine)), "node1")
    assert ids(purge.deregister) == ["jailsyncd-web1"] and ids(purge.collisions) == ["jailsyncd-db1"]
    assert ids(purge_plan(Observed((theirs, mine))).deregister) == ["jailsyncd-db1", "jailsyncd-web1"]  # node unknown


@pytest.mark.parametrize(("limit", "force", "skipped"), [(10, False, False), (0, True, False), (0, False, True)])
def test_a_node_still_held_by_a_jail_whose_deregistration_waits_is_a_conflict(limit, force, skipped):
    """Catalog mode: jail b wants the node of jail a, which stopped. When a's
    deregistration is not made this cycle (refused by a rail, held by the start-up
    grace), b's create-only registration of that node could only be refused by
    Consul ("index is stale") on every cycle: b is a conflict naming a instead, until
    a's node is freed."""
    held = catalog_record("a", "same.example")
    wanted = catalog_record("b", "same.example", address="10.0.0.2")
    result = run([wanted], [held], limit=limit, force=force)
    if skipped:
        assert ids(result.register) == [] and ids(result.refused) == ["jailsyncd-a"]
        [skip] = [k for k in result.skipped if k.jail == "b"]
        assert skip.reason == "conflict" and "same.example" in skip.detail and "jail a" in skip.detail
    else:
        assert ids(result.register) == ["jailsyncd-b"] and ids(result.deregister) == ["jailsyncd-a"]
        assert not [k for k in result.skipped if k.jail == "b"]
