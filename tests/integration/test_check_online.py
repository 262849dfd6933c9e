"""``jailsyncd check-config --online`` against an ACL-enabled Consul: reachability,
the token, and the permissions each mode needs."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from harness import ConsulServer, run_cli, write_config

from jailsyncd.errors import ExitCode
from jailsyncd.sample import Workdir

pytestmark = pytest.mark.integration


def token_with(server: ConsulServer, rules: str) -> str:
    name = f"p-{uuid.uuid4().hex[:8]}"
    server.put("/v1/acl/policy", {"Name": name, "Rules": rules})
    return server.put("/v1/acl/token", {"Policies": [{"Name": name}], "Description": "jailsyncd test"})["SecretID"]


@pytest.mark.parametrize(
    ("mode", "rules", "code", "expect"),
    [
        ("agent", 'service_prefix "" { policy = "write" }\nnode_prefix "" { policy = "read" }', ExitCode.OK, "allowed"),
        ("agent", 'service_prefix "" { policy = "read" }\nnode_prefix "" { policy = "read" }', ExitCode.CONSUL_REFUSED, "service:write on 'example-jail': MISSING"),
        ("catalog", 'service_prefix "" { policy = "write" }\nnode_prefix "" { policy = "write" }', ExitCode.OK, "allowed"),
        ("catalog", 'service_prefix "" { policy = "write" }\nnode_prefix "" { policy = "read" }', ExitCode.CONSUL_REFUSED, "node:write on 'example-jail.my.domain': MISSING"),
    ],
)
def test_permissions_per_mode(acl_consul: ConsulServer, tmp_path: Path, workdir: Workdir, mode: str, rules: str, code: int, expect: str) -> None:
    token = token_with(acl_consul, rules)
    (tmp_path / "token").write_text(token)
    config = write_config(tmp_path / "c.toml", workdir=workdir.root, consul=acl_consul, consul_extra=f'mode = "{mode}"\ntoken_file = "{tmp_path / "token"}"')
    proc = run_cli("check-config", "--online", config=config)
    assert proc.returncode == code, proc.stderr
    assert expect in proc.stdout
    assert "ok: token accepted: jailsyncd test" in proc.stdout
    assert token not in proc.stdout + proc.stderr


def test_unknown_token_and_unreachable(acl_consul: ConsulServer, tmp_path: Path, workdir: Workdir) -> None:
    wrong = str(uuid.uuid4())
    (tmp_path / "token").write_text(wrong)
    config = write_config(tmp_path / "c.toml", workdir=workdir.root, consul=acl_consul, consul_extra=f'token_file = "{tmp_path / "token"}"')
    proc = run_cli("check-config", "--online", config=config)
    assert proc.returncode == ExitCode.CONSUL_REFUSED
    assert "FAIL: token refused by /v1/acl/token/self (403" in proc.stdout
    assert wrong not in proc.stdout + proc.stderr
    dead = write_config(tmp_path / "d.toml", workdir=workdir.root, consul=ConsulServer(binary="unused"))
    proc = run_cli("check-config", "--online", config=dead)
    assert proc.returncode == ExitCode.CONSUL_UNAVAILABLE and "cannot connect" in proc.stderr
