"""``jailsyncd plan`` output (cli.plan_as_text, cli.plan_as_json) for every kind of row:
register, update of each compared field (checks included: issue 10, item 7, where a
changed check set crashed the text output with TypeError), deregister, refused,
collision, every skip reason and notes, in both modes' shapes."""

from __future__ import annotations

import dataclasses
import json

import pytest

from jailsyncd.cli import plan_as_json, plan_as_text
from jailsyncd.health import jail_checks
from jailsyncd.model import COMPARED_FIELDS, Desired, Note, Observed, Plan, Service, Skip, Update
from jailsyncd.plan import plan


def svc(jail="web1", **kw) -> Service:
    base = Service(
        service_id=f"jailsyncd-{jail}",
        name=jail,
        address="127.0.77.1",
        port=80,
        tags=frozenset({"jail", "web"}),
        meta=(("cbsd-host", "node1"), ("cbsd-jname", jail), ("jailsyncd-owner", "node1")),
        tagged_addresses=(("lan_ipv4", "127.0.77.1"), ("wan_ipv4", "127.0.77.1")),
    )
    return dataclasses.replace(base, **kw)


def with_checks(service: Service, probes: tuple[str, ...], catalog: bool = False) -> Service:
    specs = jail_checks(service.service_id, service.address, probes, 3600, catalog=catalog)
    return dataclasses.replace(service, check_specs=specs, checks=frozenset(c.observable for c in specs))


OLD = with_checks(svc(), ())
#: One new value per compared field; ``checks`` is the case of item 7 (tags gain consul.check=tcp).
CHANGES = {
    "name": {"name": "www"},
    "address": {"address": "127.0.77.2"},
    "port": {"port": 8080},
    "tags": {"tags": frozenset({"jail"})},
    "meta": {"meta": (("cbsd-host", "node1"), ("cbsd-jname", "web1"), ("jailsyncd-owner", "node1"), ("team", "a"))},
    "tagged_addresses": {"tagged_addresses": ()},
    "checks": None,
    "node": {"node": "web1.example"},
    "node_meta": {"node_meta": (("external-node", "true"),)},
}


def changed(field: str) -> Service:
    if field == "checks":
        return with_checks(svc(), ("tcp",))
    return dataclasses.replace(OLD, **CHANGES[field])


def test_every_compared_field_has_a_case():
    assert set(CHANGES) == set(COMPARED_FIELDS)


@pytest.mark.parametrize("field", COMPARED_FIELDS)
def test_update_of_each_field_in_text_and_json(field):
    new = changed(field)
    result = plan(Desired((new,), host="node1"), Observed((OLD,)), max_deregistrations=10)
    assert [u.fields for u in result.update] == [(field,)]
    text = plan_as_text(result)
    [line] = text.splitlines()
    assert line.startswith("~ web1") and f"{field}: " in line and " -> " in line
    data = json.loads(json.dumps(plan_as_json(result)))
    [row] = data["update"]
    assert row["fields"] == [field] and set(row["changes"][field]) == {"from", "to"}
    assert row["changes"][field]["from"] != row["changes"][field]["to"]


def test_checks_change_shows_the_check_ids():
    result = plan(Desired((changed("checks"),), host="node1"), Observed((OLD,)), max_deregistrations=10)
    line = plan_as_text(result)
    assert "checks: jailsyncd-web1:alive,jailsyncd-web1:ping -> jailsyncd-web1:alive,jailsyncd-web1:ping,jailsyncd-web1:tcp" in line
    row = plan_as_json(result)["update"][0]
    assert row["checks"] == ["jailsyncd-web1:alive", "jailsyncd-web1:ping", "jailsyncd-web1:tcp"]
    assert ["jailsyncd-web1:tcp", "ttl", "jailsyncd probe=tcp ttl=3600s"] in row["changes"]["checks"]["to"]


def test_every_other_row_kind_in_text_and_json():
    register = with_checks(svc("new1"), ("tcp",), catalog=True)
    register = dataclasses.replace(register, node="new1.example", node_meta=(("cbsd-host", "node1"),))
    stale = svc("gone1")
    collided = svc("other1", meta=(("cbsd-host", "node2"), ("cbsd-jname", "other1"), ("jailsyncd-owner", "node1")))
    skips = tuple(Skip(f"s-{r}", r, f"why {r}") for r in ("unaddressable", "opted_out", "source_error", "conflict"))
    notes = (Note("n1", "ignored_tag", "consul.bogus=1"),)
    result = plan(
        Desired((register,), skipped=skips, notes=notes, host="node1"), Observed((stale, collided)), max_deregistrations=10
    )
    text = plan_as_text(result).splitlines()
    assert text[0].startswith("+ new1") and "register   new1 127.0.77.1:80" in text[0]
    assert any(line.startswith("- gone1") and "deregister jailsyncd-gone1" in line for line in text)
    for reason in ("unaddressable", "opted_out", "source_error", "conflict", "collision"):
        assert any(line.startswith("! ") and f"skipped    {reason}: " in line for line in text), reason
    assert any(line.startswith("# n1") and "ignored_tag" in line for line in text)
    data = json.loads(json.dumps(plan_as_json(result)))
    assert [r["jail"] for r in data["register"]] == ["new1"] and data["register"][0]["node"] == "new1.example"
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


def test_update_row_with_empty_values():
    new = dataclasses.replace(OLD, tags=frozenset(), meta=())
    text = plan_as_text(Plan(update=(Update(OLD, new, ("tags", "meta")),)))
    assert "tags: jail,web -> (none)" in text and "-> (none)" in text
