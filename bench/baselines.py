"""What the benchmark compares jailsyncd with, and how it looks at Consul.

- ``Capture``: records every write jailsyncd sends (method, path, body) while it
  converges, so that the baselines send exactly the same payloads;
- ``tight_agent``: Consul's own limit in agent mode: one keep-alive connection, one
  ``PUT /v1/agent/service/register`` after the other, nothing else;
- ``tight_txn``: the same services through ``/v1/txn`` in batches of 64 operations
  (catalog mode's limit);
- ``curl_hooks``: the usual CBSD hook scripts: one ``curl`` process per jail;
- ``wait_converged``: until clients of the catalog can see every one of this host's
  services (``/v1/catalog/services``: one request per poll, whatever the mode), then
  ``owned_in_catalog`` checks each is ours (``/v1/catalog/service/<name>``);
- ``entry``/``drift``: one service as Consul holds it, and the hand edits an operator
  makes (agent API, catalog API) for the drift-repair rows.

Only Consul's public, documented HTTP API is used (issue 14, item 4).

All traffic goes to the ``ConsulServer`` given, which listens on 127.0.0.1 (inside a
private network namespace when the caller runs on that namespace's thread).
"""

from __future__ import annotations

import http.client
import json
import shutil
import subprocess
import time
import urllib.parse
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

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
        """The writing operations of every ``/v1/txn`` sent, in order. Reads
        (``get``: catalog mode reads its own nodes and services in read-only
        transactions) are left out: the limit is what Consul needs to write."""
        return [
            op for w in self.writes if w.path == "/v1/txn" and isinstance(w.body, list) for op in w.body
            if not any(isinstance(v, dict) and v.get("Verb") == "get" for v in op.values())
        ]


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


def names_in_catalog(consul: ConsulServer) -> set[str]:
    """The service names the catalog lists (``/v1/catalog/services``: one request,
    public API; what DNS and clients can look up)."""
    return set(consul.get("/v1/catalog/services") or {})


def owned_in_catalog(consul: ConsulServer, owner: str, names: Iterable[str]) -> int:
    """Instances of the services ``names`` with our ID prefix and owner meta, on any
    node of the catalog: one ``/v1/catalog/service/<name>`` each (public API)."""
    count = 0
    for name in names:
        for svc in consul.get(f"/v1/catalog/service/{urllib.parse.quote(name, safe='')}") or []:
            if svc.get("ServiceID", "").startswith(SERVICE_PREFIX) and (svc.get("ServiceMeta") or {}).get("jailsyncd-owner") == owner:
                count += 1
    return count


def wait_converged(consul: ConsulServer, owner: str, names: Iterable[str], *, timeout: float) -> float:
    """Seconds until the catalog lists every service of ``names`` (polled with one
    ``/v1/catalog/services`` at a time; raises after ``timeout``). Then, off the
    clock, every one is checked to be an instance of ours (ID prefix, owner meta)."""
    wanted = set(names)
    started = time.monotonic()
    deadline = started + timeout
    missing = len(wanted)
    while time.monotonic() < deadline:
        missing = len(wanted - names_in_catalog(consul))
        if not missing:
            took = time.monotonic() - started
            owned = owned_in_catalog(consul, owner, wanted)
            if owned < len(wanted):
                raise RuntimeError(f"the catalog lists all {len(wanted)} names but only {owned} instances are ours")
            return took
        time.sleep(0.05)
    raise TimeoutError(f"catalog lacks {missing} of {len(wanted)} services after {timeout:.0f}s")


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


# -- hand edits (the drift-repair rows) ------------------------------------------------


def entry(consul: ConsulServer, mode: str, name: str, service_id: str) -> tuple | None:
    """The service ``service_id`` as Consul holds it now, reduced to what jailsyncd
    decides (tags, address, port, meta), or None when it is not there. Agent mode
    asks the agent (``/v1/agent/service/<id>``: what jailsyncd writes; the catalog
    follows by the agent's anti-entropy); catalog mode asks the catalog."""
    if mode == "agent":
        status, body, _ = consul.request("GET", f"/v1/agent/service/{urllib.parse.quote(service_id, safe='')}")
        if status != 200 or not isinstance(body, dict):
            return None
        return (tuple(sorted(body.get("Tags") or ())), body.get("Address"), body.get("Port"), tuple(sorted((body.get("Meta") or {}).items())))
    status, body, _ = consul.request("GET", f"/v1/catalog/service/{urllib.parse.quote(name, safe='')}")
    for e in (body or []) if status == 200 else []:
        if e.get("ServiceID") == service_id:
            return (
                tuple(sorted(e.get("ServiceTags") or ())), e.get("ServiceAddress"), e.get("ServicePort"),
                tuple(sorted((e.get("ServiceMeta") or {}).items())), e.get("Node"),
            )
    return None


HAND_TAG = "edited-by-hand"


def hand_deregister(consul: ConsulServer, mode: str, name: str, service_id: str) -> None:
    """What an operator does to remove it: the agent API (agent mode), or the
    whole external node through ``/v1/catalog/deregister`` (catalog mode)."""
    if mode == "agent":
        consul.put(f"/v1/agent/service/deregister/{urllib.parse.quote(service_id, safe='')}")
        return
    node = next(e["Node"] for e in consul.get(f"/v1/catalog/service/{urllib.parse.quote(name, safe='')}") if e.get("ServiceID") == service_id)
    consul.put("/v1/catalog/deregister", {"Node": node})


def hand_edit(consul: ConsulServer, mode: str, name: str, service_id: str) -> None:
    """Register it again by hand with other tags (one more, one less), keeping its
    ID, address, port and meta: the agent API (agent mode) or ``/v1/catalog/register``
    on its node (catalog mode)."""
    if mode == "agent":
        svc = consul.get(f"/v1/agent/service/{urllib.parse.quote(service_id, safe='')}")
        body = {
            "ID": svc["ID"], "Name": svc["Service"], "Tags": [*(svc.get("Tags") or [])[1:], HAND_TAG],
            "Address": svc.get("Address", ""), "Port": svc.get("Port", 0), "Meta": svc.get("Meta") or {},
        }
        if svc.get("TaggedAddresses"):
            body["TaggedAddresses"] = svc["TaggedAddresses"]
        consul.put("/v1/agent/service/register", body)
        return
    e = next(e for e in consul.get(f"/v1/catalog/service/{urllib.parse.quote(name, safe='')}") if e.get("ServiceID") == service_id)
    consul.put(
        "/v1/catalog/register",
        {
            "Node": e["Node"], "Address": e["Address"], "SkipNodeUpdate": True,
            "Service": {
                "ID": service_id, "Service": e["ServiceName"], "Tags": [*(e.get("ServiceTags") or [])[1:], HAND_TAG],
                "Address": e.get("ServiceAddress", ""), "Port": e.get("ServicePort", 0), "Meta": e.get("ServiceMeta") or {},
                **({"TaggedAddresses": e["ServiceTaggedAddresses"]} if e.get("ServiceTaggedAddresses") else {}),
            },
        },
    )


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
