"""A local Consul dev agent on loopback, for the demo, the tests and the benchmarks.

Used by ``scripts/demo``, ``tests/conftest.py`` and ``bench/``; never by the daemon.
``ConsulServer`` runs the real binary (``scripts/get-consul`` finds or fetches it)
bound to 127.0.0.1 on free ports, and talks to it with plain ``urllib`` so that checks
do not depend on the code under test.
"""

from __future__ import annotations

import json
import random
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable


def terminate(proc: subprocess.Popen | None, timeout: float = 10) -> None:
    """SIGTERM, then SIGKILL if it is still there after ``timeout`` seconds."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


#: Ports this process handed out already: never twice, even once they are free again
#: (a server restarted on its ports must find them as it left them).
_HANDED_OUT: set[int] = set()


def _ephemeral_range() -> tuple[int, int]:
    """The kernel's range for the local ports of outgoing connections (Linux)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default; FreeBSD's is 49152-65535


def _bindable(port: int, *, reuse: bool = False) -> bool:
    """Whether 127.0.0.1:``port`` is free for TCP *and* UDP (Consul's DNS and serf
    ports take both). ``reuse``: as Go's listeners bind (SO_REUSEADDR), so that a
    connection of the agent's previous run still in TIME_WAIT does not count."""
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as s:
            if reuse and kind == socket.SOCK_STREAM:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def free_port() -> int:
    """A loopback port free for TCP and UDP, from below the kernel's ephemeral range.

    Not from the ephemeral range (``bind(0)``): the kernel hands those ports to every
    outgoing connection, so a port kept across a Consul restart could be taken while
    the agent is down (by a client's connection, or by a connection to that very port,
    which on Linux can connect to itself), and the agent then fails to start with
    "address already in use". Below that range only listeners take ports."""
    low, _high = _ephemeral_range()
    top = max(low - 1, 2048)
    bottom = max(1024, top - 20000)
    rng = random.Random()
    for _ in range(200):
        port = rng.randint(bottom, top)
        if port not in _HANDED_OUT and _bindable(port):
            _HANDED_OUT.add(port)
            return port
    raise RuntimeError(f"no free loopback port between {bottom} and {top}")


def wait_for(predicate: Callable[[], Any], *, timeout: float = 10.0, interval: float = 0.05, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - keep polling until the deadline
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}" + (f" (last error: {last_exc})" if last_exc else ""))


#: How often ``ConsulServer.start`` tries when a port turns out to be taken.
START_ATTEMPTS = 3


@dataclass
class ConsulServer:
    """A ``consul agent -dev`` on 127.0.0.1 with private ports; ``hcl`` adds config."""

    binary: str
    hcl: str = ""
    token: str | None = None  # management token used by the harness itself
    http_port: int = field(default_factory=free_port)
    dns_port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    workdir: Path | None = None
    #: Run the agent inside this ``devnet.NetNS``; requests then go through it too.
    netns: Any = None
    #: The agent's node name (``-node``); a test may change it between a stop and a start.
    node: str = "jailsyncd-test"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    def start(self) -> "ConsulServer":
        self.workdir = Path(tempfile.mkdtemp(prefix="jailsyncd-consul-"))
        # No update check: a dev agent here must not try to reach the internet.
        hcl = self.hcl if "disable_update_check" in self.hcl else "disable_update_check = true\n" + self.hcl
        (self.workdir / "extra.hcl").write_text(hcl)
        # A port can still be taken by someone else (another program on the machine):
        # then the agent exits at once saying so, and it is started again, on fresh
        # internal ports, after its own HTTP and DNS ports (kept: clients know them)
        # are free again. Bounded: a few attempts, each bounded in time.
        for attempt in range(1, START_ATTEMPTS + 1):
            self._launch()
            # An agent that exited ends the wait at once (not after the 30 s).
            state = wait_for(self._leader_or_exit, timeout=30, what=f"Consul leader on {self.address} (log: {self.workdir}/consul.log)")
            if state == "leader":
                return self
            log = self._log_tail()
            if attempt == START_ATTEMPTS or "address already in use" not in log:
                raise AssertionError(f"Consul on {self.address} exited with {self.proc.returncode} at start; its log ends: {log}")
            wait_for(lambda: _bindable(self.http_port, reuse=True) and _bindable(self.dns_port, reuse=True), timeout=15, interval=0.1,
                     what=f"ports {self.http_port} and {self.dns_port} free again")
        raise AssertionError("unreachable")

    def _launch(self) -> None:
        assert self.workdir is not None
        args = [
            self.binary, "agent", "-dev", "-client", "127.0.0.1", "-bind", "127.0.0.1",
            "-http-port", str(self.http_port), "-dns-port", str(self.dns_port),
            "-serf-lan-port", str(free_port()), "-serf-wan-port", str(free_port()),
            "-server-port", str(free_port()), "-grpc-port", "-1",
            "-node", self.node, "-config-file", str(self.workdir / "extra.hcl"),
        ]
        with open(self.workdir / "consul.log", "wb") as log:  # Popen keeps its own copy of the fd
            prefix = self.netns.prefix() if self.netns is not None else []
            self.proc = subprocess.Popen([*prefix, *args], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def _log_tail(self, lines: int = 5) -> str:
        try:
            text = (self.workdir / "consul.log").read_text(errors="replace") if self.workdir else ""
        except OSError:
            return "(no log)"
        return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:]) or "(empty log)"

    def _leader_or_exit(self) -> str:
        """'leader', 'exited', or '' (not yet)."""
        if self.proc is not None and self.proc.poll() is not None:
            return "exited"
        try:
            return "leader" if self.get("/v1/status/leader") else ""
        except (OSError, AssertionError):  # URLError is an OSError; a non-200 asserts
            return ""

    def _has_leader(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"consul exited with {self.proc.returncode}; see {self.workdir}/consul.log")
        return bool(self.get("/v1/status/leader"))

    def stop(self) -> None:
        terminate(self.proc)
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # -- plain HTTP, independent of the code under test -----------------------------

    def request(self, method: str, path: str, body: Any = None, token: str | None = None) -> tuple[int, Any, dict]:
        if self.netns is not None:
            return self.netns.call(self._request, method, path, body, token)
        return self._request(method, path, body, token)

    def _request(self, method: str, path: str, body: Any = None, token: str | None = None) -> tuple[int, Any, dict]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"http://{self.address}{path}", data=data, method=method)
        if token or self.token:
            req.add_header("X-Consul-Token", token or self.token)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                raw = resp.read()
                return resp.status, (json.loads(raw) if raw else None), dict(resp.headers)
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(), dict(exc.headers)

    def get(self, path: str) -> Any:
        status, body, _ = self.request("GET", path)
        assert status == 200, f"GET {path}: {status} {body}"
        return body

    def put(self, path: str, body: Any = None) -> Any:
        status, result, _ = self.request("PUT", path, body)
        assert status == 200, f"PUT {path}: {status} {result}"
        return result

    def services(self) -> dict[str, dict]:
        """The agent's services, without Consul's own."""
        return {k: v for k, v in self.get("/v1/agent/services").items() if k != "consul"}

    def index(self) -> int:
        """The catalog's raft index for services: it moves on every catalog write."""
        _, _, headers = self.request("GET", "/v1/catalog/services")
        return int(headers["X-Consul-Index"])

    def wipe(self) -> None:
        for sid in self.services():
            self.put(f"/v1/agent/service/deregister/{urllib.parse.quote(sid, safe='')}")


# -- a real multi-server cluster on loopback ----------------------------------------------


def distinct_ports(count: int) -> list[int]:
    """``count`` free loopback ports, all different, from below the ephemeral range
    (``free_port``): cluster agents keep theirs across restarts."""
    return [free_port() for _ in range(count)]


@dataclass
class ClusterAgent(ConsulServer):
    """One agent of a ``ConsulCluster``: a server or a client, not ``-dev``, with its
    own data directory (kept across ``restart``) and its own ports on 127.0.0.1."""

    name: str = "agent"
    server: bool = False
    serf_port: int = 0
    rpc_port: int = 0
    wan_port: int = 0
    join: tuple[str, ...] = ()
    bootstrap_expect: int = 0
    extra_hcl: str = ""

    def write_config(self, root: Path) -> Path:
        self.workdir = root / self.name
        (self.workdir / "data").mkdir(parents=True, exist_ok=True)
        joins = ", ".join(f'"{j}"' for j in self.join)
        hcl = f"""
datacenter = "dc1"
node_name = "{self.name}"
data_dir = "{self.workdir / 'data'}"
server = {'true' if self.server else 'false'}
{f'bootstrap_expect = {self.bootstrap_expect}' if self.server else ''}
bind_addr = "127.0.0.1"
client_addr = "127.0.0.1"
ports {{
  http = {self.http_port}
  dns = -1
  serf_lan = {self.serf_port}
  serf_wan = {self.wan_port if self.server else -1}
  server = {self.rpc_port}
  grpc = -1
}}
retry_join = [{joins}]
retry_interval = "1s"
performance {{ raft_multiplier = 1 }}
{'autopilot { server_stabilization_time = "1s" }' if self.server else ''}
disable_update_check = true
log_level = "info"
{self.extra_hcl}
"""
        path = self.workdir / "agent.hcl"
        path.write_text(hcl)
        return path

    def start(self) -> "ClusterAgent":  # type: ignore[override]
        assert self.workdir is not None, "ConsulCluster writes the config first"
        with open(self.workdir / "consul.log", "ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, "agent", "-config-file", str(self.workdir / "agent.hcl")],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        return self

    def answers(self) -> bool:
        """The agent answers its HTTP API and knows a leader."""
        if self.proc is None or self.proc.poll() is not None:
            return False
        try:
            return bool(self.get("/v1/status/leader"))
        except (OSError, AssertionError, ValueError):
            return False

    def kill(self) -> None:
        """SIGKILL: no leave, no clean shutdown (a crash, a power cut)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:  # keeps the data directory, unlike ConsulServer.stop
        terminate(self.proc)


@dataclass
class ConsulCluster:
    """``servers`` Consul servers and ``clients`` client agents on 127.0.0.1 with
    private ports, ``raft_multiplier = 1`` (a new leader within about 2 s), for the
    tests (tests/integration/test_cluster.py) and ``bench/cluster.py``."""

    binary: str
    servers: int = 3
    clients: int = 1
    root: Path | None = None
    agents: list[ClusterAgent] = field(default_factory=list)
    client_hcl: str = ""

    def start(self, timeout: float = 60.0) -> "ConsulCluster":
        self.root = Path(tempfile.mkdtemp(prefix="jailsyncd-cluster-"))
        ports = iter(distinct_ports(4 * (self.servers + self.clients)))

        def agent(name: str, **kw: Any) -> ClusterAgent:
            return ClusterAgent(self.binary, name=name, http_port=next(ports), serf_port=next(ports), rpc_port=next(ports), wan_port=next(ports), **kw)

        servers = [agent(f"server{i}", server=True, bootstrap_expect=self.servers) for i in range(self.servers)]
        joins = tuple(f"127.0.0.1:{s.serf_port}" for s in servers)
        for s in servers:
            s.join = tuple(j for j in joins if not j.endswith(f":{s.serf_port}"))
        clients = [agent(f"client{i}", join=joins, extra_hcl=self.client_hcl) for i in range(self.clients)]
        self.agents = servers + clients
        try:
            for member in self.agents:
                member.write_config(self.root)
                member.start()
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Every running agent answers with a leader, and every client is a member."""
        wait_for(lambda: all(a.answers() for a in self.agents if a.proc and a.proc.poll() is None), timeout=timeout, interval=0.1,
                 what=f"a leader seen by every agent (logs under {self.root})")
        wanted = {a.name for a in self.agents if a.proc and a.proc.poll() is None}
        wait_for(lambda: wanted <= {n["Node"] for n in self.server_list[0].get("/v1/catalog/nodes")}, timeout=timeout, interval=0.1,
                 what="every agent in the catalog")
        # A server that was down may have been removed from the raft configuration by
        # autopilot (dead server cleanup); back, it is a non-voter until it has been
        # stable for server_stabilization_time (1 s here). Killing a leader before
        # then would leave no quorum.
        running = {a.name for a in self.server_list if a.proc and a.proc.poll() is None}
        wait_for(lambda: running <= self._voters(), timeout=timeout, interval=0.2, what="every running server a raft voter")

    def _voters(self) -> set[str]:
        for server in self.server_list:
            if server.answers():
                config = server.get("/v1/operator/raft/configuration")
                return {s["Node"] for s in config["Servers"] if s.get("Voter")}
        return set()

    @property
    def server_list(self) -> list[ClusterAgent]:
        return [a for a in self.agents if a.server]

    @property
    def client_list(self) -> list[ClusterAgent]:
        return [a for a in self.agents if not a.server]

    def leader(self) -> ClusterAgent:
        """The server that is the raft leader now."""
        for agent in self.server_list:
            if agent.proc is None or agent.proc.poll() is not None:
                continue
            try:
                address = agent.get("/v1/status/leader")
            except (OSError, AssertionError, ValueError):
                continue
            for server in self.server_list:
                if address.endswith(f":{server.rpc_port}"):
                    return server
        raise AssertionError("no leader")

    def raft_index(self) -> int:
        """The leader's last raft log index: every committed write moves it."""
        stats = self.leader().get("/v1/agent/self")["Stats"]["raft"]
        return int(stats["last_log_index"])

    def stop(self) -> None:
        for agent in self.agents:
            agent.stop()
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
