"""The shipped ACL policies, exactly as shipped, are enough for every command of
their mode, and ``check-config --online`` agrees (issue 10, item 12).

Against Consul 1.8.7 with ACLs on and ``default_policy = "deny"`` (the
``acl_consul`` fixture): a policy is created from the text of
``docs/acl/<mode>-mode.hcl`` read at test time, never from a copy of its rules,
and a token of that policy alone runs ``check-config --online``, ``once``
(register, update, deregister), ``run`` (cycles, health rounds and, in agent mode,
the heartbeat) and ``purge --yes``. Health is on: the jails have 127.x addresses on
the host's loopback, probed with ICMP (root; skipped where no ICMP socket opens).
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from harness import REPO, ConsulServer, log_events, run_cli, wait_for, write_config

from jailsyncd.adapters.probe import Prober
from jailsyncd.errors import JailsyncdError
from testing.sample import Workdir

pytestmark = pytest.mark.integration

POLICIES = {"agent": REPO / "docs" / "acl" / "agent-mode.hcl", "catalog": REPO / "docs" / "acl" / "catalog-mode.hcl"}
HEALTH = 'interval = "2s"\ntimeout = "300ms"\ncount = 1\nfailures_before_critical = 1\nttl = "1m"\nheartbeat_ttl = "6s"'
#: Events that mean a write or read was refused or failed somewhere.
FAILURES = {"cycle_failed", "cycle_crashed", "action_failed", "health_round_failed", "heartbeat_failed", "consul_watch_failed"}


def _icmp() -> str | None:
    try:
        Prober().check()
    except JailsyncdError as exc:
        return str(exc)
    return None


def token_of(server: ConsulServer, rules: str) -> str:
    name = f"p-{uuid.uuid4().hex[:8]}"
    server.put("/v1/acl/policy", {"Name": name, "Rules": rules})
    return server.put("/v1/acl/token", {"Policies": [{"Name": name}], "Description": f"jailsyncd {name}"})["SecretID"]


def clean(server: ConsulServer) -> None:
    server.wipe()
    agent_node = server.get("/v1/agent/self")["Config"]["NodeName"]
    for node in server.get("/v1/catalog/nodes"):
        if node["Node"] != agent_node:
            server.put("/v1/catalog/deregister", {"Node": node["Node"]})


def owned_names(server: ConsulServer, mode: str) -> set[str]:
    """What Consul holds for host node1's jails: service IDs (agent mode, without the
    heartbeat service, whose presence after ``once`` is not this test's concern) or
    node names (catalog)."""
    if mode == "agent":
        return {
            sid for sid, s in server.services().items()
            if s.get("Meta", {}).get("jailsyncd-owner") == "node1" and sid != "jailsyncd.heartbeat"
        }
    return {n["Node"] for n in server.get("/v1/catalog/nodes") if (n.get("Meta") or {}).get("jailsyncd-owner") == "node1"}


def registered_jails(stderr: str) -> set[str]:
    return {e["jail"] for e in log_events(stderr) if e["event"] == "service_registered" and e.get("jail")}


def finished(stderr: str) -> dict:
    [event] = [e for e in log_events(stderr) if e["event"] == "cycle_finished"]
    return event


@pytest.mark.skipif(_icmp() is not None, reason=f"no ICMP socket here: {_icmp()}")
@pytest.mark.parametrize("mode", ["agent", "catalog"])
def test_shipped_policy_covers_check_config_once_run_and_purge(
    acl_consul: ConsulServer, tmp_path: Path, workdir: Workdir, start_daemon, mode: str
) -> None:
    clean(acl_consul)
    token_file = tmp_path / "token"
    token_file.write_text(token_of(acl_consul, POLICIES[mode].read_text()) + "\n")
    token_file.chmod(0o600)
    workdir.add("web1", jid=1, status=1, ip4_addr="127.0.81.1", host_hostname="web1.example.org")
    workdir.add("db1", jid=2, status=1, ip4_addr="127.0.81.2", host_hostname="db1.example.org", tags="consul.port=5432,consul.check=tcp")
    workdir.add("old1", jid=3, status=1, ip4_addr="127.0.81.3", host_hostname="old1.example.org")
    config = write_config(
        tmp_path / "c.toml", workdir=workdir.root, consul=acl_consul,
        consul_extra=f'mode = "{mode}"\ntoken_file = "{token_file}"', health=HEALTH,
    )

    proc = run_cli("check-config", "--online", config=config)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "FAIL" not in proc.stdout
    assert [line for line in proc.stdout.splitlines() if line.startswith("ok: service:write on this host's service names")], proc.stdout

    proc = run_cli("once", config=config)  # register, probe, write statuses (and the heartbeat)
    assert proc.returncode == 0, proc.stderr
    assert {"web1", "db1", "old1"} <= registered_jails(proc.stderr)
    assert not FAILURES & {e["event"] for e in log_events(proc.stderr)}
    workdir.set("web1", ip4_addr="127.0.81.9")
    workdir.stop("old1")
    proc = run_cli("once", config=config)  # update and deregister
    assert proc.returncode == 0, proc.stderr
    assert (finished(proc.stderr)["updated"], finished(proc.stderr)["deregistered"]) == (1, 1)
    expected = {"jailsyncd-web1", "jailsyncd-db1"} if mode == "agent" else {"web1.example.org", "db1.example.org"}
    assert owned_names(acl_consul, mode) == expected

    daemon = start_daemon(config)
    workdir.add("new1", jid=4, status=1, ip4_addr="127.0.81.4", host_hostname="new1.example.org")
    wait_for(lambda: any(e.get("jail") == "new1" for e in daemon.events("service_registered")), timeout=20, what="new1 registered by run")
    wait_for(lambda: len(daemon.events("health_round")) >= 2, timeout=20, what="two health rounds")
    if mode == "agent":
        # The heartbeat is refreshed every third of heartbeat_ttl (2 s): it must stay passing.
        wait_for(lambda: acl_consul.get("/v1/agent/checks")["jailsyncd.heartbeat:ttl"]["Status"] == "passing", timeout=10, what="heartbeat passing")
    # A new address, and the tcp probe dropped: its check is deregistered on its own.
    workdir.set("db1", ip4_addr="127.0.81.8", tags="consul.port=5432")
    wait_for(lambda: any(e.get("jail") == "db1" for e in daemon.events("service_updated")), timeout=20, what="db1 updated by run")
    checks = acl_consul.get("/v1/agent/checks").values() if mode == "agent" else acl_consul.get("/v1/health/state/any")
    assert "jailsyncd-db1:tcp" not in {c["CheckID"] for c in checks}
    assert daemon.stop() == 0
    assert not FAILURES & {e["event"] for e in daemon.events()}, [e for e in daemon.events() if e["event"] in FAILURES]
    assert owned_names(acl_consul, mode) == expected | ({"jailsyncd-new1"} if mode == "agent" else {"new1.example.org"})

    proc = run_cli("purge", "--yes", config=config)
    assert proc.returncode == 0, proc.stderr
    assert owned_names(acl_consul, mode) == set()
    assert "jailsyncd.heartbeat" not in acl_consul.services()


@pytest.mark.parametrize("mode", ["agent", "catalog"])
def test_shipped_policy_rules_are_exactly_these(mode: str) -> None:
    """The active rules of each file (comments aside): if a rule is added, the tests
    above must show it is needed; if one is removed, they show what breaks."""
    text = POLICIES[mode].read_text()
    rules = " ".join(line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#"))
    expected = {
        "agent": 'service_prefix "" { policy = "write" } agent_prefix "" { policy = "read" } node_prefix "" { policy = "read" }',
        "catalog": 'node_prefix "" { policy = "write" } service_prefix "" { policy = "write" }',
    }
    assert rules == expected[mode]


@pytest.mark.parametrize(
    ("mode", "drop", "broken"),
    [
        ("agent", 'service_prefix "" {\n  policy = "write"\n}', "permission denied"),
        ("catalog", 'node_prefix "" {\n  policy = "write"\n}', "Permission denied"),
        ("catalog", 'service_prefix "" {\n  policy = "write"\n}', "Permission denied"),
    ],
)
def test_without_a_rule_of_the_shipped_policy_check_config_and_once_fail(
    acl_consul: ConsulServer, tmp_path: Path, workdir: Workdir, mode: str, drop: str, broken: str
) -> None:
    """Each rule of the shipped file is needed: without it ``once`` is refused
    (exit 77) and ``check-config --online`` names the missing permission first."""
    clean(acl_consul)
    text = POLICIES[mode].read_text()
    assert drop in text
    narrowed = text.replace(drop, "")
    if not narrowed.strip(" \n").replace("#", "").strip():
        narrowed = 'key_prefix "unrelated/" { policy = "read" }'  # a policy needs at least one rule
    token_file = tmp_path / "token"
    token_file.write_text(token_of(acl_consul, narrowed))
    workdir.add("web1", jid=1, status=1, ip4_addr="127.0.82.1", host_hostname="web1.example.org")
    config = write_config(tmp_path / "c.toml", workdir=workdir.root, consul=acl_consul, consul_extra=f'mode = "{mode}"\ntoken_file = "{token_file}"')
    proc = run_cli("check-config", "--online", config=config)
    assert proc.returncode == 77, proc.stdout
    resource = drop.split("_")[0]
    assert f"FAIL: {resource}:write on this host's {resource} names: MISSING on 1 of 1: " in proc.stdout, proc.stdout
    proc = run_cli("once", config=config)
    assert proc.returncode == 77 and broken in proc.stderr, proc.stderr
    assert owned_names(acl_consul, mode) == set()


@pytest.mark.parametrize(
    ("drop", "why"),
    [('agent_prefix "" {\n  policy = "read"\n}', "/v1/agent/self"), ('node_prefix "" {\n  policy = "read"\n}', "lacks node:read")],
    ids=["agent-read", "node-read"],
)
def test_without_a_read_rule_of_the_agent_policy_only_the_consul_watch_is_lost(
    acl_consul: ConsulServer, tmp_path: Path, workdir: Workdir, start_daemon, drop: str, why: str
) -> None:
    """The agent policy's two read rules serve the Consul watch alone, as the file
    and docs/reliability.md say: without either, ``check-config --online`` passes
    with a note naming the watch, ``once`` works, and ``run`` registers but says
    that its watch cannot run (``consul_watch_failed``) instead of silently seeing
    no change in Consul."""
    clean(acl_consul)
    text = POLICIES["agent"].read_text()
    assert drop in text
    token_file = tmp_path / "token"
    token_file.write_text(token_of(acl_consul, text.replace(drop, "")))
    token_file.chmod(0o600)
    workdir.add("web1", jid=1, status=1, ip4_addr="127.0.84.1")
    config = write_config(
        tmp_path / "c.toml", workdir=workdir.root, consul=acl_consul, consul_extra=f'token_file = "{token_file}"',
        extra='[sync]\ninterval = "1h"\njitter = "0s"\n',
    )
    proc = run_cli("check-config", "--online", config=config)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [line for line in proc.stdout.splitlines() if line.startswith("note: agent:read and node:read for the Consul watch")], proc.stdout
    proc = run_cli("once", config=config)
    assert proc.returncode == 0, proc.stderr
    assert owned_names(acl_consul, "agent") == {"jailsyncd-web1"}
    daemon = start_daemon(config)
    [failed, *_] = wait_for(lambda: daemon.events("consul_watch_failed"), timeout=20, what="consul_watch_failed")
    assert why in failed["error"], failed
    assert not daemon.events("cycle_failed")
    assert daemon.stop() == 0
