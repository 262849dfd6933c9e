"""What the benchmark compares jailsyncd with, and how it looks at Consul.

- ``Capture``: records every write jailsyncd sends (method, path, body) while it
  converges, so that the baselines send exactly the same payloads;
- ``tight_agent``: Consul's own limit in agent mode: one keep-alive connection, one
  ``PUT /v1/agent/service/register`` after the other, nothing else;
- ``tight_txn``: the same services through ``/v1/txn`` in batches of 64 operations
  (catalog mode's limit);
- ``curl_hooks``: the usual CBSD hook scripts: one ``curl`` process per jail;
- ``owned_in_catalog``/``wait_converged``: how many of this host's services clients
  of the catalog can see (one request, whatever the mode).

All traffic goes to the ``ConsulServer`` given, which listens on 127.0.0.1 (inside a
private network namespace when the caller runs on that namespace's thread).
"""

from __future__ import annotations

import http.client
import json
import shutil
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

import consul.std as consul_std

from testing.devconsul import ConsulServer

TXN_OPS = 64
SERVICE_PREFIX = "jailsyncd-"


@dataclass
class Write:
    method: str
    path: str
    body: Any


@dataclass
class Captured:
    writes: list[Write] = field(default_factory=list)
    #: Bytes of every response body read, in order.
    read_bytes: list[int] = field(default_factory=list)

    def registrations(self) -> list[dict]:
        """Bodies of agent-API service registrations, in order (last one per ID wins)."""
        by_id: dict[str, dict] = {}
        for w in self.writes:
            if w.path == "/v1/agent/service/register" and isinstance(w.body, dict):
                by_id[w.body["ID"]] = w.body
        return list(by_id.values())

    def txn_ops(self) -> list[dict]:
        return [op for w in self.writes if w.path == "/v1/txn" and isinstance(w.body, list) for op in w.body]


@contextmanager
def capture() -> Iterator[Captured]:
    """Record the PUTs python-consul2 sends in this process (jailsyncd's only writes),
    and the size of every response it reads."""
    seen = Captured()
    original = consul_std.HTTPClient.put
    original_response = consul_std.HTTPClient.response

    def response(resp):
        seen.read_bytes.append(len(resp.content))
        return original_response(resp)

    def put(self, callback, path, params=None, data="", headers=None):
        try:
            body = json.loads(data) if data else None
        except ValueError:
            body = data
        seen.writes.append(Write("PUT", path, body))
        return original(self, callback, path, params=params, data=data, headers=headers)

    consul_std.HTTPClient.put = put
    consul_std.HTTPClient.response = staticmethod(response)
    try:
        yield seen
    finally:
        consul_std.HTTPClient.put = original
        consul_std.HTTPClient.response = staticmethod(original_response)


# -- reading Consul ---------------------------------------------------------------------


def owned_in_catalog(consul: ConsulServer, owner: str) -> int:
    """Service instances with our ID prefix and owner meta, on any node of the catalog."""
    nodes = consul.get("/v1/internal/ui/nodes") or []
    count = 0
    for node in nodes:
        for svc in node.get("Services") or []:
            if svc.get("ID", "").startswith(SERVICE_PREFIX) and (svc.get("Meta") or {}).get("jailsyncd-owner") == owner:
                count += 1
    return count


def wait_converged(consul: ConsulServer, owner: str, expected: int, *, timeout: float) -> float:
    """Seconds until the catalog shows ``expected`` owned services (raises after ``timeout``)."""
    started = time.monotonic()
    deadline = started + timeout
    seen = -1
    while time.monotonic() < deadline:
        seen = owned_in_catalog(consul, owner)
        if seen >= expected:
            return time.monotonic() - started
        time.sleep(0.1)
    raise TimeoutError(f"catalog shows {seen} of {expected} services after {timeout:.0f}s")


def index(consul: ConsulServer) -> tuple[int, int, int]:
    """Raft indexes of the catalog's services, nodes and checks: any catalog write moves one."""
    out = []
    for path in ("/v1/catalog/services", "/v1/catalog/nodes", "/v1/health/state/any"):
        _, _, headers = consul.request("GET", path)
        out.append(int(headers["X-Consul-Index"]))
    return tuple(out)  # type: ignore[return-value]


def present(consul: ConsulServer, name: str, service_id: str) -> bool:
    """Whether the catalog (what DNS and clients see) has this instance."""
    status, body, _ = consul.request("GET", f"/v1/catalog/service/{name}")
    return status == 200 and any(e.get("ServiceID") == service_id for e in body or [])


# -- the baselines ----------------------------------------------------------------------


class _Client:
    """A minimal keep-alive HTTP client: what "as fast as Consul accepts" can use."""

    def __init__(self, consul: ConsulServer) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", consul.http_port, timeout=60)

    def put(self, path: str, body: Any) -> tuple[int, bytes]:
        self.conn.request("PUT", path, json.dumps(body), {"Content-Type": "application/json"})
        resp = self.conn.getresponse()
        return resp.status, resp.read()

    def close(self) -> None:
        self.conn.close()


def tight_agent(consul: ConsulServer, bodies: list[dict]) -> float:
    """Register ``bodies`` one after the other; seconds until the last is accepted."""
    client = _Client(consul)
    try:
        started = time.monotonic()
        for body in bodies:
            status, out = client.put("/v1/agent/service/register", body)
            if status != 200:
                raise RuntimeError(f"register {body.get('ID')}: HTTP {status} {out[:200]!r}")
        return time.monotonic() - started
    finally:
        client.close()


def tight_txn(consul: ConsulServer, ops: list[dict]) -> tuple[float, int]:
    """Apply ``ops`` in order through ``/v1/txn``, 64 per transaction: (seconds, transactions)."""
    client = _Client(consul)
    try:
        started = time.monotonic()
        batches = [ops[i : i + TXN_OPS] for i in range(0, len(ops), TXN_OPS)]
        for batch in batches:
            status, out = client.put("/v1/txn", batch)
            if status != 200:
                raise RuntimeError(f"txn: HTTP {status} {out[:300]!r}")
        return time.monotonic() - started, len(batches)
    finally:
        client.close()


def catalog_ops(bodies: list[dict], owner: str) -> list[dict]:
    """Catalog-API operations for the agent-API ``bodies`` (used when jailsyncd's own
    catalog mode did not run): one external node per service, the service on it, and
    one node check per TTL check (alias checks exist only on agents)."""
    ops: list[dict] = []
    for body in bodies:
        node = body["ID"].replace(".", "-")
        ops.append({"Node": {"Verb": "set", "Node": {"Node": node, "Address": body.get("Address") or "127.0.0.1", "Meta": {"external-node": "true", "jailsyncd-owner": owner}}}})
        svc = {k: v for k, v in body.items() if k != "Checks"}
        svc["Service"] = svc.pop("Name")
        ops.append({"Service": {"Verb": "set", "Node": node, "Service": svc}})
        for check in body.get("Checks") or []:
            if "TTL" in check:
                ops.append({"Check": {"Verb": "set", "Check": {"Node": node, "CheckID": check["CheckID"], "Name": check["Name"], "Status": check.get("Status", "critical"), "ServiceID": body["ID"]}}})
    return ops


def curl_path() -> str | None:
    return shutil.which("curl")


def curl_hooks(consul: ConsulServer, bodies: list[dict], *, deadline: float) -> float:
    """One ``curl -X PUT`` process per service, one after the other, as CBSD's
    ``master_poststart.d`` hooks do when jails start."""
    curl = curl_path()
    assert curl is not None
    url = f"http://127.0.0.1:{consul.http_port}/v1/agent/service/register"
    started = time.monotonic()
    for body in bodies:
        if time.monotonic() > deadline:
            raise TimeoutError("curl baseline ran past its deadline")
        subprocess.run([curl, "-sS", "--fail", "-X", "PUT", "--data", json.dumps(body), url], check=True, capture_output=True, timeout=30)
    return time.monotonic() - started
