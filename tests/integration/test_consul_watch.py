"""The Consul watch (issue 13, target 1): a running daemon repairs what is changed by
hand in Consul within seconds, although its periodic cycle is an hour away and the
CBSD watcher is off, so only the blocking query can explain the repair. Against the
real Consul 1.8.7: hand edits through the agent API (agent mode) and the catalog API
(catalog mode), a Consul restart while a blocking query is open, and an index that
goes backwards after a snapshot restore.

Latency figures are the benchmark's (bench/run.py); the deadlines here only tell a
watch-driven repair (about a second) from none at all (an hour).
"""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

import pytest
from harness import ConsulServer, wait_for, write_config

from testing.sample import Workdir

pytestmark = pytest.mark.integration

#: No periodic cycle and no CBSD watcher within the test: only the Consul watch can start a cycle.
QUIET = "[sync]\ninterval = \"1h\"\njitter = \"0s\"\nwatch_interval = \"1h\"\n"
#: A repair the watch drives takes about a second; without it, an hour.
REPAIRED_WITHIN = 5.0


def consul_cycles(daemon) -> int:
    return sum("consul" in e["reasons"] for e in daemon.events("cycle_started"))


def settle(daemon, quiet: float = 1.5, timeout: float = 15) -> None:
    """Wait until no cycle has started for ``quiet`` seconds (the watch's first answer
    and the agent syncing our own writes each ask for one)."""
    deadline = time.monotonic() + timeout
    seen, since = -1, time.monotonic()
    while True:
        count = len(daemon.events("cycle_started"))
        if count != seen:
            seen, since = count, time.monotonic()
        elif time.monotonic() - since >= quiet and daemon.finished_cycles() == count:
            return
        assert time.monotonic() < deadline, "cycles keep starting"
        time.sleep(0.1)


def test_agent_mode_repairs_a_hand_deregistration_and_a_hand_edit(consul: ConsulServer, tmp_path: Path, workdir: Workdir, start_daemon) -> None:
    workdir.add("web1", jid=3, status=1, ip4_addr="127.0.30.1")
    workdir.add("db1", jid=4, status=1, ip4_addr="127.0.30.2")
    daemon = start_daemon(write_config(tmp_path / "c.toml", workdir=workdir.root, consul=consul, extra=QUIET))
    settle(daemon)
    assert {"jailsyncd-web1", "jailsyncd-db1"} <= set(consul.services())
    before = consul_cycles(daemon)

    consul.put("/v1/agent/service/deregister/jailsyncd-web1")
    wait_for(lambda: "jailsyncd-web1" in consul.services(), timeout=REPAIRED_WITHIN, what="web1 registered again")

    edited = {**consul.services()["jailsyncd-db1"]}
    body = {"ID": "jailsyncd-db1", "Name": edited["Service"], "Address": "127.0.99.99", "Port": edited["Port"], "Tags": ["by-hand"], "Meta": edited["Meta"]}
    consul.put("/v1/agent/service/register", body)
    wait_for(lambda: consul.services()["jailsyncd-db1"]["Address"] == "127.0.30.2", timeout=REPAIRED_WITHIN, what="db1's address restored")
    assert "by-hand" not in consul.services()["jailsyncd-db1"]["Tags"]
    assert consul_cycles(daemon) > before
    kinds = {(e["kind"], e["jail"]) for e in daemon.events("drift_detected")}
    assert {("missing", "web1"), ("changed", "db1")} <= kinds


def test_agent_mode_ignores_other_nodes_and_health_writes(consul: ConsulServer, tmp_path: Path, workdir: Workdir, start_daemon) -> None:
    """What does not concern this host wakes no cycle: another node's services, and
    a TTL check update (the heartbeat, a health round) on the agent."""
    workdir.add("web1", jid=3, status=1, ip4_addr="127.0.30.1")
    daemon = start_daemon(write_config(tmp_path / "c.toml", workdir=workdir.root, consul=consul, extra=QUIET))
    settle(daemon)
    cycles = len(daemon.events("cycle_started"))
    consul.put("/v1/agent/service/register", {"ID": "ttl-only", "Name": "other", "Check": {"CheckID": "ttl-only-check", "TTL": "60s"}})
    settle(daemon)
    cycles = len(daemon.events("cycle_started"))
    try:
        for status in ("passing", "critical", "passing"):
            consul.put("/v1/agent/check/update/ttl-only-check", {"Status": status, "Output": status})
        for port in (1, 2, 3):
            consul.put("/v1/catalog/register", {"Node": "elsewhere", "Address": "127.0.0.9", "Service": {"ID": "x", "Service": "x", "Port": port}})
        time.sleep(2.0)  # a wake-up would ask for a cycle within milliseconds
        assert len(daemon.events("cycle_started")) == cycles
    finally:
        consul.put("/v1/agent/service/deregister/ttl-only")
        consul.put("/v1/catalog/deregister", {"Node": "elsewhere"})


def catalog_config(tmp: Path, workdir: Workdir, consul: ConsulServer, extra: str = QUIET) -> Path:
    return write_config(tmp / "cat.toml", workdir=workdir.root, consul=consul, consul_extra='mode = "catalog"', extra=extra)


def node_names(consul: ConsulServer) -> set[str]:
    return {n["Node"] for n in consul.get("/v1/catalog/nodes?node-meta=jailsyncd-owner:node1")}


def test_catalog_mode_repairs_a_node_deregistered_by_hand(catalog: ConsulServer, tmp_path: Path, workdir: Workdir, start_daemon) -> None:
    workdir.add("web1", jid=3, status=1, ip4_addr="127.0.30.1")
    workdir.add("db1", jid=4, status=1, ip4_addr="127.0.30.2")
    daemon = start_daemon(catalog_config(tmp_path, workdir, catalog))
    settle(daemon)
    assert node_names(catalog) == {"web1.my.domain", "db1.my.domain"}
    catalog.put("/v1/catalog/deregister", {"Node": "web1.my.domain"})
    wait_for(lambda: node_names(catalog) == {"web1.my.domain", "db1.my.domain"}, timeout=REPAIRED_WITHIN, what="node web1 registered again")
    # A service edited by hand on one of our nodes (the node itself untouched).
    service = catalog.get("/v1/catalog/node-services/db1.my.domain")["Services"][0]
    catalog.put("/v1/catalog/register", {"Node": "db1.my.domain", "Address": "127.0.30.2", "SkipNodeUpdate": True, "Service": {**service, "Port": 4242}})
    wait_for(lambda: catalog.get("/v1/catalog/node-services/db1.my.domain")["Services"][0]["Port"] != 4242, timeout=REPAIRED_WITHIN, what="db1's port restored")
    assert consul_cycles(daemon) >= 2


def test_a_consul_restart_during_a_blocking_query(consul_bin: str, tmp_path: Path, workdir: Workdir, start_daemon) -> None:
    """Consul goes away while the watch's query is open: the watch retries with a
    growing delay (a handful of requests over the outage, never a busy loop), and
    once a new Consul answers (its index far below the last one seen: reset) the host
    converges without any periodic cycle, and later hand edits are repaired again."""
    server = ConsulServer(consul_bin).start()
    try:
        workdir.add("web1", jid=3, status=1, ip4_addr="127.0.30.1")
        daemon = start_daemon(write_config(tmp_path / "c.toml", workdir=workdir.root, consul=server, extra=QUIET))
        settle(daemon)
        for _ in range(20):  # move the index well above where a new dev agent starts
            server.put("/v1/kv/jailsyncd-test-filler", "x")
            server.put("/v1/catalog/register", {"Node": "filler", "Address": "127.0.0.9", "Service": {"ID": "f", "Service": "f"}})
            server.put("/v1/catalog/deregister", {"Node": "filler"})
        server.stop()
        outage = 6.0
        time.sleep(outage)  # the outage itself: nothing to wait for
        failures = daemon.events("consul_watch_failed")
        # 1, 2, 4 s apart: at most 4 attempts in 6 s (a busy loop would make thousands).
        assert 1 <= len(failures) <= 4, [f["retry_in_s"] for f in failures]
        server.start()  # a fresh, empty dev agent on the same port
        wait_for(lambda: "jailsyncd-web1" in server.services(), timeout=15, what="web1 registered on the new agent")
        assert daemon.events("consul_watch_recovered")
        settle(daemon)
        server.put("/v1/agent/service/deregister/jailsyncd-web1")
        wait_for(lambda: "jailsyncd-web1" in server.services(), timeout=REPAIRED_WITHIN, what="web1 repaired after the restart")
    finally:
        server.stop()


def test_an_index_that_goes_backwards_after_a_snapshot_restore(catalog: ConsulServer, tmp_path: Path, workdir: Workdir, start_daemon) -> None:
    """A snapshot restored over the cluster takes the catalog, and its indexes, back
    to the snapshot's: the watch's index goes backwards, is reset, and the daemon puts
    back what the snapshot lacks."""
    workdir.add("web1", jid=3, status=1, ip4_addr="127.0.30.1")
    daemon = start_daemon(catalog_config(tmp_path, workdir, catalog))
    settle(daemon)
    with urllib.request.urlopen(f"http://{catalog.address}/v1/snapshot", timeout=10) as resp:
        snapshot = resp.read()
    workdir.add("db1", jid=4, status=1, ip4_addr="127.0.30.2")
    daemon.kick()
    wait_for(lambda: node_names(catalog) == {"web1.my.domain", "db1.my.domain"}, timeout=10, what="db1 registered")
    for _ in range(10):  # writes after the snapshot: its index is now well behind
        catalog.put("/v1/kv/jailsyncd-test-filler", "x")
    settle(daemon)
    restore = urllib.request.Request(f"http://{catalog.address}/v1/snapshot", data=snapshot, method="PUT")
    with urllib.request.urlopen(restore, timeout=30):
        pass
    wait_for(lambda: node_names(catalog) == {"web1.my.domain", "db1.my.domain"}, timeout=REPAIRED_WITHIN * 2, what="db1 registered again after the restore")
    assert consul_cycles(daemon) >= 1


@pytest.mark.parametrize("mode", ["agent", "catalog"])
def test_a_cbsd_change_costs_its_writes_and_no_re_read_of_consul(mode: str, catalog: ConsulServer, tmp_path: Path, workdir: Workdir, start_daemon) -> None:
    """Issue 13, target 3: with the watch up and nothing changed in Consul, the cycle
    a new jail asks for writes it and reads nothing of Consul back (catalog mode asks
    only whether the new node name is taken). Before, every cycle read everything
    (agent mode 2 requests, catalog mode 3 and more) before writing."""
    for i in range(40):
        workdir.add(f"j{i}", jid=i + 1, status=1, ip4_addr=f"127.0.32.{i + 1}")
    extra = '[sync]\ninterval = "1h"\njitter = "0s"\n'  # CBSD's file events do start cycles
    config = write_config(tmp_path / "c.toml", workdir=workdir.root, consul=catalog, consul_extra=f'mode = "{mode}"', extra=extra)
    daemon = start_daemon(config)
    settle(daemon)
    workdir.add("new1", jid=99, status=1, ip4_addr="127.0.32.99")
    wait_for(lambda: [e for e in daemon.events("service_registered") if e["jail"] == "new1"], timeout=10, what="new1 registered")
    [registered] = [e for e in daemon.events("service_registered") if e["jail"] == "new1"]
    [finished] = [e for e in daemon.events("cycle_finished") if e["cycle"] == registered["cycle"]]
    assert finished["writes"] == 1
    # Agent mode: the registration alone. Catalog mode: one transaction, and one read-only
    # one asking whether the node name is taken. A full read would add 3 or more.
    assert finished["requests"] == (1 if mode == "agent" else 2), finished


def test_an_agent_back_under_another_node_name_is_watched_again(consul_bin: str, tmp_path: Path, workdir: Workdir, start_daemon) -> None:
    """The local agent restarted under another node name (its ``node_name`` changed,
    or the host re-provisioned): the watch asks the agent for its node name again
    after a failed query, so hand edits are repaired within seconds again. Before, it
    kept the name read at start, blocked on a node that no longer existed, failed
    there for good (at debug level, after one warning about the outage) and said the
    token lacked ``node:read``; hand edits waited for the periodic cycle."""
    server = ConsulServer(consul_bin).start()
    try:
        workdir.add("web1", jid=3, status=1, ip4_addr="127.0.30.1")
        daemon = start_daemon(write_config(tmp_path / "c.toml", workdir=workdir.root, consul=server, extra=QUIET))
        settle(daemon)
        server.stop()
        server.node = "renamed"
        server.start()  # a fresh dev agent on the same port, under another node name
        wait_for(lambda: "jailsyncd-web1" in server.services(), timeout=15, what="web1 registered on the new agent")
        settle(daemon, quiet=3.0, timeout=30)
        server.put("/v1/agent/service/deregister/jailsyncd-web1")
        wait_for(lambda: "jailsyncd-web1" in server.services(), timeout=REPAIRED_WITHIN, what="web1 repaired on the renamed agent")
        assert not [e for e in daemon.events("consul_watch_failed") if "node:read" in e["error"]]
    finally:
        server.stop()
