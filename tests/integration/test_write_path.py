"""Consul is never left wrong (issue 10): one failing write fails one action, an
empty ``jails`` table refuses deregistrations, two hosts sharing ``host.name`` never
remove each other's entries, ``plan`` prints every row kind, and the heartbeat is not
a jail. Against a real Consul 1.8.7 and CBSD-shaped SQLite files."""

from __future__ import annotations

import json
import sqlite3
import urllib.request
from pathlib import Path

import pytest
from harness import ConsulServer, free_port, log_events, run_cli, wait_for, write_config

from jailsyncd.adapters.consul import connect
from jailsyncd.adapters.consul.agent import record_of
from jailsyncd.errors import ConsulRejected, ExitCode
from jailsyncd.model import Action, Record, Service
from testing.sample import Workdir
from jailsyncd.settings import load_settings

pytestmark = pytest.mark.integration


def once(config: Path, *args: str) -> tuple[int, list[dict], str]:
    proc = run_cli("once", *args, config=config)
    return proc.returncode, log_events(proc.stderr), proc.stderr


def events(evs: list[dict], name: str) -> list[dict]:
    return [e for e in evs if e["event"] == name]


def last_line(stderr: str) -> str:
    return stderr.strip().splitlines()[-1]


# -- item 1: one failing write fails one action ---------------------------------------------


def service(jail: str, address: str, addresses: tuple[str, ...] = ()) -> Record:
    """A jail's service as agent mode registers it (every one of ``addresses`` a
    tagged address)."""
    return record_of(Service(
        service_id=f"jailsyncd-{jail}", name=jail, address=address, port=0, tags=frozenset({"jail"}),
        meta=(("cbsd-jname", jail), ("jailsyncd-owner", "node1")), addresses=addresses,
    ))


def test_a_500_naming_the_payload_fails_that_action_and_the_rest_applies(consul: ConsulServer, tmp_path: Path, workdir: Workdir) -> None:
    """Consul 1.8.7 answers 500 'Service tagged address "lan_ipv6" must be a valid ipv6
    address' for an IPv4-mapped IPv6 tagged address (Go's net.IP.To4 accepts it). The
    payload is built by hand: the CBSD parser may reject such an address earlier, but
    the write path must hold for any payload Consul refuses. Before the fix, the 500
    ended the cycle: the registration and the deregistration after it never ran."""
    settings = load_settings(write_config(tmp_path / "c.toml", workdir=workdir.root, consul=consul), env={})
    old = service("old1", "127.0.31.9")
    consul.put("/v1/agent/service/register", {"ID": old.service_id, "Name": old.name, "Meta": dict(old.meta)})
    bad = service("bad1", "127.0.31.1", ("127.0.31.1", "::ffff:127.0.31.2"))  # lan_ipv6 and wan_ipv6
    good = service("good1", "127.0.31.3")
    store = connect(settings.consul)
    try:
        outcome = list(store.apply([Action("register", bad), Action("register", good), Action("deregister", old, old)], lambda: False))
    finally:
        store.close()
    assert [(a.service.jail, type(e).__name__ if e else None) for a, e in outcome] == [("bad1", "ConsulRejected"), ("good1", None), ("old1", None)]
    error = str(outcome[0][1])
    assert error.startswith("jail bad1: PUT http://") and "500" in error and "lan_ipv6" in error
    assert set(consul.services()) == {"jailsyncd-good1"}


def test_rejected_payloads_fail_their_jails_and_once_names_them(consul: ConsulServer, tmp_path: Path, workdir: Workdir) -> None:
    """A CBSD node name over Consul's 512-character meta limit (``cbsd-host``): every
    registration is refused (400), each alone; the stale entry is still deregistered;
    ``once`` exits 77 with one line naming every jail concerned."""
    (workdir.root / "nodename").write_text("n" * 600 + "\n")
    consul.put("/v1/agent/service/register", {"ID": "jailsyncd-stale", "Name": "stale", "Meta": {"jailsyncd-owner": "node1"}})
    workdir.add("a1", jid=1, status=1, ip4_addr="127.0.28.1")
    workdir.add("a2", jid=2, status=1, ip4_addr="127.0.28.2")
    config = write_config(tmp_path / "c.toml", workdir=workdir.root, consul=consul)
    rc, evs, stderr = once(config)
    assert rc == ExitCode.CONSUL_REFUSED
    assert sorted(e["jail"] for e in events(evs, "action_failed")) == ["a1", "a2"]
    [summary] = events(evs, "cycle_finished")
    assert (summary["failed"], summary["deregistered"]) == (2, 1)
    line = last_line(stderr)
    assert line.startswith("jailsyncd: 2 of 3 actions failed, for a1, a2") and "400" in line, line
    assert consul.services() == {}


# -- item 4: an empty jails table is not "no jails" ---------------------------------------


def test_empty_jails_table_refuses_deregistration_whatever_the_count(consul: ConsulServer, tmp_path: Path, workdir: Workdir) -> None:
    workdir.add("w1", jid=1, status=1, ip4_addr="127.0.32.1")
    workdir.add("w2", jid=2, status=1, ip4_addr="127.0.32.2")
    config = write_config(tmp_path / "c.toml", workdir=workdir.root, consul=consul)  # max_deregistrations: 10
    assert once(config)[0] == 0
    with sqlite3.connect(workdir.node_db) as conn:
        conn.execute("DELETE FROM jails")
    rc, evs, stderr = once(config)
    assert rc == ExitCode.SAFETY_REFUSED, stderr
    assert "jails table is empty" in last_line(stderr) and "--force" in last_line(stderr)
    [refusal] = events(evs, "deregistrations_refused")
    assert sorted(refusal["jails"]) == ["w1", "w2"]
    assert set(consul.services()) == {"jailsyncd-w1", "jailsyncd-w2"}
    plan = json.loads(run_cli("plan", "--json", config=config).stdout)
    assert [r["jail"] for r in plan["refused"]] == ["w1", "w2"] and plan["deregister"] == []
    rc, _, stderr = once(config, "--force")
    assert rc == 0, stderr
    assert consul.services() == {}


def test_rows_with_every_jail_stopped_deregister_normally(consul: ConsulServer, tmp_path: Path, workdir: Workdir) -> None:
    workdir.add("w1", jid=1, status=1, ip4_addr="127.0.32.1")
    config = write_config(tmp_path / "c.toml", workdir=workdir.root, consul=consul)
    assert once(config)[0] == 0
    workdir.stop("w1")
    rc, evs, stderr = once(config)
    assert rc == 0, stderr
    assert events(evs, "cycle_finished")[0]["deregistered"] == 1 and consul.services() == {}


# -- item 6: two hosts, one owner name ------------------------------------------------------


@pytest.mark.parametrize("mode", ["catalog", "agent"])
def test_two_cbsd_nodes_with_one_host_name_never_deregister_each_other(mode: str, catalog: ConsulServer, tmp_path: Path) -> None:
    """Two CBSD nodes (``cbsd-a``, ``cbsd-b``) both configured with ``host.name =
    "shared"``: in catalog mode on one cluster, in agent mode on one shared agent.
    Before the fix each ``once`` deregistered the other's entries as orphans."""
    a, b = Workdir.create(tmp_path / "a", nodename="cbsd-a"), Workdir.create(tmp_path / "b", nodename="cbsd-b")
    a.add("ja", jid=1, status=1, ip4_addr="127.0.33.1", host_hostname="ja.my.domain")
    b.add("jb", jid=2, status=1, ip4_addr="127.0.33.2", host_hostname="jb.my.domain")
    extra = 'mode = "catalog"' if mode == "catalog" else ""
    ca = write_config(tmp_path / "a.toml", workdir=a.root, consul=catalog, host="shared", consul_extra=extra)
    cb = write_config(tmp_path / "b.toml", workdir=b.root, consul=catalog, host="shared", consul_extra=extra)

    def held() -> set[str]:
        if mode == "catalog":
            return {n["Node"] for n in catalog.get("/v1/catalog/nodes") if n["Node"] != "jailsyncd-test"}
        return set(catalog.services())

    assert once(ca)[0] == 0
    first = held()
    assert len(first) == 1
    for config, this, other in ((cb, "cbsd-b", "cbsd-a"), (ca, "cbsd-a", "cbsd-b")):
        rc, evs, stderr = once(config)
        assert rc == ExitCode.SAFETY_REFUSED, stderr
        line = last_line(stderr)
        assert f"CBSD node {other}" in line and f"this is CBSD node {this}" in line, line
        [collision] = events(evs, "owner_collision")
        assert (collision["other_cbsd_node"], collision["this_cbsd_node"]) == (other, this)
        assert not events(evs, "service_deregistered")
        assert len(held()) == 2 and first <= held()
    purge = run_cli("purge", "--yes", config=cb)  # purges its own entry only
    assert purge.returncode == ExitCode.SAFETY_REFUSED, purge.stderr
    assert held() == first


def test_under_run_a_collision_is_an_error_every_cycle_and_counted_in_metrics(catalog: ConsulServer, tmp_path: Path, start_daemon) -> None:
    """Item 6 under ``run`` (catalog mode): the daemon of CBSD node ``cbsd-b`` never
    removes ``cbsd-a``'s node, logs ``owner_collision`` naming both nodes on every
    cycle, and ``jailsyncd_drift_total{kind="collision"}`` counts it once (drift
    counts transitions)."""
    a, b = Workdir.create(tmp_path / "a", nodename="cbsd-a"), Workdir.create(tmp_path / "b", nodename="cbsd-b")
    a.add("ja", jid=1, status=1, ip4_addr="127.0.33.1", host_hostname="ja.my.domain")
    ca = write_config(tmp_path / "a.toml", workdir=a.root, consul=catalog, host="shared", consul_extra='mode = "catalog"')
    assert once(ca)[0] == 0
    port = free_port()
    extra = f'[sync]\ninterval = "1h"\njitter = "0s"\n[metrics]\nlisten = "127.0.0.1:{port}"\n'
    cb = write_config(tmp_path / "b.toml", workdir=b.root, consul=catalog, host="shared", consul_extra='mode = "catalog"', extra=extra)
    daemon = start_daemon(cb)
    daemon.kick()
    wait_for(lambda: len(daemon.events("cycle_finished")) >= 2, timeout=10, what="a second cycle")
    collisions = daemon.events("owner_collision")
    assert len(collisions) >= 2 and {(e["other_cbsd_node"], e["this_cbsd_node"], e["node"]) for e in collisions} == {("cbsd-a", "cbsd-b", "ja.my.domain")}
    assert all(e["level"] == "error" for e in collisions)
    assert not daemon.events("service_deregistered")
    assert "ja.my.domain" in {n["Node"] for n in catalog.get("/v1/catalog/nodes")}
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert 'jailsyncd_drift_total{kind="collision"} 1.0' in text.splitlines()


# -- item 7 and 20: plan rows with checks; the heartbeat is not a jail ---------------------

HEALTH = 'interval = "5s"\ntimeout = "500ms"\ncount = 1\nheartbeat_ttl = "30s"'


def test_plan_with_changed_checks_and_the_heartbeat_not_counted(consul: ConsulServer, tmp_path: Path, workdir: Workdir) -> None:
    """Health on (the jail's address is on loopback: ping and TCP stay on this host).
    ``once`` counts one registration, not two (the heartbeat service is not a jail);
    ``report`` has no row for it. Then the tags gain ``consul.check=tcp``: ``plan``
    printed a TypeError before the fix; now text and JSON show the checks change."""
    workdir.add("web1", jid=1, status=1, ip4_addr="127.0.34.1", tags="consul.port=80")
    config = write_config(tmp_path / "c.toml", workdir=workdir.root, consul=consul, health=HEALTH)
    rc, evs, stderr = once(config)
    assert rc == 0, stderr
    [summary] = events(evs, "cycle_finished")
    assert summary["registered"] == 1 and "jailsyncd.heartbeat" in consul.services()
    assert events(evs, "heartbeat_service_registered")
    log = tmp_path / "once.log"
    log.write_text(stderr)
    report = json.loads(run_cli("report", "--json", str(log)).stdout)
    assert list(report["jails"]) == ["web1"]
    workdir.set("web1", tags="consul.port=80,consul.check=tcp")
    proc = run_cli("plan", config=config)
    assert proc.returncode == 0, proc.stderr
    assert "checks: jailsyncd-web1:alive,jailsyncd-web1:ping -> jailsyncd-web1:alive,jailsyncd-web1:ping,jailsyncd-web1:tcp" in proc.stdout
    data = json.loads(run_cli("plan", "--json", config=config).stdout)
    assert [(u["jail"], u["fields"]) for u in data["update"]] == [("web1", ["checks"])]
