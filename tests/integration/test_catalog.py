"""Catalog mode against a real Consul: external nodes, the article's layout, several
hosts sharing one Consul, transactions of at most 64 operations."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import dns.message
import dns.query
import dns.rdatatype
import pytest
from harness import ConsulServer, log_events, run_cli, write_config

from jailsyncd.adapters.consul import ConsulCatalog
from jailsyncd.desired import build_desired
from jailsyncd.adapters.cbsd import CbsdSource
from jailsyncd.model import Action
from jailsyncd.plan import plan
from testing.sample import Workdir
from jailsyncd.settings import load_settings

pytestmark = pytest.mark.integration


def catalog_config(tmp: Path, workdir: Workdir, consul: ConsulServer, host: str, catalog_table: str = "") -> Path:
    return write_config(tmp / f"{host}.toml", workdir=workdir.root, consul=consul, host=host, consul_extra='mode = "catalog"', extra=f"[catalog]\nhost_tag = \"{host}.my.domain\"\n{catalog_table}")


def once(config: Path, *args: str) -> tuple[int, list[dict], str]:
    proc = run_cli("once", *args, config=config)
    return proc.returncode, log_events(proc.stderr), proc.stderr


def summary(events: list[dict]) -> dict:
    return [e for e in events if e["event"] == "cycle_finished"][-1]


def nodes(consul: ConsulServer) -> dict[str, dict]:
    return {n["Node"]: n for n in consul.get("/v1/catalog/nodes") if n["Node"] != "jailsyncd-test"}


def test_article_layout_and_dns(catalog: ConsulServer, tmp_path: Path) -> None:
    clu1 = Workdir.create(tmp_path / "clu1", nodename="clu1")
    clu1.add("redis1", jid=3, status=1, ip4_addr="127.0.40.1/16", host_hostname="redis1.my.domain")
    clu2 = Workdir.create(tmp_path / "clu2", nodename="clu2")
    clu2.add("www1", jid=4, status=1, ip4_addr="127.0.40.2/16", host_hostname="www1.my.domain")
    for wd, host in ((clu1, "clu1"), (clu2, "clu2")):
        rc, _, err = once(catalog_config(tmp_path, wd, catalog, host, 'layout = "article"'))
        assert rc == 0, err
    services = catalog.get("/v1/catalog/services")
    assert sorted(services["jail"]) == ["clu1.my.domain", "clu2.my.domain", "jail"]
    assert set(nodes(catalog)) == {"redis1.my.domain", "www1.my.domain"}
    node = nodes(catalog)["redis1.my.domain"]
    assert node["Address"] == "127.0.40.1"
    assert node["Meta"]["external-node"] == "true" and node["Meta"]["external-probe"] == "false"
    assert (node["Meta"]["jailsyncd-owner"], node["Meta"]["cbsd-jname"], node["Meta"]["cbsd-host"]) == ("clu1", "redis1", "clu1")
    for name in ("redis1.my.domain.node.consul", "redis1.my.domain.node.dc1.consul"):
        answer = dns.query.udp(dns.message.make_query(name, dns.rdatatype.A), "127.0.0.1", port=catalog.dns_port, timeout=5)
        assert [(rrset.rdtype, sorted(r.to_text() for r in rrset)) for rrset in answer.answer] == [(dns.rdatatype.A, ["127.0.40.1"])]


def test_two_hosts_ownership_conflicts_purge_and_migration(catalog: ConsulServer, tmp_path: Path) -> None:
    a = Workdir.create(tmp_path / "a", nodename="hosta")
    b = Workdir.create(tmp_path / "b", nodename="hostb")
    a.add("a1", jid=1, status=1, ip4_addr="127.0.41.1")
    b.add("b1", jid=1, status=1, ip4_addr="127.0.41.2")
    # Two names each host wants: a registers "one" first, b registers "two" first.
    a.add("one", jid=2, status=1, ip4_addr="127.0.41.3", host_hostname="one.my.domain")
    b.add("two", jid=2, status=1, ip4_addr="127.0.41.4", host_hostname="two.my.domain")
    ca, cb = catalog_config(tmp_path, a, catalog, "hosta"), catalog_config(tmp_path, b, catalog, "hostb")
    assert once(ca)[0] == 0 and once(cb)[0] == 0
    a.add("two", jid=3, status=1, ip4_addr="127.0.41.14", host_hostname="two.my.domain")
    b.add("one", jid=3, status=1, ip4_addr="127.0.41.13", host_hostname="one.my.domain")
    before = nodes(catalog)
    for config, wanted in ((ca, "two"), (cb, "one")):
        rc, events, _ = once(config)
        assert rc == 0
        conflicts = [e for e in events if e["event"] == "jail_skipped" and e["reason"] == "conflict"]
        assert [e["jail"] for e in conflicts] == [wanted], "each host reports the name the other holds"
        assert summary(events)["writes"] == 0
    assert nodes(catalog) == before, "overwritten by neither"
    plan_json = json.loads(run_cli("plan", "--json", config=ca).stdout)
    assert [(s["jail"], s["reason"]) for s in plan_json["skipped"]] == [("two", "conflict")]

    # One host purging removes nothing of the other's.
    assert run_cli("purge", "--yes", config=cb).returncode == 0
    left = nodes(catalog)
    assert {n: m["Meta"]["jailsyncd-owner"] for n, m in left.items()} == {"a1.my.domain": "hosta", "one.my.domain": "hosta"}
    assert once(cb)[0] == 0

    # Migration: "one" moves from hosta to hostb. While hosta still runs it, hostb waits.
    b.start("one", jid=9)
    rc, events, _ = once(cb)
    assert [e["jail"] for e in events if e["event"] == "jail_skipped" and e["reason"] == "conflict"] == ["one"]
    assert nodes(catalog)["one.my.domain"]["Meta"]["jailsyncd-owner"] == "hosta"
    a.stop("one")
    assert once(ca)[0] == 0
    assert "one.my.domain" not in nodes(catalog)
    rc, events, _ = once(cb)
    assert rc == 0
    moved = nodes(catalog)["one.my.domain"]
    assert (moved["Meta"]["jailsyncd-owner"], moved["Address"]) == ("hostb", "127.0.41.13")
    assert summary(once(ca)[1])["writes"] == 0 and summary(once(cb)[1])["writes"] == 0, "no flapping afterwards"


def test_more_than_64_operations_in_several_transactions(catalog: ConsulServer, tmp_path: Path, workdir: Workdir) -> None:
    for i in range(45):  # 45 jails x (node + service) = 90 operations
        workdir.add(f"bulk{i:02}", jid=i + 1, status=1, ip4_addr=f"127.0.42.{i + 1}")
    config = catalog_config(tmp_path, workdir, catalog, "node1")
    rc, events, _ = once(config)
    assert rc == 0
    s = summary(events)
    assert (s["registered"], s["writes"]) == (45, 2)
    assert len(nodes(catalog)) == 45
    for name in nodes(catalog):
        assert catalog.get(f"/v1/catalog/node/{name}")["Services"], f"node {name} without its service"
    rc, events, _ = once(config)
    # Our nodes, their checks, one read-only transaction for the 45 services (<= 64).
    assert (summary(events)["writes"], summary(events)["requests"]) == (0, 3)


def test_a_node_created_under_our_feet_rolls_back_only_itself(catalog: ConsulServer, tmp_path: Path, workdir: Workdir) -> None:
    for i in range(10):
        workdir.add(f"race{i}", jid=i + 1, status=1, ip4_addr=f"127.0.43.{i + 1}")
    settings = load_settings(catalog_config(tmp_path, workdir, catalog, "node1"), env={})
    store = ConsulCatalog(settings.consul)
    desired = store.records(build_desired(CbsdSource(workdir.root).read(), owner="node1"), settings)
    observed = store.read("node1")
    # Someone else creates "race3" between our read and our write.
    catalog.put("/v1/catalog/register", {"Node": "race3.my.domain", "Address": "192.0.2.33", "NodeMeta": {"team": "other"}})
    p = plan(desired, observed, max_deregistrations=10)
    results = list(store.apply([Action("register", s) for s in p.register], lambda: False))
    failed = [a.service.jail for a, error in results if error is not None]
    assert failed == ["race3"]
    assert len(results) == 10
    held = nodes(catalog)
    assert held["race3.my.domain"]["Address"] == "192.0.2.33" and "jailsyncd-owner" not in held["race3.my.domain"]["Meta"]
    assert not catalog.get("/v1/catalog/node/race3.my.domain")["Services"]
    assert all(catalog.get(f"/v1/catalog/node/race{i}.my.domain")["Services"] for i in range(10) if i != 3)


def test_foreign_and_agent_nodes_are_left_alone(catalog: ConsulServer, tmp_path: Path, workdir: Workdir) -> None:
    catalog.put("/v1/catalog/register", {"Node": "web1.my.domain", "Address": "192.0.2.10", "Service": {"Service": "legacy"}})
    workdir.add("web1", jid=1, status=1, ip4_addr="127.0.44.1")
    workdir.add("agentnode", jid=2, status=1, ip4_addr="127.0.44.2", host_hostname="jailsyncd-test")  # the dev agent's own node
    workdir.add("fine", jid=3, status=1, ip4_addr="127.0.44.3")
    config = catalog_config(tmp_path, workdir, catalog, "node1")
    before = {n: catalog.get(f"/v1/catalog/node/{n}") for n in ("web1.my.domain", "jailsyncd-test")}
    rc, events, _ = once(config)
    assert rc == 0
    conflicts = sorted(e["jail"] for e in events if e["event"] == "jail_skipped" and e["reason"] == "conflict")
    assert conflicts == ["agentnode", "web1"]
    after = {n: catalog.get(f"/v1/catalog/node/{n}") for n in ("web1.my.domain", "jailsyncd-test")}
    assert after["web1.my.domain"] == before["web1.my.domain"]
    assert {s["ID"] for s in after["jailsyncd-test"]["Services"].values()} == {s["ID"] for s in before["jailsyncd-test"]["Services"].values()}
    assert "fine.my.domain" in nodes(catalog)
    assert run_cli("purge", "--yes", config=config).returncode == 0
    assert set(nodes(catalog)) == {"web1.my.domain"}


def add_foreign_nodes(consul: ConsulServer, count: int, prefix: str = "foreign") -> None:
    """``count`` external nodes of other owners, each with a service, 64 per transaction."""
    ops = []
    for i in range(count):
        name = f"{prefix}{i:05}"
        ops.append({"Node": {"Verb": "set", "Node": {"Node": name, "Address": f"10.9.{i // 250}.{i % 250}", "Meta": {"jailsyncd-owner": f"other{i % 50}"}}}})
        ops.append({"Service": {"Verb": "set", "Node": name, "Service": {"ID": f"jailsyncd-{name}", "Service": f"web-{name}", "Port": 80}}})
    for start in range(0, len(ops), 64):
        status, body, _ = consul.request("PUT", "/v1/txn", ops[start : start + 64])
        assert status == 200, body


def test_no_op_cost_depends_on_this_hosts_jails_only(catalog: ConsulServer, tmp_path: Path, workdir: Workdir) -> None:
    """Issue 14, items 1 and 4: a no-op cycle of a 20-jail host reads only public
    endpoints, three requests, and about as many bytes with 3,000 foreign nodes in the
    catalog as with none (target <= 100 KiB). The old read (/v1/internal/ui/nodes plus
    the unfiltered /v1/catalog/nodes) grew with every node of the cluster."""
    for i in range(20):
        workdir.add(f"cost{i:02}", jid=i + 1, status=1, ip4_addr=f"127.0.43.{i + 1}")
    config = catalog_config(tmp_path, workdir, catalog, "node1")
    assert once(config)[0] == 0
    alone = summary(once(config)[1])
    add_foreign_nodes(catalog, 3000)
    try:
        crowded = summary(once(config)[1])
    finally:
        catalog.put("/v1/txn", [{"Node": {"Verb": "delete", "Node": {"Node": f"foreign{i:05}"}}} for i in range(64)])
    assert (crowded["writes"], crowded["requests"]) == (0, 3), crowded
    assert crowded["bytes_read"] <= 100 * 1024, crowded
    assert abs(crowded["bytes_read"] - alone["bytes_read"]) < 1024, (alone, crowded)


def test_a_name_taken_by_another_node_is_a_conflict_and_only_asked_for(catalog: ConsulServer, tmp_path: Path, workdir: Workdir) -> None:
    """Without the list of every node, a clash is found by asking for the names this
    cycle wants to create (and the cas create refuses it anyway)."""
    add_foreign_nodes(catalog, 3, prefix="taken")
    workdir.add("clash", jid=1, status=1, ip4_addr="127.0.44.1", host_hostname="taken00001")
    workdir.add("fine", jid=2, status=1, ip4_addr="127.0.44.2", host_hostname="fine.my.domain")
    config = catalog_config(tmp_path, workdir, catalog, "node1")
    rc, events, err = once(config)
    skips = [e for e in events if e["event"] == "jail_skipped"]
    assert [(e["jail"], e["reason"]) for e in skips] == [("clash", "conflict")], err
    assert nodes(catalog)["taken00001"]["Meta"]["jailsyncd-owner"] == "other1", "never overwritten"
    assert "fine.my.domain" in nodes(catalog)
    again = summary(once(config)[1])
    # Ours, their checks, our services, and the one name we want that is taken.
    assert (again["writes"], again["requests"]) == (0, 4)


def test_nodes_without_the_service_id_meta_or_edited_by_hand_are_read_whole(catalog: ConsulServer, tmp_path: Path, workdir: Workdir) -> None:
    """Nodes written by an older jailsyncd carry no jailsyncd-service-id: they are read
    one by one, then get the meta (one node write each) and are read in one
    transaction from then on; a service whose ID was changed by hand makes the
    batched read fail, and the nodes are read whole instead (an orphan to remove)."""
    for i in range(3):
        workdir.add(f"old{i}", jid=i + 1, status=1, ip4_addr=f"127.0.45.{i + 1}")
    config = catalog_config(tmp_path, workdir, catalog, "node1")
    assert once(config)[0] == 0
    names = sorted(nodes(catalog))
    for name in names:
        node = nodes(catalog)[name]
        meta = {k: v for k, v in node["Meta"].items() if k != "jailsyncd-service-id"}
        catalog.put("/v1/txn", [{"Node": {"Verb": "set", "Node": {"Node": name, "Address": node["Address"], "Meta": meta}}}])
    s = summary(once(config)[1])
    assert (s["updated"], s["requests"]) == (3, 2 + 3 + 1), s  # nodes, checks, 3 whole-node reads, 1 write
    assert all("jailsyncd-service-id" in n["Meta"] for n in nodes(catalog).values())
    assert summary(once(config)[1])["requests"] == 3
    # By hand: the service of old0 gets another ID of ours (an orphan on our node).
    catalog.put("/v1/txn", [
        {"Service": {"Verb": "delete", "Node": names[0], "Service": {"ID": "jailsyncd-old0", "Service": "old0"}}},
        {"Service": {"Verb": "set", "Node": names[0], "Service": {"ID": "jailsyncd-stray", "Service": "stray", "Port": 1}}},
    ])
    rc, events, err = once(config)
    stray = [e for e in events if e["event"] == "drift_detected" and e.get("service_id") == "jailsyncd-stray"]
    assert stray and stray[0]["kind"] == "orphan", err  # the batched read failed; the node read whole
    # One cycle: the missing service is created on its own (still existing) node, at
    # the index the node was read at, and only the orphan's service is removed from it.
    assert rc == 0, err
    services = catalog.get(f"/v1/catalog/node-services/{names[0]}")["Services"]
    assert [s["ID"] for s in services] == ["jailsyncd-old0"], services
    assert summary(once(config)[1])["writes"] == 0


def test_a_cold_start_among_taken_names_conflicts_on_them_and_creates_the_rest(catalog: ConsulServer, tmp_path: Path, workdir: Workdir) -> None:
    """A cold start of 100 new jails registers them while CBSD is read, without asking
    first whether their node names are taken: each node is created with cas at
    index 0, so a taken name (in any letter case: Consul's node names are
    case-insensitive) is refused by Consul, never overwritten; the rest of its
    transaction goes again without it, and the cycle's plan asks about the refused
    names alone and reports each as a conflict, not as a failure."""
    add_foreign_nodes(catalog, 5, prefix="many")
    for i in range(5):
        # "MANY00004" is taken by "many00004".
        name = f"many0000{i}" if i < 4 else "MANY00004"
        workdir.add(f"clash{i}", jid=i + 1, status=1, ip4_addr=f"127.0.46.{i + 1}", host_hostname=name)
    for i in range(95):
        workdir.add(f"free{i}", jid=10 + i, status=1, ip4_addr=f"127.0.47.{i + 1}", host_hostname=f"free{i:03}.my.domain")
    config = catalog_config(tmp_path, workdir, catalog, "node1")
    rc, events, err = once(config)
    assert rc == 0, err
    assert sorted(e["jail"] for e in events if e["event"] == "jail_skipped" and e["reason"] == "conflict") == [f"clash{i}" for i in range(5)], err
    assert not [e for e in events if e["event"] == "action_failed"]
    assert all(n["Meta"]["jailsyncd-owner"].startswith("other") for name, n in nodes(catalog).items() if name.startswith("many"))
    assert sum(1 for name in nodes(catalog) if name.startswith("free")) == 95
    assert sorted(e["jail"] for e in events if e["event"] == "service_registered") == sorted(f"free{i}" for i in range(95))
    # Ours (none) and their checks; the first transaction (32 jails, 2 operations
    # each, the 5 clashes first in jname order) refused and sent again without them,
    # the other 68 free ones in transactions of at most 64 operations; one read-only
    # transaction asking about the 5 refused names.
    writes = 2 + -(-68 * 2 // 64)
    assert (summary(events)["requests"], summary(events)["writes"]) == (2 + writes + 1, writes), summary(events)
    assert summary(events)["registered"] == 95 and summary(events)["failed"] == 0


def test_many_taken_names_are_asked_for_64_per_read_only_transaction(catalog: ConsulServer, tmp_path: Path, workdir: Workdir) -> None:
    """Whether node names are taken is asked 64 per read-only transaction of Node
    gets (100 names: 2 requests, not 4 filtered reads or 100 lookups), in any letter
    case."""
    add_foreign_nodes(catalog, 5, prefix="many")
    store = ConsulCatalog(load_settings(catalog_config(tmp_path, workdir, catalog, "node1"), env={}).consul)
    names = [f"many0000{i}" for i in range(4)] + ["MANY00004"] + [f"free{i:03}.my.domain" for i in range(95)]
    before = store.requests
    assert store.places_taken(frozenset(names)) == frozenset(names[:5])
    assert store.requests - before == 2


def test_a_node_address_edited_by_hand_is_drift_and_repaired(catalog: ConsulServer, tmp_path: Path, workdir: Workdir) -> None:
    """The node's own address is what ``<node>.node.consul`` answers in catalog mode:
    one changed by hand (the node re-registered with another address, its meta kept)
    is drift like the service's address: found (``node_address``), written back, and
    then left alone. Before, only the service's address was compared, so the wrong
    node address stayed for good while ``plan`` said Consul matched CBSD."""
    workdir.add("web1", jid=3, status=1, ip4_addr="127.0.46.1", host_hostname="web1.my.domain")
    config = catalog_config(tmp_path, workdir, catalog, "node1")
    assert once(config)[0] == 0
    node = nodes(catalog)["web1.my.domain"]
    catalog.put("/v1/catalog/register", {"Node": "web1.my.domain", "Address": "127.0.46.99", "NodeMeta": node["Meta"]})
    assert nodes(catalog)["web1.my.domain"]["Address"] == "127.0.46.99"
    plan_out = run_cli("plan", "--json", config=config)
    assert plan_out.returncode == 0, plan_out.stderr
    [update] = json.loads(plan_out.stdout)["update"]
    assert update["fields"] == ["node_address"] and update["changes"]["node_address"] == {"from": "127.0.46.99", "to": "127.0.46.1"}, update
    rc, events, err = once(config)
    assert rc == 0, err
    [drift] = [e for e in events if e["event"] == "drift_detected"]
    assert drift["kind"] == "changed" and list(drift["fields"]) == ["node_address"], drift
    assert nodes(catalog)["web1.my.domain"]["Address"] == "127.0.46.1"
    assert nodes(catalog)["web1.my.domain"]["Meta"] == node["Meta"]
    assert summary(once(config)[1])["writes"] == 0


@pytest.mark.parametrize("change", ["stop", "rename"])
def test_a_node_name_handed_to_another_jail_in_one_cycle(catalog: ConsulServer, tmp_path: Path, workdir: Workdir, change: str) -> None:
    """Two jails share a host_hostname (a clone, or ``cbsd jrename``, which keeps it):
    the node goes to the first jname, the other is a conflict. When the holder stops
    (or is renamed: its row goes, a new jname with the same host_hostname comes), the
    node passes to the other jail in the same cycle: its registration (a create-only
    ``cas`` of the node) used to be sent before the holder's node was deleted, so
    Consul answered "index is stale", ``once`` exited 1 and the jail was missing until
    the next cycle. A deletion that frees a node wanted by this cycle now goes first."""
    workdir.add("a", jid=1, status=1, ip4_addr="127.0.47.1", host_hostname="same.my.domain")
    workdir.add("b", jid=2, status=1, ip4_addr="127.0.47.2", host_hostname="same.my.domain")
    config = catalog_config(tmp_path, workdir, catalog, "node1")
    code, events, err = once(config)
    assert code == 0, err
    assert catalog.get("/v1/catalog/node/same.my.domain")["Services"]["jailsyncd-a"]["Address"] == "127.0.47.1"
    if change == "stop":
        workdir.stop("a")
        wanted = "jailsyncd-b"
    else:
        workdir.destroy("a")
        workdir.add("0renamed", jid=1, status=1, ip4_addr="127.0.47.1", host_hostname="same.my.domain")
        wanted = "jailsyncd-0renamed"
    code, events, err = once(config)
    assert code == 0, err
    assert not [e for e in events if e["event"] == "action_failed"]
    assert set(catalog.get("/v1/catalog/node/same.my.domain")["Services"]) == {wanted}
    code, events, err = once(config)
    assert code == 0 and summary(events)["writes"] == 0, err


def node_services(consul: ConsulServer, node: str) -> list[str]:
    answer = consul.get(f"/v1/catalog/node-services/{node}")
    return sorted(s["ID"] for s in (answer or {}).get("Services") or [])


def test_our_service_removed_by_hand_from_our_node_is_put_back(catalog: ConsulServer, tmp_path: Path, workdir: Workdir) -> None:
    """The jail's service deleted by hand while its node stays: the next cycle puts it
    back on the node it owns. Before, every cycle tried to create the node anew
    (``cas`` at index 0), which Consul refused as stale, so the jail stayed out of
    Consul for good with an ``action_failed`` on every cycle."""
    workdir.add("web1", jid=3, status=1, ip4_addr="127.0.46.11", host_hostname="web1.my.domain")
    config = catalog_config(tmp_path, workdir, catalog, "node1")
    assert once(config)[0] == 0
    catalog.put("/v1/txn", [{"Service": {"Verb": "delete", "Node": "web1.my.domain", "Service": {"ID": "jailsyncd-web1", "Service": "web1"}}}])
    assert node_services(catalog, "web1.my.domain") == []
    rc, events, err = once(config)
    assert rc == 0, err
    assert not [e for e in events if e["event"] == "action_failed"], err
    assert node_services(catalog, "web1.my.domain") == ["jailsyncd-web1"]
    assert nodes(catalog)["web1.my.domain"]["Meta"]["jailsyncd-owner"] == "node1"
    assert summary(once(config)[1])["writes"] == 0


def test_a_renamed_jail_keeping_its_node_name_moves_in_one_cycle(catalog: ConsulServer, tmp_path: Path, workdir: Workdir) -> None:
    """A jail renamed in CBSD (``UPDATE jails SET jname``) keeps its host_hostname, so
    the new service ID wants the node the old one holds. One cycle moves it: the new
    service is on the node and the old one is gone, with no failed action; before,
    the create of the node failed (it still existed) and the old one's node delete
    went through, so the jail was missing until the next cycle."""
    workdir.add("www2", jid=3, status=1, ip4_addr="127.0.46.21", host_hostname="www2.my.domain")
    config = catalog_config(tmp_path, workdir, catalog, "node1")
    assert once(config)[0] == 0
    conn = sqlite3.connect(workdir.node_db)  # as CBSD's jrename leaves the row
    with conn:
        conn.execute("UPDATE jails SET jname = 'www3' WHERE jname = 'www2'")
    conn.close()
    rc, events, err = once(config)
    assert rc == 0, err
    assert not [e for e in events if e["event"] == "action_failed"], err
    assert node_services(catalog, "www2.my.domain") == ["jailsyncd-www3"]
    meta = nodes(catalog)["www2.my.domain"]["Meta"]
    assert (meta["jailsyncd-service-id"], meta["cbsd-jname"]) == ("jailsyncd-www3", "www3")
    assert summary(once(config)[1])["writes"] == 0


def test_services_others_put_on_our_node_are_never_deleted(catalog: ConsulServer, tmp_path: Path, workdir: Workdir) -> None:
    """Someone registers a service of their own (say an exporter) on a jail's node. It
    is not jailsyncd's (ownership is the node's meta *and* the jailsyncd- ID), so a
    stop of the jail, a purge or a renamed node remove only jailsyncd's service and
    checks and leave the node with that service; a start puts ours back beside it.
    Before, the node was deleted with everything on it. A node of ours left with no
    service at all is removed."""
    workdir.add("web1", jid=3, status=1, ip4_addr="127.0.46.31", host_hostname="web1.my.domain")
    config = catalog_config(tmp_path, workdir, catalog, "node1")
    assert once(config)[0] == 0
    exporter = {"ID": "node-exporter", "Service": "node-exporter", "Port": 9100}
    catalog.put("/v1/catalog/register", {"Node": "web1.my.domain", "Address": "127.0.46.31", "SkipNodeUpdate": True, "Service": exporter})
    assert summary(once(config)[1])["writes"] == 0
    workdir.stop("web1")
    rc, events, err = once(config)
    assert rc == 0 and summary(events)["deregistered"] == 1, err
    assert node_services(catalog, "web1.my.domain") == ["node-exporter"]
    assert summary(once(config)[1])["writes"] == 0, "a node kept for another's service is no drift"
    workdir.start("web1", jid=4)
    rc, events, err = once(config)
    assert rc == 0 and summary(events)["registered"] == 1, err
    assert node_services(catalog, "web1.my.domain") == ["jailsyncd-web1", "node-exporter"]
    assert summary(once(config)[1])["writes"] == 0
    # A renamed node (host_hostname changed): the old node keeps the exporter.
    workdir.set("web1", host_hostname="web9.my.domain")
    rc, events, err = once(config)
    assert rc == 0, err
    assert node_services(catalog, "web1.my.domain") == ["node-exporter"]
    assert node_services(catalog, "web9.my.domain") == ["jailsyncd-web1"]
    proc = run_cli("purge", "--yes", config=config)
    assert proc.returncode == 0, proc.stderr
    assert "web9.my.domain" not in nodes(catalog)
    assert node_services(catalog, "web1.my.domain") == ["node-exporter"]
    # Its owner removes the exporter: the empty node of ours goes with the next cycle.
    workdir.stop("web1")
    catalog.put("/v1/catalog/deregister", {"Node": "web1.my.domain", "ServiceID": "node-exporter"})
    rc, events, err = once(config)
    assert rc == 0, err
    assert "web1.my.domain" not in nodes(catalog)
    assert summary(once(config)[1])["writes"] == 0


def test_two_jails_swapping_their_host_hostnames(catalog: ConsulServer, tmp_path: Path, workdir: Workdir) -> None:
    """``cbsd jset jname=a host_hostname=b.my.domain`` and the reverse: each node
    moves to where the other one was, in one cycle, and the next cycle writes
    nothing (a cycle of moves that could be refused on every cycle for ever, if the
    writes freeing a node did not go with, or before, the ones taking it)."""
    workdir.add("a", jid=1, status=1, ip4_addr="127.0.47.11", host_hostname="a.my.domain")
    workdir.add("b", jid=2, status=1, ip4_addr="127.0.47.12", host_hostname="b.my.domain")
    config = catalog_config(tmp_path, workdir, catalog, "node1")
    code, events, err = once(config)
    assert code == 0, err
    workdir.set("a", host_hostname="b.my.domain")
    workdir.set("b", host_hostname="a.my.domain")
    code, events, err = once(config)
    assert code == 0, err
    assert set(catalog.get("/v1/catalog/node/b.my.domain")["Services"]) == {"jailsyncd-a"}
    assert set(catalog.get("/v1/catalog/node/a.my.domain")["Services"]) == {"jailsyncd-b"}
    code, events, err = once(config)
    assert code == 0 and summary(events)["writes"] == 0, err
