"""The Consul token never leaves jailsyncd except in the X-Consul-Token header.

Against an ACL-enabled agent (default deny) with a token file, every command is run
(``plan``, ``plan --json``, ``once``, ``check-config``, ``purge`` with and without
``--yes``, ``report``), failures included, and a short ``run`` (start, kick, SIGHUP,
SIGTERM); every byte they print is searched for the token, and so is the running
daemon's command line.
"""

from __future__ import annotations

import json
import signal
import socket
import threading
import uuid
from pathlib import Path

import pytest
from harness import ConsulServer, free_port, log_events, run_cli, wait_for, write_config

from jailsyncd.errors import ExitCode
from testing.sample import Workdir

pytestmark = pytest.mark.integration

AGENT_RULES = 'service_prefix "" { policy = "write" }\nnode_prefix "" { policy = "read" }\n'


def make_token(server: ConsulServer, rules: str) -> str:
    name = f"p-{uuid.uuid4().hex[:8]}"
    server.put("/v1/acl/policy", {"Name": name, "Rules": rules})
    return server.put("/v1/acl/token", {"Policies": [{"Name": name}]})["SecretID"]


class Transcript:
    """Everything the commands printed, to be searched for the token."""

    def __init__(self) -> None:
        self.parts: list[tuple[str, str]] = []

    def run(self, *args: str, config: Path, env: dict[str, str] | None = None, expect: int = 0):
        proc = run_cli(*args, config=config, env=env)
        self.parts.append((" ".join(args), proc.stdout + proc.stderr))
        assert proc.returncode == expect, (args, proc.stderr)
        return proc

    def assert_clean(self, *secrets: str) -> None:
        for secret in secrets:
            for fragment in (secret, secret[:13], secret[-12:]):  # whole, or a cut-off piece
                leaks = [what for what, text in self.parts if fragment in text]
                assert not leaks, f"token fragment {fragment!r} printed by: {leaks}"


@pytest.fixture
def setup(acl_consul: ConsulServer, tmp_path: Path, workdir: Workdir):
    acl_consul.wipe()
    workdir.add("web1", jid=1, status=1, ip4_addr="127.0.70.1")
    workdir.add("db1", jid=2, status=1, ip4_addr="127.0.70.2")
    token = make_token(acl_consul, AGENT_RULES)
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    config = write_config(
        tmp_path / "c.toml", workdir=workdir.root, consul=acl_consul, consul_extra=f'token_file = "{token_file}"',
        extra='[sync]\ninterval = "1h"\njitter = "0s"\n',
    )
    return token, token_file, config


def test_no_command_prints_the_token(acl_consul: ConsulServer, setup, tmp_path: Path, workdir: Workdir) -> None:
    token, token_file, config = setup
    t = Transcript()
    t.run("check-config", config=config)
    t.run("check-config", config=config, env={"CONSUL_HTTP_TOKEN": token})  # a token from the environment
    t.run("plan", config=config)
    t.run("plan", "--json", config=config)
    t.run("--log-level", "debug", "once", config=config)
    assert set(acl_consul.services()) == {"jailsyncd-web1", "jailsyncd-db1"}
    workdir.set("web1", ip4_addr="127.0.70.9")
    t.run("--log-level", "debug", "--log-format", "console", "once", config=config)
    t.run("purge", config=config, expect=ExitCode.USAGE)
    # Failures: a wrong token in the file, then in the environment, then junk after the token.
    wrong = str(uuid.uuid4())
    token_file.write_text(wrong)
    t.run("once", config=config, expect=ExitCode.CONSUL_REFUSED)
    t.run("plan", config=write_config(tmp_path / "env.toml", workdir=workdir.root, consul=acl_consul), env={"CONSUL_HTTP_TOKEN": wrong}, expect=ExitCode.CONSUL_REFUSED)
    token_file.write_text(f"{token}\nsecond line {token}\n")
    # Refused at load, naming the file and the position of the first bad character (it
    # used to reach requests, whose InvalidHeader message would hold the value).
    proc = t.run("once", config=config, expect=ExitCode.CONFIG)
    assert "the token has a character that cannot be sent to Consul (position 37: U+000A)" in proc.stderr
    token_file.write_text(token + "\n")
    t.run("purge", "--yes", config=config)
    assert acl_consul.services() == {}
    logs = tmp_path / "all.log"
    logs.write_text("".join(text for _, text in t.parts))
    t.run("report", str(logs), config=config)
    t.run("report", "--json", str(logs), config=config)
    t.assert_clean(token, wrong)


def test_the_daemon_never_shows_the_token(acl_consul: ConsulServer, setup, workdir: Workdir, start_daemon) -> None:
    token, token_file, config = setup
    daemon = start_daemon(config)  # logs at debug level
    cmdline = Path(f"/proc/{daemon.proc.pid}/cmdline").read_bytes()
    assert token.encode() not in cmdline and b"--config" in cmdline
    daemon.kick()
    wait_for(lambda: daemon.finished_cycles() >= 2, timeout=10, what="the kicked cycle")
    workdir.set("db1", ip4_addr="127.0.70.8")
    daemon.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: daemon.events("config_reloaded"), timeout=10, what="config_reloaded")
    wait_for(lambda: acl_consul.services()["jailsyncd-db1"]["Address"] == "127.0.70.8", timeout=10, what="the change")
    assert token.encode() not in Path(f"/proc/{daemon.proc.pid}/cmdline").read_bytes()
    # A token that Consul does not know, in the file the daemon re-reads every cycle.
    wrong = str(uuid.uuid4())
    token_file.write_text(wrong)
    daemon.kick()
    wait_for(lambda: daemon.events("cycle_failed"), timeout=10, what="a refused cycle")
    assert daemon.stop() == 0
    text = daemon.log_path.read_text()
    assert {"daemon_started", "config_reloaded", "cycle_failed", "daemon_stopped"} <= {e["event"] for e in log_events(text)}
    for secret in (token, wrong):
        assert secret not in text and secret[:13] not in text
    assert '"token_file": "' in text  # the settings are logged: the file's path, never its content


def test_world_readable_token_file_is_used_with_a_warning(acl_consul: ConsulServer, setup) -> None:
    """A token file others can read is used (refusing would turn a working host into
    an outage on upgrade), with a ``token_file_insecure`` warning that says how to fix
    it; a 0600 file gets no warning."""
    token, token_file, config = setup
    token_file.chmod(0o600)
    proc = run_cli("once", config=config)
    assert proc.returncode == 0, proc.stderr
    assert [e for e in log_events(proc.stderr) if e["event"] == "token_file_insecure"] == []
    token_file.chmod(0o644)
    proc = run_cli("once", config=config)
    assert proc.returncode == 0, proc.stderr
    [warning] = [e for e in log_events(proc.stderr) if e["event"] == "token_file_insecure"]
    assert warning["level"] == "warning" and "0644" in warning["problem"] and "chmod 600" in warning["problem"]
    assert warning["path"] == str(token_file)
    assert token not in proc.stderr + proc.stdout


class ProxyTrap:
    """A listener on loopback standing for an HTTP proxy: records every request that
    reaches it and answers none."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.received: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(1.0)
                try:
                    self.received.append(conn.recv(65536))
                except OSError:
                    self.received.append(b"(connected)")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


def test_proxy_variables_never_get_the_token(acl_consul: ConsulServer, setup, tmp_path: Path, workdir: Workdir, start_daemon) -> None:
    """An administrator's shell (or rc.conf's jailsyncd_env) with ``http_proxy`` set,
    as for pkg(8) behind a proxy: jailsyncd talks to ``consul.address`` itself, never
    through the proxy, and ``status`` reads the daemon's own metrics endpoint. Before,
    requests (trust_env) sent every Consul request to the proxy, the X-Consul-Token
    header included, even for 127.0.0.1, and ``once`` then failed with "cannot
    connect (is the Consul agent running ...)"; ``status`` asked the proxy for
    /metrics. (Consul's own client never proxies loopback.)"""
    token, _, config = setup
    trap = ProxyTrap()
    try:
        proxy = {name: trap.url for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")}
        t = Transcript()
        t.run("once", config=config, env=proxy)
        assert set(acl_consul.services()) == {"jailsyncd-web1", "jailsyncd-db1"}
        t.run("plan", config=config, env=proxy)
        t.run("check-config", "--online", config=config, env=proxy)
        listen = f"127.0.0.1:{free_port()}"
        service = config.with_name("service.toml")
        service.write_text(config.read_text() + f'\n[metrics]\nlisten = "{listen}"\n')
        daemon = start_daemon(service)
        status = t.run("status", "--json", "--pidfile", str(daemon.pidfile), config=service, env=proxy)
        assert json.loads(status.stdout)["last_cycle"] is not None, status.stdout
        assert trap.received == [], trap.received
        t.assert_clean(token)
    finally:
        trap.close()
