"""Consul breaks under jailsyncd: killed and restarted mid-cycle, a port that never
answers, an agent without servers, a token revoked under a registered host.

Whatever happens: nothing owned is deregistered because of the fault, every failure
is one line naming the endpoint with a defined exit code, and the next cycle (or the
daemon on its own) converges once Consul is back.
"""

from __future__ import annotations

import http.server
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from harness import REPO, ConsulServer, free_port, log_events, run_cli, wait_for, write_config

from testing.devconsul import terminate
from testing.devnet import NetNS, available
from jailsyncd.errors import ExitCode
from testing.sample import Workdir

pytestmark = pytest.mark.integration

MANY = 250  # long enough a cycle (~2 s) to kill the agent in the middle of it


class Agent:
    """A non-dev Consul agent with a data folder: it keeps its services across a
    SIGKILL and a restart, like a production agent. ``server=False`` makes a client
    agent that knows no server (``retry_join`` points at a port nobody serves yet)."""

    def __init__(self, binary: str, data: Path, *, server: bool = True, retry_join: int | None = None) -> None:
        self.binary = binary
        self.data = data
        self.server = server
        self.ports = {name: free_port() for name in ("http", "dns", "serf_lan", "serf_wan", "server")}
        self.retry_join = retry_join
        self.proc: subprocess.Popen | None = None
        #: Plain-HTTP helpers (independent of the code under test) for this agent.
        self.api = ConsulServer("unused", http_port=self.ports["http"], dns_port=self.ports["dns"])
        data.mkdir(parents=True, exist_ok=True)
        p = self.ports
        hcl = [
            f'data_dir = "{data / "state"}"',
            'bind_addr = "127.0.0.1"',
            'client_addr = "127.0.0.1"',
            f'node_name = "{"server" if server else "client"}-{uuid.uuid4().hex[:6]}"',
            "disable_update_check = true",
            "performance { raft_multiplier = 1 }",
            f"ports {{ http = {p['http']}, dns = {p['dns']}, serf_lan = {p['serf_lan']}, serf_wan = {p['serf_wan']}, server = {p['server']}, grpc = -1 }}",
        ]
        if server:
            hcl += ["server = true", "bootstrap_expect = 1"]
        if retry_join is not None:
            hcl += [f'retry_join = ["127.0.0.1:{retry_join}"]', 'retry_interval = "1s"']
        (data / "agent.hcl").write_text("\n".join(hcl) + "\n")

    @property
    def address(self) -> str:
        return self.api.address

    def start(self) -> "Agent":
        with open(self.data / "consul.log", "ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, "agent", "-config-file", str(self.data / "agent.hcl")],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"consul exited with {self.proc.returncode}; see {self.data}/consul.log")
            return bool(self.api.get("/v1/status/leader")) if self.server else bool(self.api.get("/v1/agent/self"))

        wait_for(ready, timeout=30, what=f"agent on {self.address} ({self.data}/consul.log)")
        return self

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        terminate(self.proc)


@pytest.fixture
def agent(consul_bin: str, tmp_path: Path):
    server = Agent(consul_bin, tmp_path / "agent").start()
    yield server
    server.stop()


def many_jails(workdir: Workdir, count: int, first: int = 0) -> None:
    conn = sqlite3.connect(workdir.node_db)
    with conn:
        conn.executemany(
            "INSERT INTO jails (jname, jid, status, ip4_addr) VALUES (?, ?, 1, ?)",
            [(f"j{i:04}", i + 1, f"127.0.{50 + i // 250}.{i % 250 + 1}") for i in range(first, first + count)],
        )
    conn.close()


def popen_cli(*args: str, config: Path, log: Path) -> subprocess.Popen:
    """``jailsyncd ARGS`` in the background, its stderr into ``log`` (a pipe would
    fill up with a big cycle's log lines and stall it)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONSUL_")}
    argv = [sys.executable, "-m", "jailsyncd", "--config", str(config), *args]
    with open(log, "wb") as out:
        return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=out, env=env, cwd=str(REPO))


def error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if not line.startswith("{")]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr and "internal error" not in stderr
    return lines[0]


def owned(api: ConsulServer) -> dict[str, dict]:
    return {k: v for k, v in api.services().items() if k.startswith("jailsyncd-")}


# -- the agent dies --------------------------------------------------------------------


def test_sigkill_during_once_then_restart_loses_nothing(agent: Agent, tmp_path: Path, workdir: Workdir) -> None:
    many_jails(workdir, MANY)
    config = write_config(tmp_path / "c.toml", workdir=workdir.root, consul=agent.api)
    proc = popen_cli("once", config=config, log=tmp_path / "once.log")
    try:
        wait_for(lambda: len(owned(agent.api)) >= 10, timeout=30, interval=0.01, what="the first registrations")
        agent.kill()
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = (tmp_path / "once.log").read_text()
    assert proc.returncode == ExitCode.CONSUL_UNAVAILABLE, stderr
    line = error_line(stderr)
    assert line.startswith(f"jailsyncd: PUT http://{agent.address}/v1/agent/service/register"), line
    registered = {e["service_id"] for e in log_events(stderr) if e["event"] == "service_registered"}
    # (the agent may have stored one or two more whose answers were still on the way)
    assert 0 < len(registered) < MANY, "the kill did not land in the middle of the cycle"
    agent.start()
    # Everything the killed run logged as registered is still there (a 200 from the
    # agent means it is persisted); the agent's own restart removed nothing.
    survived = set(owned(agent.api))
    assert registered <= survived
    proc = run_cli("once", config=config)
    assert proc.returncode == 0, proc.stderr
    [summary] = [e for e in log_events(proc.stderr) if e["event"] == "cycle_finished"]
    assert (summary["registered"], summary["updated"], summary["deregistered"]) == (MANY - len(survived), 0, 0)
    assert len(owned(agent.api)) == MANY
    proc = run_cli("once", config=config)
    assert [e["writes"] for e in log_events(proc.stderr) if e["event"] == "cycle_finished"] == [0]


def test_sigkill_during_run_the_daemon_waits_and_converges(agent: Agent, tmp_path: Path, workdir: Workdir, start_daemon) -> None:
    many_jails(workdir, 5)
    extra = '[sync]\ninterval = "1h"\njitter = "0s"\nbackoff_max = "1s"\n'
    daemon = start_daemon(write_config(tmp_path / "c.toml", workdir=workdir.root, consul=agent.api, extra=extra))
    assert len(owned(agent.api)) == 5
    many_jails(workdir, MANY - 5, first=5)  # CBSD change: a long cycle starts within a second
    wait_for(lambda: len(owned(agent.api)) >= 15, timeout=30, interval=0.01, what="the change being applied")
    agent.kill()
    daemon.kick()  # in case the cycle had just finished: the next one must meet the dead agent
    wait_for(lambda: len(daemon.events("backoff")) >= 2, timeout=15, what="failed cycles while Consul is down")
    assert daemon.proc.poll() is None
    assert {e["error_kind"] for e in daemon.events("cycle_failed")} == {"ConsulError"}
    assert all(agent.address in e["error"] for e in daemon.events("cycle_failed"))
    agent.start()
    wait_for(lambda: len(owned(agent.api)) == MANY, timeout=30, what="convergence after the restart")
    assert daemon.events("service_deregistered") == []
    assert daemon.proc.poll() is None
    assert daemon.stop() == 0


# -- Consul that does not answer, or is not Consul --------------------------------------


class LoopbackServer:
    """A TCP server on 127.0.0.1 whose thread hands each accepted connection to
    ``take``; ``close`` stops it and closes every connection in ``conns``. Bounded:
    each test closes it at teardown."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.stopped = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.take(conn)

    def take(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.stopped.set()
        self.sock.close()
        for conn in self.conns:
            conn.close()


class Listener(LoopbackServer):
    """Accepts connections and then says nothing (``hang``), or answers every request
    with ``{}`` but trickles the first answer's body (``trickle``) or its whole
    answer, status line and headers included (``trickle-head``), one byte every
    ``delay`` seconds."""

    def __init__(self, mode: str, delay: float = 0.5) -> None:
        self.mode = mode
        self.delay = delay
        super().__init__()

    def take(self, conn: socket.socket) -> None:
        self.conns.append(conn)
        if self.mode.startswith("trickle"):
            threading.Thread(target=self._trickle, args=(conn,), daemon=True).start()

    def _trickle(self, conn: socket.socket) -> None:
        body = b"{" + b" " * 10 + b"}"
        first = len(self.conns) == 1
        try:
            while not self.stopped.is_set() and conn.recv(65536):
                head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
                slow = head + body if self.mode == "trickle-head" else body
                if slow is body:
                    conn.sendall(head)
                for byte in slow:
                    if first and self.stopped.wait(self.delay):
                        return
                    conn.sendall(bytes([byte]))
                first = False
        except OSError:
            return


def timeout_config(tmp_path: Path, workdir: Workdir, port: int) -> Path:
    config = write_config(tmp_path / "c.toml", workdir=workdir.root, consul=ConsulServer("unused", http_port=port))
    config.write_text(config.read_text().replace('timeout = "5s"', 'timeout = "1s"'))
    return config


def test_a_listener_that_never_answers_fails_within_seconds(tmp_path: Path, workdir: Workdir) -> None:
    workdir.add("web1", jid=1, status=1, ip4_addr="127.0.50.1")
    listener = Listener("hang")
    try:
        config = timeout_config(tmp_path, workdir, listener.port)
        started = time.monotonic()
        proc = run_cli("once", config=config, timeout=30)
        elapsed = time.monotonic() - started
    finally:
        listener.close()
    assert proc.returncode == ExitCode.CONSUL_UNAVAILABLE, proc.stderr
    assert error_line(proc.stderr) == f"jailsyncd: GET http://127.0.0.1:{listener.port}/v1/agent/services: no answer within 1s"
    [failed] = [e for e in log_events(proc.stderr) if e["event"] == "cycle_failed"]
    assert failed["duration_ms"] < 2500
    assert elapsed < 8


@pytest.mark.parametrize("mode", ["trickle", "trickle-head"])
def test_a_trickling_answer_is_cut_at_the_timeout(tmp_path: Path, workdir: Workdir, mode: str) -> None:
    """``consul.timeout`` bounds a whole request, not each read of its socket: an answer
    that arrives one byte every 0.3 s (12 bytes of body, or its ~90 bytes of status
    line, headers and body) fails after about 1 s like a silent one."""
    listener = Listener(mode, delay=0.3)  # the first answer takes 3.6 s (27 s) to arrive in full
    try:
        config = timeout_config(tmp_path, workdir, listener.port)
        started = time.monotonic()
        proc = run_cli("once", config=config, timeout=60)
        elapsed = time.monotonic() - started
    finally:
        listener.close()
    events = log_events(proc.stderr)
    durations = [e["duration_ms"] for e in events if e["event"] in ("cycle_failed", "cycle_finished")]
    assert proc.returncode == ExitCode.CONSUL_UNAVAILABLE and durations and durations[0] < 2500, (proc.returncode, durations, proc.stderr)
    assert error_line(proc.stderr) == f"jailsyncd: GET http://127.0.0.1:{listener.port}/v1/agent/services: no answer within 1s"
    assert elapsed < 8


class TrickleRelay(LoopbackServer):
    """A TCP relay in front of a real Consul: requests pass at once, and while
    ``slow`` is set every answer comes back one byte every ``delay`` seconds (a
    congested or lossy link, a proxy buffering badly); cleared, answers pass at once.
    Bounded: every thread stops at ``close``."""

    def __init__(self, target_port: int, delay: float = 0.3) -> None:
        self.target_port = target_port
        self.delay = delay
        self.slow = threading.Event()
        super().__init__()

    def take(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        self.conns += [client, upstream]
        threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
        threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, answers: bool) -> None:
        try:
            while not self.stopped.is_set():
                data = source.recv(65536)
                if not data:
                    break
                if not (answers and self.slow.is_set()):
                    sink.sendall(data)
                    continue
                for byte in data:
                    if self.stopped.wait(self.delay):
                        return
                    sink.sendall(bytes([byte]))
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def test_a_real_consuls_answer_trickled_by_the_link_is_cut_at_the_timeout(consul: ConsulServer, tmp_path: Path, workdir: Workdir, start_daemon) -> None:
    """Issue 10, item 16, against a real Consul 1.8.7: its answers reach jailsyncd
    through a link that passes one byte every 0.3 s. ``once`` fails after about
    ``consul.timeout`` (1 s) with the same line as a silent agent, and writes nothing;
    ``run`` fails its cycles in about 1 s each (its one worker is never held for
    the minutes a trickled answer takes), and converges as soon as the link is fast
    again, logging ``cycle_recovered``."""
    workdir.add("web1", jid=1, status=1, ip4_addr="127.0.52.1")
    relay = TrickleRelay(consul.http_port, delay=0.3)
    try:
        config = write_config(tmp_path / "c.toml", workdir=workdir.root, consul=ConsulServer("unused", http_port=relay.port))
        config.write_text(config.read_text().replace('timeout = "5s"', 'timeout = "1s"'))
        proc = run_cli("once", config=config)  # a fast link first: the relay is a working path to Consul
        assert proc.returncode == 0, proc.stderr
        assert "jailsyncd-web1" in consul.services()
        workdir.add("web2", jid=2, status=1, ip4_addr="127.0.52.2")
        relay.slow.set()
        started = time.monotonic()
        proc = run_cli("once", config=config, timeout=60)
        elapsed = time.monotonic() - started
        assert proc.returncode == ExitCode.CONSUL_UNAVAILABLE, proc.stderr
        assert error_line(proc.stderr) == f"jailsyncd: GET http://127.0.0.1:{relay.port}/v1/agent/services: no answer within 1s"
        [failed] = [e for e in log_events(proc.stderr) if e["event"] == "cycle_failed"]
        assert failed["duration_ms"] < 2500 and elapsed < 8, (failed, elapsed)
        assert set(consul.services()) == {"jailsyncd-web1"}

        daemon = start_daemon(config)
        wait_for(lambda: len(daemon.events("cycle_failed")) >= 2, timeout=20, what="two failed cycles over the slow link")
        durations = [e["duration_ms"] for e in daemon.events("cycle_failed")]
        assert all(d < 2500 for d in durations), durations
        assert all("no answer within 1s" in e["error"] for e in daemon.events("cycle_failed"))
        relay.slow.clear()
        wait_for(lambda: "jailsyncd-web2" in consul.services(), timeout=30, what="convergence once the link is fast")
        wait_for(lambda: daemon.events("cycle_recovered"), timeout=5, what="cycle_recovered")
        assert daemon.events("service_deregistered") == []
        assert daemon.stop() == 0
    finally:
        relay.close()


class NotConsul(http.server.ThreadingHTTPServer):
    """A web server on 127.0.0.1 that is not Consul at all (a wrong address, a proxy,
    a captive portal): every request gets the same status and body."""

    daemon_threads = True

    def __init__(self, status: int, body: bytes, content_type: str) -> None:
        answer = (status, body, content_type)

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                code, data, ctype = answer
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PUT = _answer

            def log_message(self, *args) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()


@pytest.mark.parametrize(
    "status, body, content_type",
    [
        pytest.param(502, b"<html>bad gateway</html>", "text/html", id="proxy-5xx"),
        pytest.param(
            404, b"404 page not found", "text/plain", id="not-consul-404",
        ),
        pytest.param(
            200, b"<html>captive portal</html>", "text/html", id="not-consul-html",
        ),
    ],
)
def test_an_address_that_is_not_a_working_consul(tmp_path: Path, workdir: Workdir, status: int, body: bytes, content_type: str) -> None:
    workdir.add("web1", jid=1, status=1, ip4_addr="127.0.50.1")
    server = NotConsul(status, body, content_type)
    try:
        config = write_config(tmp_path / "c.toml", workdir=workdir.root, consul=ConsulServer("unused", http_port=server.server_address[1]))
        proc = run_cli("once", config=config)
    finally:
        server.shutdown()
        server.server_close()
    assert proc.returncode == ExitCode.CONSUL_UNAVAILABLE, proc.stderr
    line = error_line(proc.stderr)
    assert line.startswith(f"jailsyncd: GET http://127.0.0.1:{server.server_address[1]}/v1/agent/"), line
    assert not [e for e in log_events(proc.stderr) if e["event"] == "service_registered"]


# -- an agent without servers -------------------------------------------------------------


def test_agent_without_servers_keeps_registrations_and_syncs_when_a_server_joins(consul_bin: str, tmp_path: Path, workdir: Workdir) -> None:
    """Agent mode talks only to the local agent, which keeps its own services whether
    or not a server is reachable: ``once`` succeeds (exit 0), the services wait on
    the agent, and reach the catalog by themselves once a server is there."""
    server = Agent(consul_bin, tmp_path / "server")  # not started yet: its port is the join target
    client = Agent(consul_bin, tmp_path / "client", server=False, retry_join=server.ports["serf_lan"]).start()
    try:
        status, body, _ = client.api.request("GET", "/v1/catalog/services")
        assert (status, body) == (500, "No known Consul servers")
        workdir.add("web1", jid=1, status=1, ip4_addr="127.0.51.1")
        workdir.add("db1", jid=2, status=1, ip4_addr="127.0.51.2")
        config = write_config(tmp_path / "c.toml", workdir=workdir.root, consul=client.api)
        proc = run_cli("once", config=config)
        assert proc.returncode == 0, proc.stderr
        assert set(owned(client.api)) == {"jailsyncd-web1", "jailsyncd-db1"}
        server.start()
        wait_for(
            lambda: {"web1", "db1"} <= set(server.api.get("/v1/catalog/services")), timeout=30,
            what="the client's services in the new server's catalog",
        )
        assert set(owned(client.api)) == {"jailsyncd-web1", "jailsyncd-db1"}
    finally:
        client.stop()
        server.stop()


# -- ACL: a token revoked under a registered host ------------------------------------------


AGENT_RULES = 'service_prefix "" { policy = "write" }\nnode_prefix "" { policy = "read" }\n'


def make_token(server: ConsulServer, rules: str) -> dict:
    name = f"p-{uuid.uuid4().hex[:8]}"
    server.put("/v1/acl/policy", {"Name": name, "Rules": rules})
    return server.put("/v1/acl/token", {"Policies": [{"Name": name}]})


def revoke(server: ConsulServer, token: dict) -> None:
    status, body, _ = server.request("DELETE", f"/v1/acl/token/{token['AccessorID']}")
    assert status == 200, body


def test_revoked_token_refuses_cleanly_and_a_new_token_file_heals(acl_consul: ConsulServer, tmp_path: Path, workdir: Workdir) -> None:
    acl_consul.wipe()
    workdir.add("web1", jid=1, status=1, ip4_addr="127.0.52.1")
    workdir.add("db1", jid=2, status=1, ip4_addr="127.0.52.2")
    first = make_token(acl_consul, AGENT_RULES)
    token_file = tmp_path / "token"
    token_file.write_text(first["SecretID"] + "\n")
    config = write_config(tmp_path / "c.toml", workdir=workdir.root, consul=acl_consul, consul_extra=f'token_file = "{token_file}"')
    assert run_cli("once", config=config).returncode == 0
    before = acl_consul.services()
    revoke(acl_consul, first)
    workdir.stop("db1")  # a deregistration is due, but may not happen without a valid token
    workdir.add("mail", jid=3, status=1, ip4_addr="127.0.52.3")
    proc = run_cli("once", config=config)
    assert proc.returncode == ExitCode.CONSUL_REFUSED, proc.stderr
    line = error_line(proc.stderr)
    assert line.startswith(f"jailsyncd: GET http://{acl_consul.address}/v1/agent/services: permission denied"), line
    assert first["SecretID"] not in proc.stderr + proc.stdout
    assert acl_consul.services() == before
    second = make_token(acl_consul, AGENT_RULES)
    token_file.write_text(second["SecretID"] + "\n")  # the file is read again by every run
    proc = run_cli("once", config=config)
    assert proc.returncode == 0, proc.stderr
    assert set(acl_consul.services()) == {"jailsyncd-web1", "jailsyncd-mail"}


def test_token_revoked_under_the_daemon_heals_without_a_restart(acl_consul: ConsulServer, tmp_path: Path, workdir: Workdir, start_daemon) -> None:
    acl_consul.wipe()
    workdir.add("web1", jid=1, status=1, ip4_addr="127.0.52.1")
    first = make_token(acl_consul, AGENT_RULES)
    token_file = tmp_path / "token"
    token_file.write_text(first["SecretID"])
    extra = '[sync]\ninterval = "1h"\njitter = "0s"\nbackoff_max = "1s"\n'
    config = write_config(tmp_path / "c.toml", workdir=workdir.root, consul=acl_consul, consul_extra=f'token_file = "{token_file}"', extra=extra)
    daemon = start_daemon(config)
    assert set(acl_consul.services()) == {"jailsyncd-web1"}
    revoke(acl_consul, first)
    workdir.add("db1", jid=2, status=1, ip4_addr="127.0.52.2")
    wait_for(lambda: len(daemon.events("cycle_failed")) >= 2, timeout=10, what="refused cycles")
    assert {e["error_kind"] for e in daemon.events("cycle_failed")} == {"ConsulRefused"}
    assert set(acl_consul.services()) == {"jailsyncd-web1"}
    token_file.write_text(make_token(acl_consul, AGENT_RULES)["SecretID"])
    wait_for(lambda: set(acl_consul.services()) == {"jailsyncd-web1", "jailsyncd-db1"}, timeout=10, what="convergence with the new token")
    assert daemon.events("service_deregistered") == []
    assert first["SecretID"] not in daemon.log_path.read_text()
    assert daemon.stop() == 0


def test_a_token_that_sees_nothing_deregisters_nothing(acl_consul: ConsulServer, tmp_path: Path, workdir: Workdir) -> None:
    """With default deny, Consul silently filters /v1/agent/services down to what the
    token may read: a token without service:read sees no service at all. That must
    never turn into deregistrations (and cannot: jailsyncd only removes what it sees)."""
    acl_consul.wipe()
    workdir.add("web1", jid=1, status=1, ip4_addr="127.0.52.1")
    workdir.add("db1", jid=2, status=1, ip4_addr="127.0.52.2")
    good = make_token(acl_consul, AGENT_RULES)
    config = write_config(tmp_path / "c.toml", workdir=workdir.root, consul=acl_consul)
    assert run_cli("once", config=config, env={"CONSUL_HTTP_TOKEN": good["SecretID"]}).returncode == 0
    before, index = acl_consul.services(), acl_consul.index()
    blind = make_token(acl_consul, 'node_prefix "" { policy = "read" }\n')
    workdir.stop("db1")
    proc = run_cli("once", config=config, env={"CONSUL_HTTP_TOKEN": blind["SecretID"]})
    assert proc.returncode == ExitCode.CONSUL_REFUSED, proc.stderr
    assert "permission denied" in error_line(proc.stderr)
    assert not [e for e in log_events(proc.stderr) if e["event"] == "service_deregistered"]
    assert acl_consul.services() == before and acl_consul.index() == index


UP = "10.77.0.1"  # on the namespace's lo only: the probes never leave the namespace


@pytest.mark.skipif(available() is not None, reason=str(available()))
def test_token_rotation_keeps_health_reaching_the_catalog(consul_bin: str, tmp_path: Path, workdir: Workdir) -> None:
    master = str(uuid.uuid4())
    hcl = (
        "disable_update_check = true\n"
        f'acl {{\n  enabled = true\n  default_policy = "deny"\n  tokens {{\n    master = "{master}"\n    agent = "{master}"\n  }}\n}}\n'
    )
    with NetNS() as netns:
        netns.add_address(UP)
        server = ConsulServer(consul_bin, hcl=hcl, token=master, netns=netns).start()
        try:
            workdir.add("web1", jid=1, status=1, ip4_addr=UP)
            first = make_token(server, AGENT_RULES)
            token_file = tmp_path / "token"
            token_file.write_text(first["SecretID"])
            health = 'interval = "2s"\ntimeout = "300ms"\ncount = 1\nfailures_before_critical = 1\nsuccess_before_passing = 1'
            config = write_config(
                tmp_path / "c.toml", workdir=workdir.root, consul=server, consul_extra=f'token_file = "{token_file}"', health=health
            )

            def once_in_netns() -> subprocess.CompletedProcess:
                env = {k: v for k, v in os.environ.items() if not k.startswith("CONSUL_")}
                argv = [*netns.prefix(), sys.executable, "-m", "jailsyncd", "--config", str(config), "once"]
                return subprocess.run(argv, capture_output=True, text=True, env=env, cwd=str(REPO), timeout=60)

            def catalog_ping() -> str:
                checks = {c["CheckID"]: c["Status"] for e in server.get("/v1/health/service/web1") for c in e["Checks"]}
                return checks.get("jailsyncd-web1:ping", "absent")

            assert once_in_netns().returncode == 0
            wait_for(lambda: catalog_ping() == "passing", timeout=5, what="web1 passing in the catalog")
            revoke(server, first)
            token_file.write_text(make_token(server, AGENT_RULES)["SecretID"])  # the rotation
            netns.del_address(UP)  # and then the jail goes down
            proc = once_in_netns()
            assert proc.returncode == 0, proc.stderr
            assert server.get("/v1/agent/checks")["jailsyncd-web1:ping"]["Status"] == "critical"
            try:
                wait_for(lambda: catalog_ping() == "critical", timeout=3, what="web1 critical in the catalog")
            except AssertionError:
                pass
            assert catalog_ping() == "critical", "the agent says critical, the catalog (and DNS) still say passing"
        finally:
            server.stop()
