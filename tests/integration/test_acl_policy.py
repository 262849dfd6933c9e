"""docs/acl/agent-mode.hcl is enough for everything jailsyncd does in agent mode, and
nothing less is: against Consul 1.8.7 with ACLs on and default deny."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from harness import REPO, ConsulServer, log_events, run_cli, wait_for, write_config

from jailsyncd.errors import ExitCode
from testing.sample import Workdir

pytestmark = pytest.mark.integration

POLICY_FILE = REPO / "docs" / "acl" / "agent-mode.hcl"


def make_token(server: ConsulServer, rules: str) -> str:
    name = f"p-{uuid.uuid4().hex[:8]}"
    server.put("/v1/acl/policy", {"Name": name, "Rules": rules})
    return server.put("/v1/acl/token", {"Policies": [{"Name": name}]})["SecretID"]


def config_with_token(server: ConsulServer, tmp_path: Path, workdir: Workdir, token: str) -> Path:
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    return write_config(tmp_path / "c.toml", workdir=workdir.root, consul=server, consul_extra=f'token_file = "{token_file}"')


def summary(proc) -> dict:
    [event] = [e for e in log_events(proc.stderr) if e["event"] == "cycle_finished"]
    return event


def test_the_documented_policy_covers_a_full_cycle(acl_consul: ConsulServer, tmp_path: Path, workdir: Workdir) -> None:
    acl_consul.wipe()
    rules = POLICY_FILE.read_text()
    active = [line for line in rules.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    # service write for the cycles; agent and node read for the Consul watch of run (see the file)
    assert active == ['service_prefix "" {', '  policy = "write"', "}", 'agent_prefix "" {', '  policy = "read"', "}", 'node_prefix "" {', '  policy = "read"', "}"]
    token = make_token(acl_consul, rules)
    workdir.add("web1", jid=1, status=1, ip4_addr="127.0.80.1", tags="consul.port=80,prod,team=web")
    workdir.add("db1", jid=2, status=1, ip4_addr="127.0.80.2", tags="consul.name=postgres")
    workdir.add("old1", jid=3, status=1, ip4_addr="127.0.80.3")
    config = config_with_token(acl_consul, tmp_path, workdir, token)
    proc = run_cli("once", config=config)  # register
    assert proc.returncode == 0, proc.stderr
    assert summary(proc)["registered"] == 3
    # The agent syncs them to the catalog with this token.
    wait_for(lambda: {"web1", "postgres", "old1"} <= set(acl_consul.get("/v1/catalog/services")), timeout=5, what="catalog sync")
    workdir.set("web1", ip4_addr="127.0.80.9")
    workdir.stop("old1")
    proc = run_cli("once", config=config)  # update and deregister
    assert proc.returncode == 0, proc.stderr
    assert (summary(proc)["updated"], summary(proc)["deregistered"]) == (1, 1)
    proc = run_cli("once", config=config)  # read only
    assert proc.returncode == 0 and summary(proc)["writes"] == 0
    services = acl_consul.services()
    assert set(services) == {"jailsyncd-web1", "jailsyncd-db1"}
    assert services["jailsyncd-web1"]["Address"] == "127.0.80.9"
    assert run_cli("purge", "--yes", config=config).returncode == 0
    assert acl_consul.services() == {}


def test_the_documented_policy_covers_the_health_endpoints(acl_consul: ConsulServer) -> None:
    """What [health] adds (TTL and alias checks, check updates, the ``jailsyncd``
    heartbeat service), called with a token of exactly this policy. Plain HTTP with
    payloads shaped like jailsyncd's, because probing needs a network namespace."""
    acl_consul.wipe()
    token = make_token(acl_consul, POLICY_FILE.read_text())
    heartbeat = {
        "ID": "jailsyncd.heartbeat", "Name": "jailsyncd", "Meta": {"jailsyncd-owner": "node1"},
        "Checks": [{"CheckID": "jailsyncd.heartbeat:ttl", "Name": "jailsyncd heartbeat", "TTL": "30s", "Status": "passing"}],
    }
    jail = {
        "ID": "jailsyncd-web1", "Name": "web1", "Address": "127.0.80.1", "Meta": {"jailsyncd-owner": "node1"},
        "Checks": [
            {"CheckID": "jailsyncd-web1:ping", "Name": "ping", "TTL": "3600s", "Status": "critical"},
            {"CheckID": "jailsyncd-web1:alive", "Name": "jailsyncd alive", "AliasService": "jailsyncd.heartbeat"},
        ],
    }
    for body in (heartbeat, jail):
        status, answer, _ = acl_consul.request("PUT", "/v1/agent/service/register", body, token=token)
        assert status == 200, answer
    for check_id in ("jailsyncd-web1:ping", "jailsyncd.heartbeat:ttl"):
        status, answer, _ = acl_consul.request("PUT", f"/v1/agent/check/update/{check_id}", {"Status": "passing", "Output": "ok"}, token=token)
        assert status == 200, answer
    status, checks, _ = acl_consul.request("GET", "/v1/agent/checks", token=token)
    assert status == 200
    assert {k: v["Status"] for k, v in checks.items()} == {
        "jailsyncd-web1:ping": "passing", "jailsyncd-web1:alive": "passing", "jailsyncd.heartbeat:ttl": "passing",
    }
    wait_for(
        lambda: {c["CheckID"]: c["Status"] for e in acl_consul.get("/v1/health/service/web1") for c in e["Checks"]}.get("jailsyncd-web1:ping") == "passing",
        timeout=5, what="the check status in the catalog",
    )
    for sid in ("jailsyncd-web1", "jailsyncd.heartbeat"):
        status, answer, _ = acl_consul.request("PUT", f"/v1/agent/service/deregister/{sid}", token=token)
        assert status == 200, answer


def test_without_service_write_the_cycle_is_refused(acl_consul: ConsulServer, tmp_path: Path, workdir: Workdir) -> None:
    acl_consul.wipe()
    workdir.add("web1", jid=1, status=1, ip4_addr="127.0.80.1")
    token = make_token(acl_consul, 'service_prefix "" { policy = "read" }\nnode_prefix "" { policy = "read" }\n')
    proc = run_cli("once", config=config_with_token(acl_consul, tmp_path, workdir, token))
    assert proc.returncode == ExitCode.CONSUL_REFUSED
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith(f"jailsyncd: PUT http://{acl_consul.address}/v1/agent/service/register: permission denied"), line
    assert token not in proc.stderr
    assert acl_consul.services() == {}


def test_a_name_the_token_may_not_write_fails_that_jail_only(acl_consul: ConsulServer, tmp_path: Path, workdir: Workdir) -> None:
    """A narrowed policy (one block per name) and a new jail whose name is not in it:
    Consul 1.8.7 answers 403 "Permission denied: Missing service:write on aaa". That
    registration fails alone (issue 10, item 1); the update and the deregistration
    after it are applied; ``once`` exits 77 naming the jail. Before the fix the 403
    ended the cycle, on every cycle."""
    acl_consul.wipe()
    workdir.add("web1", jid=1, status=1, ip4_addr="127.0.80.1")
    workdir.add("old1", jid=3, status=1, ip4_addr="127.0.80.3")
    rules = 'service_prefix "" { policy = "read" }\nservice "web1" { policy = "write" }\nservice "old1" { policy = "write" }\n'
    config = config_with_token(acl_consul, tmp_path, workdir, make_token(acl_consul, rules))
    assert run_cli("once", config=config).returncode == 0
    workdir.add("aaa", jid=2, status=1, ip4_addr="127.0.80.2")  # sorts before web1
    workdir.add("aab", jid=4, status=1, ip4_addr="127.0.80.4")  # denied too: no request for it
    workdir.set("web1", ip4_addr="127.0.80.9")
    workdir.stop("old1")
    proc = run_cli("once", config=config)
    assert proc.returncode == ExitCode.CONSUL_REFUSED
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("jailsyncd: 2 of 4 actions failed, for aaa, aab") and "Missing service:write on aaa" in line, line
    events = log_events(proc.stderr)
    assert sorted(e["jail"] for e in events if e["event"] == "action_failed") == ["aaa", "aab"]
    assert (summary(proc)["updated"], summary(proc)["deregistered"], summary(proc)["failed"]) == (1, 1, 2)
    [aab] = [e for e in events if e["event"] == "action_failed" and e["jail"] == "aab"]
    assert "the token may not write service 'aab'" in aab["error"]  # known from the one authorize request: not sent
    services = acl_consul.services()
    assert set(services) == {"jailsyncd-web1"}
    assert services["jailsyncd-web1"]["Address"] == "127.0.80.9"


def test_under_run_a_name_the_token_may_not_write_blocks_nothing_else(acl_consul: ConsulServer, tmp_path: Path, workdir: Workdir, start_daemon) -> None:
    """The same narrowed policy under ``run`` (issue 10, item 1: before the fix the
    403 ended every cycle, forever): the denied jail fails on each cycle, alone; the
    daemon does not back off, and later changes of the other jails are applied."""
    acl_consul.wipe()
    workdir.add("web1", jid=1, status=1, ip4_addr="127.0.80.1")
    workdir.add("old1", jid=3, status=1, ip4_addr="127.0.80.3")
    workdir.add("aaa", jid=2, status=1, ip4_addr="127.0.80.2")  # denied, sorts first
    rules = 'service_prefix "" { policy = "read" }\nservice "web1" { policy = "write" }\nservice "old1" { policy = "write" }\n'
    config = config_with_token(acl_consul, tmp_path, workdir, make_token(acl_consul, rules))
    config.write_text(config.read_text() + '\n[sync]\ninterval = "1h"\njitter = "0s"\n')
    daemon = start_daemon(config)
    assert set(acl_consul.services()) == {"jailsyncd-web1", "jailsyncd-old1"}
    workdir.set("web1", ip4_addr="127.0.80.9")
    workdir.stop("old1")
    wait_for(lambda: set(acl_consul.services()) == {"jailsyncd-web1"}, timeout=10, what="the next change applied")
    assert acl_consul.services()["jailsyncd-web1"]["Address"] == "127.0.80.9"
    wait_for(lambda: len(daemon.events("cycle_finished")) >= 2, timeout=5, what="the second cycle's summary")
    assert {e["jail"] for e in daemon.events("action_failed")} == {"aaa"}
    assert all(e["failed"] == 1 for e in daemon.events("cycle_finished"))
    assert not daemon.events("backoff") and not daemon.events("cycle_failed")
    assert daemon.proc.poll() is None


def test_a_token_that_may_write_nothing_this_host_needs_stops_the_cycle(acl_consul: ConsulServer, tmp_path: Path, workdir: Workdir) -> None:
    """Read-only on every name, with services of this host already in Consul: the
    first 403 is the token's, not one name's: the cycle stops there (exit 77, one
    line naming the request), with one write attempted, not one per jail."""
    acl_consul.wipe()
    for i in range(3):
        workdir.add(f"j{i}", jid=i + 1, status=1, ip4_addr=f"127.0.80.{i + 1}")
    acl_consul.put("/v1/agent/service/register", {"ID": "jailsyncd-gone", "Name": "gone", "Meta": {"jailsyncd-owner": "node1"}})
    token = make_token(acl_consul, 'service_prefix "" { policy = "read" }\n')
    proc = run_cli("once", config=config_with_token(acl_consul, tmp_path, workdir, token))
    assert proc.returncode == ExitCode.CONSUL_REFUSED
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith(f"jailsyncd: PUT http://{acl_consul.address}/v1/agent/service/register: permission denied"), line
    [failed] = [e for e in log_events(proc.stderr) if e["event"] == "cycle_failed"]
    assert failed["error_kind"] == "ConsulDenied"
    assert set(acl_consul.services()) == {"jailsyncd-gone"}


def test_catalog_mode_a_node_the_token_may_not_write_fails_that_jail_only(acl_consul: ConsulServer, tmp_path: Path, workdir: Workdir) -> None:
    """Catalog mode, a policy narrowed to one node name: the transaction holding the
    denied node is refused (Consul 1.8.7 answers it with a per-operation error or a
    403 for the whole request); only that jail fails, the other node is registered."""
    acl_consul.wipe()
    for node in acl_consul.get("/v1/catalog/nodes"):
        if node["Node"] != "jailsyncd-test":
            acl_consul.put("/v1/catalog/deregister", {"Node": node["Node"]})
    workdir.add("web1", jid=1, status=1, ip4_addr="127.0.81.1", host_hostname="web1.my.domain")
    workdir.add("aaa", jid=2, status=1, ip4_addr="127.0.81.2", host_hostname="aaa.my.domain")
    rules = 'node_prefix "" { policy = "read" }\nnode "web1.my.domain" { policy = "write" }\nservice_prefix "" { policy = "write" }\n'
    token_file = tmp_path / "token"
    token_file.write_text(make_token(acl_consul, rules) + "\n")
    token_file.chmod(0o600)
    config = write_config(tmp_path / "c.toml", workdir=workdir.root, consul=acl_consul, consul_extra=f'token_file = "{token_file}"\nmode = "catalog"')
    proc = run_cli("once", config=config)
    assert proc.returncode == ExitCode.CONSUL_REFUSED, proc.stderr
    assert [e["jail"] for e in log_events(proc.stderr) if e["event"] == "action_failed"] == ["aaa"]
    assert summary(proc)["registered"] == 1
    nodes = {n["Node"] for n in acl_consul.get("/v1/catalog/nodes")}
    assert "web1.my.domain" in nodes and "aaa.my.domain" not in nodes
