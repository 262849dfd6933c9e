"""``jailsyncd plan`` output (cli.plan_as_text, cli.plan_as_json) for every kind of row:
register, update of each compared field (checks included: issue 10, item 7, where a
changed check set crashed the text output with TypeError), deregister, refused,
collision, every skip reason and notes, in both modes' shapes."""

from __future__ import annotations

import json

import pytest
from records import agent_record, catalog_record

from jailsyncd.commands import plan_as_json, plan_as_text
from jailsyncd.model import Desired, Note, Observed, Plan, Record, Skip, Update
from jailsyncd.plan import plan

META = {"cbsd-host": "node1"}
MAKE = {"agent": agent_record, "catalog": catalog_record}


def svc(jail: str = "web1", mode: str = "agent", **kw: object) -> Record:
    args: dict[str, object] = {"address": "127.0.77.1", "port": 80, "tags": ("jail", "web"), "meta": META, **kw}
    return MAKE[mode](jail, **args)  # type: ignore[operator]


def with_checks(jail: str, probes: tuple[str, ...], mode: str = "agent") -> Record:
    return svc(jail, mode, probes=probes)


OLD = {mode: with_checks("web1", (), mode) for mode in MAKE}
#: One new value per compared field of either mode; ``checks`` is the case of item 7
#: (tags gain consul.check=tcp).
CHANGES = {
    "name": {"name": "www"},
    "address": {"address": "127.0.77.2"},
    "port": {"port": 8080},
    "tags": {"tags": frozenset({"jail"})},
    "meta": {"meta": (("cbsd-host", "node1"), ("cbsd-jname", "web1"), ("jailsyncd-owner", "node1"), ("team", "a"))},
    "tagged_addresses": {"tagged_addresses": (("x", "127.0.77.9"),)},
    "checks": None,
    "node": {"node": "web1.other"},
    "node_address": {"node_address": "127.0.77.9"},
    "node_meta": {"node_meta": (("external-node", "true"),)},
}
CASES = [(mode, name) for mode, old in OLD.items() for name, _ in old.fields]


def changed(field: str, mode: str = "agent") -> Record:
    if field == "checks":
        return with_checks("web1", ("tcp",), mode)
    return OLD[mode].with_values(**CHANGES[field])


def test_every_compared_field_has_a_case():
    assert {name for _, name in CASES} == set(CHANGES)


@pytest.mark.parametrize(("mode", "field"), CASES)
def test_update_of_each_field_in_text_and_json(mode, field):
    new = changed(field, mode)
    result = plan(Desired((), host="node1", records=(new,)), Observed((OLD[mode],)), max_deregistrations=10)
    assert [u.fields for u in result.update] == [(field,)]
    text = plan_as_text(result)
    [line] = text.splitlines()
    assert line.startswith("~ web1") and f"{field}: " in line and " -> " in line
    data = json.loads(json.dumps(plan_as_json(result)))
    [row] = data["update"]
    assert row["fields"] == [field] and set(row["changes"][field]) == {"from", "to"}
    assert row["changes"][field]["from"] != row["changes"][field]["to"]


def test_checks_change_shows_the_check_ids():
    result = plan(Desired((), host="node1", records=(changed("checks"),)), Observed((OLD["agent"],)), max_deregistrations=10)
    line = plan_as_text(result)
    assert "checks: jailsyncd-web1:alive,jailsyncd-web1:ping -> jailsyncd-web1:alive,jailsyncd-web1:ping,jailsyncd-web1:tcp" in line
    row = plan_as_json(result)["update"][0]
    assert row["checks"] == ["jailsyncd-web1:alive", "jailsyncd-web1:ping", "jailsyncd-web1:tcp"]
    assert ["jailsyncd-web1:tcp", "ttl", "jailsyncd probe=tcp ttl=3600s"] in row["changes"]["checks"]["to"]


def test_every_other_row_kind_in_text_and_json():
    register = with_checks("new1", ("tcp",), "catalog")
    stale = svc("gone1")
    collided = svc("other1", meta={"cbsd-host": "node2"})
    skips = tuple(Skip(f"s-{r}", r, f"why {r}") for r in ("unaddressable", "opted_out", "source_error", "conflict"))
    notes = (Note("n1", "ignored_tag", "consul.bogus=1"),)
    result = plan(
        Desired((), skipped=skips, notes=notes, host="node1", records=(register,)), Observed((stale, collided)), max_deregistrations=10
    )
    text = plan_as_text(result).splitlines()
    assert text[0].startswith("+ new1") and "register   new1 127.0.77.1:80" in text[0]
    assert any(line.startswith("- gone1") and "deregister jailsyncd-gone1" in line for line in text)
    for reason in ("unaddressable", "opted_out", "source_error", "conflict", "collision"):
        assert any(line.startswith("! ") and f"skipped    {reason}: " in line for line in text), reason
    assert any(line.startswith("# n1") and "ignored_tag" in line for line in text)
    data = json.loads(json.dumps(plan_as_json(result)))
    assert [r["jail"] for r in data["register"]] == ["new1"] and data["register"][0]["node"] == "new1.example"
    assert "node" not in data["deregister"][0]  # an agent record has no node
    assert [r["jail"] for r in data["deregister"]] == ["gone1"]
    assert [r["jail"] for r in data["collisions"]] == ["other1"]
    assert {s["reason"] for s in data["skipped"]} == {"unaddressable", "opted_out", "source_error", "conflict", "collision"}
    assert data["notes"] == [{"jail": "n1", "kind": "ignored_tag", "detail": "consul.bogus=1"}]


def test_refused_rows_and_no_changes():
    stale = [svc(f"j{i}") for i in range(3)]
    result = plan(Desired((), host="node1", empty_source=True), Observed(tuple(stale)), max_deregistrations=10)
    text = plan_as_text(result)
    assert text.count("skipped    refused: ") == 3 and "no changes" in text
    data = plan_as_json(result)
    assert [r["jail"] for r in data["refused"]] == ["j0", "j1", "j2"] and data["deregister"] == []
    assert plan_as_text(Plan()) == "no changes: Consul matches CBSD"
    assert plan_as_json(Plan())["update"] == []


def test_the_last_line_never_says_consul_matches_while_something_is_held_back():
    """A plan with no writes but refused deregistrations (the empty-table rail),
    collisions or conflicts ends with a line saying what is left undone, not
    "Consul matches CBSD" (which sent the operator the wrong way: it does not)."""
    stale = [svc(f"j{i}") for i in range(3)]
    refused = plan(Desired((), host="node1", empty_source=True), Observed(tuple(stale)), max_deregistrations=10)
    assert plan_as_text(refused).splitlines()[-1] == "no changes now: 3 deregistrations refused (!)"
    collided = svc("other1", meta={"cbsd-host": "node2"})
    conflict = (Skip("x", "conflict", "jailsyncd-x belongs to owner someone-else"),)
    both = plan(Desired((), skipped=conflict, host="node1"), Observed((collided,)), max_deregistrations=10)
    assert plan_as_text(both).splitlines()[-1] == "no changes now: 1 collisions with another CBSD node (!); 1 conflicts with another owner (!)"
    unaddressable = (Skip("d1", "unaddressable", "DHCP"), Skip("p1", "opted_out", "consul=off"))
    assert plan_as_text(plan(Desired((), skipped=unaddressable, host="node1"), Observed(()), max_deregistrations=10)).splitlines()[-1] == "no changes: Consul matches CBSD"


def test_update_row_with_empty_values():
    new = OLD["agent"].with_values(tags=frozenset(), meta=())
    text = plan_as_text(Plan(update=(Update(OLD["agent"], new, ("tags", "meta")),)))
    assert "tags: jail,web -> (none)" in text and "-> (none)" in text


def test_the_heartbeat_is_shown_as_the_daemons_own_service_not_as_a_jail():
    """Issue 10, item 20 (the heartbeat is not a jail), in ``plan``: its rows say what it
    is, in text, and carry no jail in JSON."""
    from jailsyncd.adapters.consul.agent import self_record

    hb = self_record("node1", "node1", 30.0)
    for result, kind in (
        (plan(Desired((), host="node1", records=(hb,)), Observed(()), max_deregistrations=10), "register"),
        (plan(Desired((), host="node1", records=()), Observed((hb,)), max_deregistrations=10), "deregister"),
    ):
        [line] = plan_as_text(result).splitlines()
        assert line.split()[1] == "(heartbeat)" and kind in line and "jailsyncd.heartbeat" in line
        [row] = plan_as_json(result)[kind]
        assert row["jail"] is None and row["service_id"] == "jailsyncd.heartbeat"


@pytest.mark.parametrize(("count", "words"), [(1, "holds 1 entry of"), (3, "holds 3 entries of")])
def test_the_empty_table_refusal_counts_in_words(count, words):
    owned = tuple(svc(f"web{i}") for i in range(count))
    result = plan(Desired((), host="node1", empty_source=True, records=()), Observed(owned), max_deregistrations=10)
    assert [k.detail for k in result.skipped if k.reason == "refused"] and all(words in k.detail for k in result.skipped if k.reason == "refused")


def test_a_redefined_check_shows_what_changed_not_the_same_ids_twice():
    """The same checks with another definition (``health.ttl`` changed, or the
    heartbeat's TTL after ``once``) read "checks: a,b -> a,b": an update that seems to
    change nothing. The row says which check changed and how."""
    old = svc("web1", probes=(), ttl=3600.0)
    new = svc("web1", probes=(), ttl=120.0)
    result = plan(Desired((), host="node1", records=(new,)), Observed((old,)), max_deregistrations=10)
    [line] = plan_as_text(result).splitlines()
    assert "checks: jailsyncd-web1:alive,jailsyncd-web1:ping -> jailsyncd-web1:alive,jailsyncd-web1:ping" not in line, line
    assert "jailsyncd-web1:ping" in line and "ttl=3600s" in line and "ttl=120s" in line, line
