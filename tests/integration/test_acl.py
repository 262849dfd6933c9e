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
