"""The Consul modes' records (pure parts of ``adapters/consul/agent.py`` and
``catalog.py``): a core ``Service`` into the mode's record, the bodies sent, and the
record read back from what Consul returns, equal to the one wanted (or every cycle
would rewrite it)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from records import service

from jailsyncd.adapters.consul import agent, catalog
from jailsyncd.desired import NAMELESS, build_desired
from jailsyncd.model import SELF_SERVICE_ID, CbsdState, Desired, Environment, Note, Observed, Skip
from jailsyncd.settings import CatalogSettings, HealthSettings, Settings


def env(jname: str, ip4_addr: str = "10.0.0.1", **kw) -> Environment:
    return Environment(jname, "jail", 1, 1, ip4_addr, kw.pop("host_hostname", None), kw.pop("tags", None), **kw)


def desired_of(*envs: Environment, health: bool = False) -> Desired:
    return build_desired(CbsdState("node1", envs), owner="n1", health=HealthSettings() if health else None)


# -- agent mode ---------------------------------------------------------------------------


def test_agent_record_names_addresses_and_checks_as_consul_holds_them():
    svc = service("web1", address="10.0.0.5", addresses=("10.0.0.5", "10.0.1.5", "fd00::5"), port=80, probes=("tcp",))
    record = agent.record_of(svc)
    assert [name for name, _ in record.fields] == ["name", "address", "port", "tags", "meta", "tagged_addresses", "checks"]
    assert dict(record.value("tagged_addresses")) == {  # type: ignore[arg-type]
        "lan_ipv4": "10.0.0.5", "wan_ipv4": "10.0.0.5", "cbsd_ipv4_2": "10.0.1.5", "lan_ipv6": "fd00::5", "wan_ipv6": "fd00::5",
    }
    assert record.value("checks") == {
        ("jailsyncd-web1:ping", "ttl", "jailsyncd probe=ping ttl=3600s"),
        ("jailsyncd-web1:tcp", "ttl", "jailsyncd probe=tcp ttl=3600s"),
        ("jailsyncd-web1:alive", "alias", f"jailsyncd alias={SELF_SERVICE_ID}"),
    }
    body = agent.service_payload(record, {"jailsyncd-web1:ping": "passing"})
    assert [(c["CheckID"], c.get("TTL"), c.get("Status"), c.get("AliasService")) for c in body["Checks"]] == [
        ("jailsyncd-web1:ping", "3600s", "passing", None),
        ("jailsyncd-web1:tcp", "3600s", "critical", None),
        ("jailsyncd-web1:alive", None, None, SELF_SERVICE_ID),
    ]
    # What the agent returns for that body reads back as the same record.
    entry = {"ID": body["ID"], "Service": body["Name"], "Address": body["Address"], "Port": body["Port"], "Tags": body["Tags"],
             "Meta": body["Meta"], "TaggedAddresses": body["TaggedAddresses"]}
    checks = [{"CheckID": c["CheckID"], "Type": "alias" if "AliasService" in c else "ttl", "Notes": c["Notes"]} for c in body["Checks"]]
    back = agent.record_from_consul(entry, checks)
    assert back == record and [c.check_id for c in back.checks] == ["jailsyncd-web1:ping", "jailsyncd-web1:tcp"]


def test_agent_records_add_the_heartbeat_with_health_only():
    desired = desired_of(env("web1"), health=True)
    on = agent.records(desired, Settings())
    assert [r.service_id for r in on.records] == ["jailsyncd-web1", SELF_SERVICE_ID]
    [heartbeat] = [r for r in on.records if r.is_self]
    assert heartbeat.value("checks") == {("jailsyncd.heartbeat:ttl", "ttl", "jailsyncd heartbeat ttl=30s")}
    assert [c["Status"] for c in agent.service_payload(heartbeat)["Checks"]] == ["passing"]  # registered by a live process
    off = agent.records(desired_of(env("web1")), Settings(health=HealthSettings(enabled=False)))
    assert [r.service_id for r in off.records] == ["jailsyncd-web1"] and off.records[0].value("checks") == frozenset()


def test_agent_settle_marks_the_token_and_keeps_a_running_daemons_heartbeat():
    settings = Settings()
    desired = agent.records(desired_of(env("web1"), health=True), settings)
    marked, running = agent.ConsulAgent.settle(desired, Observed((), token_accessor="acc-1"), standalone=False, settings=settings)
    assert not running and all(dict(r.meta)["jailsyncd-token-accessor"] == "acc-1" for r in marked.records)
    alive = agent.self_record("n1", "node1", 30)
    observed = Observed((alive,), check_status=(("jailsyncd.heartbeat:ttl", "passing", ""),))
    kept, running = agent.ConsulAgent.settle(desired, observed, standalone=True, settings=settings)
    assert running and [r for r in kept.records if r.is_self] == [alive]
    alone, running = agent.ConsulAgent.settle(desired, Observed((), token_accessor="acc-1"), standalone=True, settings=settings)
    [heartbeat] = [r for r in alone.records if r.is_self]
    assert not running and heartbeat.checks[0].ttl == settings.health.ttl and "by=once" in str(heartbeat.value("checks"))
    assert dict(heartbeat.meta)["jailsyncd-token-accessor"] == "acc-1"  # registered with the token in use, like the rest


# -- catalog mode -------------------------------------------------------------------------


def test_catalog_record_is_a_node_with_its_meta_addresses_and_checks():
    svc = service("web1", address="10.0.0.5", addresses=("10.0.0.5", "fd00::5"), port=80, probes=("tcp",), meta={"cbsd-emulator": "jail"})
    record = catalog.record_of(svc, "web1.example", CatalogSettings(), owner="n1", host="node1")
    assert [name for name, _ in record.fields][-4:] == ["checks", "node", "node_address", "node_meta"]
    assert record.value("node_address") == "10.0.0.5"
    assert record.place == "web1.example" and record.value("tagged_addresses") == ()
    assert dict(record.meta)["cbsd-addresses"] == "10.0.0.5,fd00::5"
    assert dict(record.value("node_meta"))["jailsyncd-service-id"] == "jailsyncd-web1"  # type: ignore[arg-type]
    assert record.value("checks") == {("jailsyncd-web1:ping", "node", "jailsyncd probe=ping"), ("jailsyncd-web1:tcp", "service", "jailsyncd probe=tcp")}
    esm = catalog.record_of(svc, "web1.example", CatalogSettings(external_probe=True), owner="n1", host="node1")
    assert [c.probe for c in esm.checks] == ["tcp"]  # consul-esm pings the node
    article = catalog.record_of(svc, "web1.example", CatalogSettings(layout="article", host_tag="h1"), owner="n1", host="node1")
    assert (article.name, article.tags) == ("jail", frozenset({"h1", "jail"}))
    # What the catalog returns for it reads back as the same record.
    dump = {"Node": "web1.example", "Address": "10.0.0.5", "Meta": dict(record.value("node_meta"))}  # type: ignore[arg-type]
    entry = {"ID": "jailsyncd-web1", "Service": record.name, "Address": record.address, "Port": 80, "Tags": sorted(record.tags), "Meta": dict(record.meta)}
    checks = [{"CheckID": c, "Notes": n, **({"ServiceID": "jailsyncd-web1"} if k == "service" else {})} for c, k, n in record.value("checks")]  # type: ignore[union-attr]
    assert catalog.record_from_catalog(dump, entry, checks) == record


def test_catalog_addresses_meta_only_when_it_fits():
    many = tuple(f"10.0.{i // 250}.{i % 250 + 1}" for i in range(60))
    record = catalog.record_of(service("web1", addresses=many), "web1.example", CatalogSettings(), owner="n1", host="node1")
    assert "cbsd-addresses" not in dict(record.meta)


@pytest.mark.parametrize("many", [False, True], ids=["fits", "too-long"])
def test_catalog_addresses_meta_is_never_the_tags_columns(many):
    """``cbsd-addresses`` is catalog mode's own meta: a ``cbsd-addresses=`` item in the
    tags column was silently replaced by the jail's addresses, and kept (a made-up
    address list published as the jail's) when those did not fit in 512 bytes. It is
    dropped and noted like every other key jailsyncd writes itself."""
    ips = ",".join(f"10.0.{i // 250}.{i % 250 + 1}" for i in range(60)) if many else "10.0.0.5"
    desired = catalog.records(desired_of(env("web1", ips, tags="cbsd-addresses=192.0.2.99,team=a")), CatalogSettings())
    meta = dict(desired.records[0].meta)
    assert meta["team"] == "a" and meta.get("cbsd-addresses") != "192.0.2.99"
    assert Note("web1", "meta_dropped", "cbsd-addresses: reserved for jailsyncd") in desired.notes


def test_catalog_node_names_and_a_shared_name_is_a_conflict_in_jname_order():
    desired = desired_of(
        env("b", "10.0.0.2", host_hostname="Same.Example"), env("a", "10.0.0.1", host_hostname="same.example"),
        env("c", "DHCP"), env("d", "10.0.0.4"),
    )
    desired = replace(desired, skipped=(*desired.skipped, Skip(NAMELESS, "invalid_row", "x")), notes=(Note("b", "check_ignored", "x"),))
    out = catalog.records(desired, CatalogSettings())
    assert [(r.jail, r.place) for r in out.records] == [("a", "same.example"), ("d", "d")]
    assert [(k.jail, k.reason) for k in out.skipped] == [("b", "conflict"), ("c", "unaddressable"), (NAMELESS, "invalid_row")]
    assert "already used by jail a" in out.skipped[0].detail
    assert out.notes == ()  # the conflicted jail's check notes go with it


@pytest.mark.parametrize(("template", "node"), [("{fqdn}", "redis-1.my.domain"), ("{jname}.{host}", "redis-1.node1"), ("{jname}", "redis-1")])
def test_catalog_node_name_template(template, node):
    desired = desired_of(env("Redis_1", host_hostname="Redis_1.My.Domain"))
    [record] = catalog.records(desired, CatalogSettings(node_name=template)).records
    assert record.place == node


# -- what the loop asks of a mode, not its name -------------------------------------------


@pytest.mark.parametrize("applies_read_statuses", [False, True])
def test_a_mode_writing_the_statuses_it_read_gets_a_fresh_read_when_health_is_on(tmp_path, applies_read_statuses):
    """Catalog mode writes a changed check's definition with the status of its last read:
    with health on, a cycle for a CBSD change reads Consul again instead of reusing the
    last read. The loop asks the store (``applies_read_statuses``), not the mode's name."""
    from memory import MemorySource, MemoryStore, MemoryWatch, jail

    from jailsyncd.reconcile import Reconciler
    from jailsyncd.settings import CbsdSettings, HostSettings

    settings = Settings(host=HostSettings(name="n1"), cbsd=CbsdSettings(workdir=tmp_path))
    source, store, watch = MemorySource(jail("a", 1)), MemoryStore(), MemoryWatch()
    store.applies_read_statuses = applies_read_statuses
    reconciler = Reconciler(settings, source, store, watch=watch, clock=lambda: 1000.0)
    reconciler.cycle(reasons=["startup"])
    assert reconciler.cycle(reasons=["consul"]).writes == 0
    source.set(jail("a", 1), jail("b", 2))
    result = reconciler.cycle(reasons=["change"])
    assert result.applied["register"] == 1 and result.consul_cached is not applies_read_statuses


@pytest.mark.parametrize("fqdn", [".", "..", "...."])
@pytest.mark.parametrize(("template", "node"), [("{fqdn}", "web-1"), ("{fqdn}.{host}", "web-1.node1")])
def test_catalog_node_name_of_a_host_hostname_without_any_label_is_the_jname(fqdn, template, node):
    """``host_hostname = "."`` gave the node name '' with ``{fqdn}``: Consul refused the
    transaction ("Must provide node") on every cycle and ``once`` exited 1. A
    host_hostname with no label names nothing, so it counts as unset (the jname), as
    the docs say of ``{fqdn}``."""
    desired = desired_of(env("web_1", host_hostname=fqdn))
    [record] = catalog.records(desired, CatalogSettings(node_name=template)).records
    assert record.place == node
