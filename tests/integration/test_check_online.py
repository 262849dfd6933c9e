"""``jailsyncd check-config --online`` against an ACL-enabled Consul: reachability,
the token, and the permissions each mode needs."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from harness import ConsulServer, run_cli, write_config

from jailsyncd.errors import ExitCode
from testing.sample import Workdir

pytestmark = pytest.mark.integration


def token_with(server: ConsulServer, rules: str) -> str:
    name = f"p-{uuid.uuid4().hex[:8]}"
    server.put("/v1/acl/policy", {"Name": name, "Rules": rules})
    return server.put("/v1/acl/token", {"Policies": [{"Name": name}], "Description": "jailsyncd test"})["SecretID"]


@pytest.mark.parametrize(
    ("mode", "rules", "code", "expect"),
    [
        ("agent", 'service_prefix "" { policy = "write" }', ExitCode.OK, "ok: service:write on this host's service names: allowed ('web1')"),
        ("agent", 'service_prefix "" { policy = "read" }\nnode_prefix "" { policy = "read" }', ExitCode.CONSUL_REFUSED,
         "FAIL: service:write on this host's service names: MISSING on 1 of 1: 'web1'"),
        ("catalog", 'service_prefix "" { policy = "write" }\nnode_prefix "" { policy = "write" }', ExitCode.OK,
         "ok: node:write on this host's node names: allowed ('web1.my.domain')"),
        ("catalog", 'service_prefix "" { policy = "write" }\nnode_prefix "" { policy = "read" }', ExitCode.CONSUL_REFUSED,
         "FAIL: node:write on this host's node names: MISSING on 1 of 1: 'web1.my.domain'"),
    ],
)
def test_permissions_per_mode(acl_consul: ConsulServer, tmp_path: Path, workdir: Workdir, mode: str, rules: str, code: int, expect: str) -> None:
    workdir.add("web1", jid=1, status=1, ip4_addr="127.0.83.1", host_hostname="web1.my.domain")
    token = token_with(acl_consul, rules)
    (tmp_path / "token").write_text(token)
    config = write_config(tmp_path / "c.toml", workdir=workdir.root, consul=acl_consul, consul_extra=f'mode = "{mode}"\ntoken_file = "{tmp_path / "token"}"')
    proc = run_cli("check-config", "--online", config=config)
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert expect in proc.stdout, proc.stdout
    assert "ok: token accepted: jailsyncd test" in proc.stdout
    assert token not in proc.stdout + proc.stderr


def test_a_policy_listing_the_jails_names_passes_with_a_note_for_new_jails(acl_consul: ConsulServer, tmp_path: Path, workdir: Workdir) -> None:
    """Narrowed as docs/acl/agent-mode.hcl suggests: one block per name. The check asks
    for this host's real names (not a made-up one, which the policy cannot cover),
    and notes that a jail created later needs its name in the policy too."""
    workdir.add("www1", jid=1, status=1, ip4_addr="127.0.83.1", tags="consul.name=www")
    workdir.add("db1", jid=2, status=1, ip4_addr="127.0.83.2")
    rules = 'service "www" { policy = "write" }\nservice "db1" { policy = "write" }\nservice "jailsyncd" { policy = "write" }'
    (tmp_path / "token").write_text(token_with(acl_consul, rules))
    config = write_config(tmp_path / "c.toml", workdir=workdir.root, consul=acl_consul, consul_extra=f'token_file = "{tmp_path / "token"}"')
    proc = run_cli("check-config", "--online", config=config)
    assert proc.returncode == ExitCode.OK, proc.stdout + proc.stderr
    assert "ok: service:write on this host's service names: allowed ('db1', 'www')" in proc.stdout
    assert "note: service:write on the name of a jail created later: not granted" in proc.stdout
    assert "FAIL" not in proc.stdout
    # and the same token really works for once (health is off here: no heartbeat)
    assert run_cli("once", config=config).returncode == ExitCode.OK


def test_unreadable_cbsd_state_falls_back_to_example_names(acl_consul: ConsulServer, tmp_path: Path) -> None:
    (tmp_path / "token").write_text(token_with(acl_consul, 'service_prefix "" { policy = "write" }'))
    config = write_config(tmp_path / "c.toml", workdir=tmp_path / "no-such-workdir", consul=acl_consul, consul_extra=f'token_file = "{tmp_path / "token"}"')
    proc = run_cli("check-config", "--online", config=config)
    assert proc.returncode == ExitCode.OK, proc.stdout + proc.stderr
    assert "note: this host's names are unknown (" in proc.stdout and "local.sqlite" in proc.stdout
    assert "ok: service:write on a jail's service name: allowed ('example-jail')" in proc.stdout


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


def test_more_names_than_consul_authorizes_at_once(acl_consul: ConsulServer, tmp_path: Path, workdir: Workdir) -> None:
    """Consul 1.8.7 answers 400 to more than 64 authorizations in one request: 71
    names are asked in two, and the one name outside the policy (sorted last) is found."""
    for i in range(70):
        workdir.add(f"j{i:03}", jid=i + 1, status=1, ip4_addr=f"127.0.84.{i + 1}")
    workdir.add("zz", jid=100, status=1, ip4_addr="127.0.84.100")
    (tmp_path / "token").write_text(token_with(acl_consul, 'service_prefix "j" { policy = "write" }'))
    config = write_config(tmp_path / "c.toml", workdir=workdir.root, consul=acl_consul, consul_extra=f'token_file = "{tmp_path / "token"}"')
    proc = run_cli("check-config", "--online", config=config)
    assert proc.returncode == ExitCode.CONSUL_REFUSED, proc.stdout + proc.stderr
    assert "FAIL: service:write on this host's service names: MISSING on 1 of 71: 'zz'" in proc.stdout, proc.stdout
