"""The memory savings of issue 13 (target 5) change no value: records that share
equal field values compare as before, agent mode's entry-by-entry parse says what
the whole parse said, and the agent-mode watch's slim parse digests the same.
Pure functions over recorded answer shapes (Consul 1.8.7's); no Consul."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

import pytest
from records import catalog_record

from jailsyncd.adapters.consul import agent
from jailsyncd.adapters.consul.transport import Sharing
from jailsyncd.adapters.consul.agent import _slim
from jailsyncd.model import SERVICE_ID_PREFIX, SELF_SERVICE_ID
from jailsyncd.settings import CatalogSettings


def test_shared_records_are_equal_and_share_repeated_values() -> None:
    share = Sharing()
    a, b = catalog_record("web1"), catalog_record("web2")
    sa, sb = share(a), share(b)
    assert (sa, sb) == (a, b)
    assert sa.fields is not a.fields
    by_name_a, by_name_b = dict(sa.fields), dict(sb.fields)
    assert by_name_a["port"] == 0
    # One object for each value both records hold: the tag set, and each equal meta pair.
    assert by_name_a["tags"] is by_name_b["tags"]
    common = set(by_name_a["meta"]) & set(by_name_b["meta"])
    assert common and all(next(p for p in by_name_b["meta"] if p == pair) is pair for pair in by_name_a["meta"] if pair in common)
    assert [p for p in sa.fields if p[0] == "port"][0] is [p for p in sb.fields if p[0] == "port"][0]


def test_the_pool_stays_bounded() -> None:
    share = Sharing()
    for i in range(Sharing.LIMIT // 4):
        share(catalog_record(f"jail{i}"))
    assert len(share._pool) <= Sharing.LIMIT
    # Past the limit, values already pooled are still shared.
    x, y = share(catalog_record("late1")), share(catalog_record("late2"))
    assert dict(x.fields)["tags"] is dict(y.fields)["tags"]


def _entry(sid: str, owner: str) -> dict:
    return {
        "Kind": "", "ID": sid, "Service": sid.removeprefix(SERVICE_ID_PREFIX), "Tags": ["jail"],
        "Meta": {"external-source": "cbsd", "jailsyncd-owner": owner, "cbsd-jname": sid.removeprefix(SERVICE_ID_PREFIX)},
        "Port": 80, "Address": "10.0.0.1",
        "TaggedAddresses": {"lan_ipv4": {"Address": "10.0.0.1", "Port": 80}},
        "Weights": {"Passing": 1, "Warning": 1}, "EnableTagOverride": False, "Datacenter": "dc1",
    }


def _whole_parse(owner: str, services: dict) -> tuple:
    """What _observe_agent said before it parsed entry by entry (the old loop)."""
    owned, foreign = [], set()
    for sid, entry in services.items():
        if not (sid.startswith(SERVICE_ID_PREFIX) or sid == SELF_SERVICE_ID):
            continue
        if (entry.get("Meta") or {}).get("jailsyncd-owner") != owner:
            foreign.add(sid)
            continue
        owned.append(agent.record_from_consul(entry, []))
    return tuple(sorted(owned, key=lambda r: r.service_id)), frozenset(foreign)


def test_agent_entries_taken_as_parsed_say_what_the_whole_answer_said() -> None:
    services = {sid: _entry(sid, owner) for sid, owner in [
        ("jailsyncd-web1", "node1"), ("jailsyncd-db1", "node1"), ("jailsyncd-other", "node2"), ("consul", "")]}
    observed = agent._observe_agent("node1", json.dumps(services, indent=4), "{}", "")
    owned, foreign = _whole_parse("node1", services)
    assert (observed.owned, observed.foreign_ids) == (owned, foreign)
    assert [r.service_id for r in observed.owned] == ["jailsyncd-db1", "jailsyncd-web1"]


def test_an_entry_not_shaped_like_one_fails_as_before() -> None:
    # Ours by its key, but not an object: the read is refused ("not Consul's"), as it was.
    with pytest.raises(AttributeError):
        agent._observe_agent("node1", json.dumps({"jailsyncd-web1": "x"}), "{}", "")
    with pytest.raises(ValueError):
        agent._observe_agent("node1", json.dumps([_entry("jailsyncd-web1", "node1")]), "{}", "")


def test_the_watch_digest_of_a_slim_parse_is_the_digest_of_the_whole() -> None:
    answer = {
        "Node": {"ID": "b8e3", "Node": "agent1", "Address": "127.0.0.1", "Datacenter": "dc1", "TaggedAddresses": {"lan": "127.0.0.1"}, "Meta": {"consul-network-segment": ""}},
        "Services": [{**_entry(f"jailsyncd-j{i}", "node1"), "CreateIndex": 10 + i, "ModifyIndex": 20 + i} for i in range(5)]
        + [{**_entry("consul", ""), "CreateIndex": 5, "ModifyIndex": 5}],
    }
    body = json.dumps(answer, indent=4)

    def digest(parsed: dict) -> str:
        ours = sorted((s.get("ID", ""), s.get("ModifyIndex", 0)) for s in parsed["Services"] if str(s.get("ID", "")).startswith(SERVICE_ID_PREFIX))
        return hashlib.sha1(json.dumps(ours).encode()).hexdigest()

    slim = json.loads(body, object_hook=_slim)
    assert digest(slim) == digest(json.loads(body))
    assert slim["Node"]["Node"] == "agent1"
    assert all(set(s) == {"ID", "ModifyIndex"} for s in slim["Services"])


@pytest.mark.parametrize(
    "fields",
    [
        (("name", "web"), ("port", 0), ("tags", frozenset({"jail"}))),
        (("meta", (("cbsd-jname", "web1"), ("external-source", "cbsd"))), ("node_meta", ())),
        (("meta", (("a", "b", "c"), "loose", ("k", "v"))),),  # items that are not pairs
        (("checks", frozenset({("jailsyncd-web1:ping", "node", "jailsyncd probe=ping")})),),
        (("unhashable", ["a list"]), ("port", 8080)),
        (("flag", True), ("count", 1), ("ratio", 1.0)),
    ],
)
def test_shared_fields_equal_the_fields_given(fields: tuple) -> None:
    share = Sharing()
    first = share.fields(fields)
    again = share.fields(tuple((name, value) for name, value in fields))
    assert first == fields and again == fields
    assert [type(v) for _, v in first] == [type(v) for _, v in fields]
    # The second time round every hashable pair is the one kept the first time.
    assert all(a is b for a, b in zip(first, again) if not isinstance(a[1], list))


def test_a_meta_pair_met_in_another_record_is_the_same_object() -> None:
    share = Sharing()
    owner = "".join(["node", "1"])  # equal to "node1", not the same object
    a = share.fields((("meta", (("cbsd-jname", "web1"), ("jailsyncd-owner", "node1"))), ("node", "web1")))
    b = share.fields((("meta", (("cbsd-jname", "web2"), ("jailsyncd-owner", owner))), ("node", "web2")))
    assert a[0][1][1] is b[0][1][1]
    # A pair seen once has its parts shared: the key of the per-jail pair.
    assert a[0][1][0][0] is b[0][1][0][0]


def test_catalog_records_share_through_one_pool_and_equal_unshared_ones() -> None:
    records = [catalog_record(f"web{i}", probes=("ping", "tcp")) for i in range(3)]
    share = Sharing()
    shared = [replace(r, fields=share.fields(r.fields)) for r in records]
    assert shared == records
    assert dict(shared[0].fields)["tags"] is dict(shared[2].fields)["tags"]


def test_catalog_node_meta_is_in_key_order() -> None:
    for settings in (CatalogSettings(), CatalogSettings(external_probe=True)):
        node_meta = dict(catalog_record("web1", settings=settings).fields)["node_meta"]
        assert isinstance(node_meta, tuple) and list(node_meta) == sorted(node_meta)
        assert dict(node_meta)["external-probe"] == ("true" if settings.external_probe else "false")
