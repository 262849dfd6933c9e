"""ACL-enabled Consul (default deny): a token file with a narrow policy works, a wrong
token gives one clear line and exit 77, and no token ever shows in the output."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from harness import ConsulServer, log_events, run_cli, write_config

from jailsyncd.errors import ExitCode
from testing.sample import Workdir

pytestmark = pytest.mark.integration

AGENT_MODE_RULES = 'service_prefix "" { policy = "write" }\nnode_prefix "" { policy = "read" }\n'


def make_token(server: ConsulServer, rules: str) -> str:
    name = f"p-{uuid.uuid4().hex[:8]}"
    server.put("/v1/acl/policy", {"Name": name, "Rules": rules})
    return server.put("/v1/acl/token", {"Policies": [{"Name": name}]})["SecretID"]


def test_token_file_with_narrow_policy(acl_consul: ConsulServer, tmp_path: Path, workdir: Workdir) -> None:
    workdir.add("web1", jid=3, status=1, ip4_addr="127.0.20.1")
    token = make_token(acl_consul, AGENT_MODE_RULES)
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    config = write_config(tmp_path / "c.toml", workdir=workdir.root, consul=acl_consul, consul_extra=f'token_file = "{token_file}"')
    proc = run_cli("once", config=config)
    assert proc.returncode == 0, proc.stderr
    assert acl_consul.services()["jailsyncd-web1"]["Address"] == "127.0.20.1"
    assert token not in proc.stderr + proc.stdout
    assert any(e["event"] == "cycle_finished" for e in log_events(proc.stderr))


@pytest.mark.parametrize("how", ["file", "env"])
def test_wrong_token_is_refused_clearly(acl_consul: ConsulServer, tmp_path: Path, workdir: Workdir, how: str) -> None:
    workdir.add("web1", jid=3, status=1, ip4_addr="127.0.20.1")
    wrong = str(uuid.uuid4())
    env = {}
    extra = ""
    if how == "file":
        (tmp_path / "token").write_text(wrong)
        extra = f'token_file = "{tmp_path / "token"}"'
    else:
        env = {"CONSUL_HTTP_TOKEN": wrong}
    config = write_config(tmp_path / "c.toml", workdir=workdir.root, consul=acl_consul, consul_extra=extra)
    before = acl_consul.services()
    proc = run_cli("once", config=config, env=env)
    assert proc.returncode == ExitCode.CONSUL_REFUSED
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("jailsyncd: GET http://") and "permission denied" in last
    assert wrong not in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr
    assert acl_consul.services() == before


def test_read_only_token_cannot_write(acl_consul: ConsulServer, tmp_path: Path, workdir: Workdir) -> None:
    workdir.add("web2", jid=3, status=1, ip4_addr="127.0.20.2")
    token = make_token(acl_consul, 'service_prefix "" { policy = "read" }\nnode_prefix "" { policy = "read" }\n')
    config = write_config(tmp_path / "c.toml", workdir=workdir.root, consul=acl_consul)
    proc = run_cli("once", config=config, env={"CONSUL_HTTP_TOKEN": token})
    assert proc.returncode == ExitCode.CONSUL_REFUSED
    assert "PUT http://" in proc.stderr.strip().splitlines()[-1]
    assert "jailsyncd-web2" not in acl_consul.services()
    assert token not in proc.stderr + proc.stdout


def test_catalog_sees_a_clash_on_a_name_the_token_may_not_read(acl_consul: ConsulServer, tmp_path: Path, workdir: Workdir) -> None:
    """Catalog mode asks whether the node names it wants are taken with read-only
    ``Node get`` transactions: a get fails only for a missing node, and Consul 1.8
    answers it whatever the token may read (it only leaves unreadable nodes out of
    the results). So with a token that may write its own names and read nothing
    else, a name held by someone else is still skipped as a conflict (before, the
    filtered read could not see it, and the create failed with exit 77), asked
    alone or with a free name, and the free name is registered."""
    for node in ("held.example.org", "held2.example.org"):
        acl_consul.put("/v1/catalog/register", {"Node": node, "Address": "10.9.0.1", "NodeMeta": {"jailsyncd-owner": "someone"}})
    rules = 'node "free.example.org" { policy = "write" }\nservice_prefix "" { policy = "write" }\n'
    token_file = tmp_path / "token"
    token_file.write_text(make_token(acl_consul, rules) + "\n")
    token_file.chmod(0o600)
    workdir.add("held", jid=1, status=1, ip4_addr="127.0.20.5", host_hostname="held.example.org")
    config = write_config(tmp_path / "c.toml", workdir=workdir.root, consul=acl_consul, consul_extra=f'mode = "catalog"\ntoken_file = "{token_file}"')
    for step in ("alone", "with a free name"):
        proc = run_cli("once", config=config)
        events = log_events(proc.stderr)
        assert proc.returncode == 0, (step, proc.stderr)
        assert [(e["jail"], e["reason"]) for e in events if e["event"] == "jail_skipped"] == [("held", "conflict")], (step, proc.stderr)
        assert not [e for e in events if e["event"] == "action_failed"], proc.stderr
        if step == "alone":
            workdir.add("free", jid=2, status=1, ip4_addr="127.0.20.6", host_hostname="free.example.org")
    nodes = {n["Node"]: n for n in acl_consul.get("/v1/catalog/nodes")}
    assert nodes["held.example.org"]["Meta"]["jailsyncd-owner"] == "someone"
    assert nodes["free.example.org"]["Meta"]["jailsyncd-owner"] == "node1"
