"""Read and write what this host owns in Consul: ``ConsulAgent`` (agent mode) or
``ConsulCatalog`` (catalog mode), chosen by ``connect``.

Called by ``reconcile`` (``read``, ``apply``), ``healthloop`` (``write_checks``,
``update_check``) and ``cli``. The only module that imports python-consul2 (and the
``requests`` it runs on).

python-consul2 is used as the transport and response checker: its ``HTTPClient``
sends the requests, its ``CB`` callbacks map status codes to exceptions. Its
high-level ``Consul`` object is not used because it reads ``CONSUL_HTTP_ADDR`` and
``CONSUL_HTTP_TOKEN`` itself and lets them override explicit arguments, and its
``register`` cannot send ``TaggedAddresses``. The token travels only in the
``X-Consul-Token`` header, never in a URL; no message built here contains it.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import heapq
import itertools
import json
import os
import socket
import threading
import time
from typing import Any, Callable, Iterator, Sequence

import consul.base as consul_base
import consul.std as consul_std
import requests
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from jailsyncd.errors import ConfigError, ConsulDenied, ConsulError, ConsulRefused, ConsulRejected, JailsyncdError
from jailsyncd.health import Target
from jailsyncd.model import META_OWNER, META_SERVICE_ID, SELF_CHECK_ID, SELF_SERVICE_ID, SERVICE_ID_PREFIX, Action, CheckSpec, Observed, Service
from jailsyncd.settings import ConsulSettings


#: Check output is cut to this many characters (Consul's default limit is 4 KiB).
MAX_OUTPUT = 1024


# -- the request deadline -----------------------------------------------------------------
#
# requests' ``timeout`` is a socket timeout: it restarts with every byte received, so an
# answer that trickles in (a hung proxy, a saturated agent) can hold a request, and the
# daemon's only worker, for any length of time. ``consul.timeout`` is a deadline for the
# whole request instead: a watchdog thread shuts the connection's socket down when it
# passes, which ends any blocked connect, TLS handshake, send or recv at once (shutdown(2)
# wakes a thread blocked on the socket, on Linux and FreeBSD alike; close(2) would not).

#: Bytes of the answers' bodies received by the request running in this thread (set
#: by ``ConsulClient.call``, counted by its response hook).
_READ_BYTES: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar("jailsyncd_read_bytes", default=None)

#: The connections used by the request running in this thread (set by ``ConsulClient.call``).
_IN_FLIGHT: contextvars.ContextVar[list[Any] | None] = contextvars.ContextVar("jailsyncd_in_flight", default=None)


class _Watchdog:
    """One daemon thread for every deadline of the process: a heap of (when, callback)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._cancelled: set[int] = set()
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None

    def arm(self, when: float, callback: Callable[[], None]) -> int:
        with self._cond:
            token = next(self._ids)
            heapq.heappush(self._heap, (when, token, callback))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="consul-deadline", daemon=True)
                self._thread.start()
            self._cond.notify()
            return token

    def disarm(self, token: int) -> None:
        with self._cond:
            self._cancelled.add(token)

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._heap and self._heap[0][1] in self._cancelled:
                    self._cancelled.discard(heapq.heappop(self._heap)[1])
                if not self._heap:
                    self._cond.wait()
                    continue
                when, token, callback = self._heap[0]
                now = time.monotonic()
                if when > now:
                    self._cond.wait(when - now)
                    continue
                heapq.heappop(self._heap)
            callback()


_WATCHDOG = _Watchdog()


def _count_bytes(response: requests.Response, *args: Any, **kwargs: Any) -> None:
    """requests' response hook: the answer's body size, for the request that asked."""
    box = _READ_BYTES.get()
    if box is not None:
        box[0] += len(response.content or b"")


def _cut(connections: list[Any], fired: threading.Event) -> None:
    """The deadline passed: shut down the sockets of the request's connections."""
    fired.set()
    for conn in connections:
        sock = getattr(conn, "sock", None)
        if sock is None:
            continue  # still connecting: the connect timeout (consul.timeout) bounds that
        with contextlib.suppress(OSError):
            # socket.socket's own shutdown: ssl.SSLSocket.shutdown would also drop its
            # SSL object under the feet of the thread reading from it.
            socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _TracksConnections:
    """A urllib3 pool that tells the running request which connection it got (a new one,
    or a kept-alive one), so that the request's deadline can cut it."""

    def _make_request(self, conn: Any, *args: Any, **kwargs: Any) -> Any:
        in_flight = _IN_FLIGHT.get()
        if in_flight is not None:
            in_flight.append(conn)
        return super()._make_request(conn, *args, **kwargs)  # type: ignore[misc]


class _HTTPPool(_TracksConnections, HTTPConnectionPool):
    pass


class _HTTPSPool(_TracksConnections, HTTPSConnectionPool):
    pass


class _DeadlineAdapter(requests.adapters.HTTPAdapter):
    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}


class _ServerNameAdapter(_DeadlineAdapter):
    """Checks the server certificate against ``tls_server_name`` instead of the host
    in the address (``CONSUL_TLS_SERVER_NAME``), e.g. ``server.dc1.consul``."""

    def __init__(self, server_name: str) -> None:
        self._server_name = server_name
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["server_hostname"] = self._server_name
        kwargs["assert_hostname"] = self._server_name
        super().init_poolmanager(*args, **kwargs)


class TokenProvider:
    """The ACL token to send, re-read from ``consul.token_file`` only when the file
    changed (inode, size, mtime or ctime: a rotation by ``mv`` or by rewriting in
    place), so a rotated token is used from the next request on without a file read
    per request. ``on_new`` is told each token read (the CLI registers it with the log
    redaction). Thread-safe: the reconcile worker and the health rounds share it."""

    def __init__(self, settings: ConsulSettings, on_new: Callable[[str], None] | None = None) -> None:
        self._settings = settings
        self._on_new = on_new
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int, int] | None = None
        self._token: str | None = None
        if settings.token_file is None and settings.token is not None:
            self._token = settings.token.reveal()
            if on_new is not None:
                on_new(self._token)

    def current(self) -> str | None:
        """The token now (None: send none); raises ``ConsulRefused`` when the token
        file cannot be read."""
        path = self._settings.token_file
        if path is None:
            return self._token
        try:
            st = path.stat()
            stamp: tuple[int, int, int, int] | None = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        except OSError:
            stamp = None  # read below, to raise the error that names the file
        with self._lock:
            if stamp is not None and stamp == self._stamp:
                return self._token
            try:
                token = self._settings.read_token()
            except ValueError as exc:
                self._stamp = None
                raise ConsulRefused(f"consul.token_file: {exc}") from None
            self._token = token.reveal() if token is not None else None
            self._stamp = stamp
        if self._token is not None and self._on_new is not None:
            self._on_new(self._token)
        return self._token


class ConsulClient:
    """The HTTP transport to one Consul agent, built once per process and shared by
    the reconcile worker and the health rounds: one connection pool (kept-alive
    connections, TLS set up once), the request deadline, the token provider, and
    the mapping of every failure to jailsyncd's errors. Holds no per-cycle state."""

    def __init__(self, settings: ConsulSettings, token: TokenProvider | None = None) -> None:
        self._settings = settings
        host, port = settings.host_port
        self.endpoint = f"{settings.scheme}://{host}:{port}"
        verify: bool | str = str(settings.ca_file) if settings.ca_file else settings.verify
        cert = (str(settings.cert_file), str(settings.key_file)) if settings.cert_file else None
        self._http = consul_std.HTTPClient(host, port, settings.scheme, verify, cert, timeout=settings.timeout)
        self._http.session.mount("http://", _DeadlineAdapter())
        self._http.session.mount("https://", _ServerNameAdapter(settings.tls_server_name) if settings.tls_server_name else _DeadlineAdapter())
        self._http.session.hooks["response"].append(_count_bytes)
        self.timeout = settings.timeout
        self.token = token if token is not None else TokenProvider(settings)
        self.datacenter = settings.datacenter

    def close(self) -> None:
        self._http.session.close()

    def check_files(self) -> None:
        """The TLS files must be readable: checked before each use, not at load, because
        certificates written at boot by another service may appear after jailsyncd
        starts (and the client is built once)."""
        for key, var in (("ca_file", "CONSUL_CACERT"), ("cert_file", "CONSUL_CLIENT_CERT"), ("key_file", "CONSUL_CLIENT_KEY")):
            path = getattr(self._settings, key)
            if path is not None and not os.access(path, os.R_OK):
                raise ConfigError(f"consul.{key} (or {var}): {path} does not exist or is not readable")

    @contextlib.contextmanager
    def _deadline(self, timeout: float) -> Iterator[None]:
        """Bound the request made inside to ``timeout`` in all: when the deadline cuts
        it, whatever the transport then raised becomes a ``Timeout``."""
        connections: list[Any] = []
        fired = threading.Event()
        token = _WATCHDOG.arm(time.monotonic() + timeout, functools.partial(_cut, connections, fired))
        bound = _IN_FLIGHT.set(connections)
        try:
            yield
        except (requests.exceptions.RequestException, OSError, ValueError):
            if fired.is_set():
                raise requests.exceptions.Timeout() from None
            raise
        finally:
            _WATCHDOG.disarm(token)
            _IN_FLIGHT.reset(bound)

    def call(
        self,
        method: str,
        path: str,
        callback: Callable[[Any], Any],
        *,
        body: Any = None,
        params: dict[str, str] | None = None,
        write: bool = False,
        dc_scoped: bool = False,
        read_bytes: list[int] | None = None,
        timeout: float | None = None,
    ) -> Any:
        """One request. The path is quoted by python-consul2; query values go in
        ``params``. ``read_bytes[0]`` grows by the size of the answer's body;
        ``timeout`` shortens ``consul.timeout`` for this request (the backoff probe)."""
        timeout = self.timeout if timeout is None else timeout
        what = f"{method} {self.endpoint}{path}"
        params = {**(params or {}), **({"dc": self.datacenter} if self.datacenter and dc_scoped else {})}
        self.check_files()
        token = self.token.current()
        headers = {"X-Consul-Token": token} if token is not None else {}
        counting = _READ_BYTES.set(read_bytes)
        try:
            with self._deadline(timeout):
                if method == "GET":
                    result = self._http.get(callback, path, params=params or None, headers=headers)
                else:
                    data = json.dumps(body) if body is not None else ""
                    send = self._http.post if method == "POST" else self._http.put
                    result = send(callback, path, params=params or None, data=data, headers=headers)
        except (consul_base.ACLPermissionDenied, consul_base.ACLDisabled) as exc:
            # "Permission denied: Missing service:write on NAME" may concern one name
            # only; "ACL not found" (unknown or deleted token) concerns every request.
            kind = ConsulDenied if isinstance(exc, consul_base.ACLPermissionDenied) and str(exc).startswith("Permission denied") else ConsulRefused
            raise kind(f"{what}: permission denied ({_first_line(exc)}); check the token and its ACL policy") from None
        except consul_base.NotFound:
            raise ConsulError(f"{what}: 404 not found (is {self.endpoint} a Consul agent?)") from None
        except consul_base.BadRequest as exc:
            raise ConsulRejected(f"{what}: Consul rejected the request ({_first_line(exc)})") from None
        except consul_base.ConsulException as exc:
            if write and _rejects_payload(str(exc)):
                raise ConsulRejected(f"{what}: Consul rejected the request ({_first_line(exc)})") from None
            raise ConsulError(f"{what}: Consul failed ({_first_line(exc)})") from None
        except requests.exceptions.SSLError:
            raise ConsulError(f"{what}: TLS handshake failed (check consul.ca_file, cert_file and tls_server_name)") from None
        except requests.exceptions.Timeout:
            raise ConsulError(f"{what}: no answer within {timeout:g}s") from None
        except requests.exceptions.ConnectionError:
            raise ConsulError(f"{what}: cannot connect (is the Consul agent running at {self.endpoint}?)") from None
        except requests.exceptions.RequestException as exc:
            raise ConsulError(f"{what}: request failed ({exc.__class__.__name__})") from None
        except ValueError:  # JSON that is not JSON: a proxy, a portal, not Consul
            raise ConsulError(f"{what}: the answer is not Consul's JSON (is {self.endpoint} a Consul agent?)") from None
        except OSError as exc:  # e.g. a TLS file that went away after start-up
            raise ConsulError(f"{what}: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": ")) from None
        finally:
            _READ_BYTES.reset(counting)
        return result


class _Consul:
    """What both modes share: requests through the process's ``ConsulClient``, counted
    per store (``requests``, ``writes``: the reconciler and the health loop each have
    their own store over the one client, so a cycle's numbers are its own)."""

    #: Whether this mode has jailsyncd's heartbeat service (agent mode only).
    has_heartbeat = False

    def __init__(self, client: ConsulClient | ConsulSettings) -> None:
        #: Built from settings (tests, ``connect``): the store owns its client and
        #: ``close`` closes it; handed a client: the process that built it closes it.
        self._owns_client = isinstance(client, ConsulSettings)
        self._client = ConsulClient(client) if isinstance(client, ConsulSettings) else client
        self.endpoint = self._client.endpoint
        #: Catalog reads and transactions take ``?dc=``; agent endpoints are local.
        self._dc_scoped = False
        self.requests = 0
        self.writes = 0
        #: Bytes of the answers' bodies (uncompressed): the cost per cycle docs/scaling.md measures.
        self.bytes_read = 0
        #: Service names this host holds in Consul, from the last ``read``.
        self._owned_names: set[str] = set()

    def close(self) -> None:
        if self._owns_client:
            self._client.close()

    def heartbeat(self, output: str) -> None:
        """jailsyncd's heartbeat: only agent mode has a heartbeat service."""

    def leader(self) -> str:
        """The cluster leader's address ('' while there is none): a cheap liveness probe."""
        return self._call("GET", "/v1/status/leader", consul_base.CB.json()) or ""

    def preflight(self) -> tuple[list[tuple[bool | None, str]], bool]:
        """``check-config --online``: reachability, leader and the token. Returns the
        findings (``None``: a note) and whether Consul enforces ACLs for this token, in
        which case ``authorize`` tells which permissions it has."""
        findings: list[tuple[bool | None, str]] = []
        leader = self.leader()  # raises ConsulError when unreachable
        findings.append((bool(leader), f"reached {self.endpoint}; leader {leader or 'NONE: the cluster has no leader'}"))
        status, body = self._raw("GET", "/v1/acl/token/self")
        if status == 401 or (status != 200 and "disabled" in body.lower()):
            findings.append((None, "ACLs are disabled on this Consul: no token needed"))
            return findings, False
        if status != 200:
            findings.append((False, f"token refused by /v1/acl/token/self ({status} {body[:80].strip()}): check consul.token_file"))
            return findings, False
        info = json.loads(body)
        policies = ", ".join(p.get("Name", "?") for p in info.get("Policies") or []) or "none"
        findings.append((True, f"token accepted: {info.get('Description') or 'no description'} (policies: {policies})"))
        return findings, True

    #: Consul answers 400 to more authorizations than this in one request (1.8.7).
    AUTHORIZE_BATCH = 64

    def authorize(self, needs: list[tuple[str, str, str]]) -> list[bool] | None:
        """Whether the token has each ``(resource, segment, access)``, asked through
        ``/v1/internal/acl/authorize`` in batches Consul accepts; None when Consul
        cannot tell (an older Consul without that endpoint)."""
        answers: list[bool] = []
        for start in range(0, len(needs), self.AUTHORIZE_BATCH):
            batch = needs[start:start + self.AUTHORIZE_BATCH]
            request = [{"Resource": r, "Segment": seg, "Access": a} for r, seg, a in batch]
            status, body = self._raw("POST", "/v1/internal/acl/authorize", request)
            if status != 200:
                return None
            answers += [bool(answer.get("Allow")) for answer in json.loads(body)]
        return answers

    def _raw(self, method: str, path: str, body: Any = None) -> tuple[int, str]:
        """Status and body, for answers where an error status is information."""
        answer: tuple[int, str] = self._call(method, path, lambda r: (r.code, r.body or ""), body=body)
        return answer

    # -- plumbing -------------------------------------------------------------------

    def _call(
        self, method: str, path: str, callback: Callable[[Any], Any], *, body: Any = None, params: dict[str, str] | None = None, write: bool = False
    ) -> Any:
        """One request through the client, counted here."""
        self.requests += 1
        received = [0]
        try:
            result = self._client.call(method, path, callback, body=body, params=params, write=write, dc_scoped=self._dc_scoped, read_bytes=received)
        finally:
            self.bytes_read += received[0]
        if write:
            self.writes += 1
        return result


class ConsulAgent(_Consul):
    """Agent mode: this host's services on its local Consul agent."""

    has_heartbeat = True

    def __init__(self, client: ConsulClient | ConsulSettings) -> None:
        super().__init__(client)
        #: The last answers read and what they say: in a steady state they repeat byte
        #: for byte, and turning a thousand services into values costs more than the
        #: requests themselves.
        self._last: tuple[tuple[str, str, str, str], Observed] | None = None

    def read(self, owner: str, wanted_nodes: frozenset[str] = frozenset()) -> Observed:
        """Every service and check on the agent in two requests, whatever their number;
        keep ours, and note foreign IDs that look like ours (``wanted_nodes``: catalog
        mode only)."""
        services = self._call("GET", "/v1/agent/services", _body)
        checks = self._call("GET", "/v1/agent/checks", _body)
        try:
            key = (owner, services, checks, self._token_accessor())
            if self._last is not None and self._last[0] == key:
                observed = self._last[1]
            else:
                observed = _observe_agent(*key)
                self._last = (key, observed)
            self._owned_names = {s.name for s in observed.owned}
            return observed
        except (ValueError, AttributeError, KeyError, TypeError):
            raise ConsulError(f"GET {self.endpoint}/v1/agent/services: the answer is not Consul's (is {self.endpoint} a Consul agent?)") from None

    def _token_accessor(self) -> str:
        """The AccessorID of our token: a third request, made only when a token is set."""
        if self._client.token.current() is None:
            return ""
        status, body = self._raw("GET", "/v1/acl/token/self")
        if status != 200:
            return ""  # ACLs disabled (401), or a token the reads above already accepted
        try:
            return str(json.loads(body).get("AccessorID") or "")
        except ValueError:
            return ""

    def _may_write(self, names: list[str]) -> dict[str, bool] | None:
        """Which service names the token may write (``service:write``), in one request
        per 64 names (Consul's limit); None when Consul cannot tell (an agent without
        ``/v1/internal/acl/authorize``, or any error)."""
        answers: dict[str, bool] = {}
        unique = sorted(set(names))
        for start in range(0, len(unique), 64):
            chunk = unique[start : start + 64]
            request = [{"Resource": "service", "Segment": name, "Access": "write"} for name in chunk]
            try:
                status, body = self._raw("POST", "/v1/internal/acl/authorize", request)
                if status != 200:
                    return None
                answers.update((name, bool(a.get("Allow"))) for name, a in zip(chunk, json.loads(body)))
            except (ConsulRefused, ValueError, AttributeError, TypeError):
                return None
        return answers

    def register(self, service: Service, statuses: dict[str, str] | None = None) -> None:
        """Create or replace one service on the agent (the agent API is an upsert).

        ``statuses`` gives the initial status of new TTL checks (default critical);
        Consul keeps the current status of checks that already exist.
        """
        payload = service_payload(service, statuses or {})
        self._call("PUT", "/v1/agent/service/register", consul_base.CB.bool(), body=payload, write=True)

    def heartbeat(self, output: str) -> None:
        """Set jailsyncd's own heartbeat check passing (resets its TTL)."""
        self.update_check(SELF_CHECK_ID, "passing", output)

    def update_check(self, check_id: str, status: str, output: str) -> None:
        """Set a TTL check's status and output (this also resets its TTL)."""
        body = {"Status": status, "Output": output[:MAX_OUTPUT]}
        self._call("PUT", f"/v1/agent/check/update/{check_id}", consul_base.CB.bool(), body=body, write=True)

    def deregister(self, service_id: str) -> None:
        try:
            self._call("PUT", f"/v1/agent/service/deregister/{service_id}", consul_base.CB.bool(), write=True)
        except ConsulRejected as exc:
            if "Unknown service" not in str(exc):
                raise
            # Gone since the read (removed by hand, or by a restart of a dev agent):
            # what the deregistration wanted is true.

    def apply(self, actions: list[Action], should_stop: Callable[[], bool]) -> Iterator[tuple[Action, JailsyncdError | None]]:
        """One request per action. A rejected payload fails only that action. A 403
        "Permission denied" fails only that action too, unless the token may write
        none of the service names this host has or wants (then it is the token, not
        the name: ``ConsulDenied`` is raised and the cycle stops). Which names the
        token may write is asked once, at the first 403; actions on the other denied
        names then fail without a request."""
        denied: set[str] | None = None
        for index, action in enumerate(actions):
            if should_stop():
                return
            name = action.service.name
            if denied is not None and name in denied:
                yield action, ConsulRejected(f"jail {action.service.jail}: the token may not write service {name!r} (service:write); check its ACL policy")
                continue
            try:
                if action.kind == "deregister":
                    self.deregister(action.service.service_id)
                else:
                    self.register(action.service, dict(action.statuses))
            except ConsulRejected as exc:
                yield action, ConsulRejected(f"jail {action.service.jail}: {exc}")
                continue
            except ConsulDenied as exc:
                if denied is None:
                    wanted = [a.service.name for a in actions] + sorted(self._owned_names)
                    allowed = self._may_write(wanted)
                    if allowed is not None and not any(allowed.values()):
                        raise  # the token may write nothing this host needs
                    denied = {n for n, ok in (allowed or {}).items() if not ok}
                yield action, ConsulRejected(f"jail {action.service.jail}: {exc}")
                continue
            yield action, None

    def write_checks(self, writes: list[tuple[Target, str, str]]) -> Iterator[tuple[tuple[Target, str, str], JailsyncdError | None]]:
        """Each check write with None (written) or the error that refused that check
        alone (a check that went away, a name the token may not write). Errors that
        would fail every write (unreachable, token refused) are raised."""
        for write in writes:
            target, status, output = write
            try:
                self.update_check(target.check_id, status, output)
            except (ConsulRejected, ConsulDenied) as exc:
                yield write, exc
                continue
            yield write, None

class ConsulCatalog(_Consul):
    """Catalog mode: every jail is an external node of its own (node meta
    ``external-node=true``), registered through ``/v1/txn`` in batches of at most 64
    operations. Nodes are created with ``cas`` at index 0, so a node that appeared
    since the read (another host, an agent) is never overwritten; a node's
    operations never straddle two transactions, so nothing is left half-written."""

    def __init__(self, client: ConsulClient | ConsulSettings) -> None:
        super().__init__(client)
        self._dc_scoped = True
        self._status: dict[str, tuple[str, str]] = {}
        #: False once Consul answered 404 to /v1/catalog/node-services (before 1.7).
        self._node_services_endpoint = True

    def read(self, owner: str, wanted_nodes: frozenset[str] = frozenset()) -> Observed:
        """Our nodes with their services and checks, and which of ``wanted_nodes`` (the
        node names this cycle wants) exist without being ours. Only public endpoints,
        answered by any server (``?stale``), and what is read depends on this host's
        jails only, never on the size of the cluster (docs/scaling.md):

        1. ``GET /v1/catalog/nodes?node-meta=jailsyncd-owner:<owner>``: our nodes;
        2. ``GET /v1/health/state/any?node-meta=jailsyncd-owner:<owner>``: their checks;
        3. ``PUT /v1/txn`` with one read-only ``Service get`` per node (64 per request),
           the ID taken from the node meta ``jailsyncd-service-id``; a node without it
           (written by an older jailsyncd) or a get that fails (a service changed by
           hand) is read alone (``/v1/catalog/node-services/<node>``, Consul >= 1.7,
           else ``/v1/catalog/node/<node>``);
        4. only when a wanted node is not ours: ``GET /v1/catalog/nodes?filter=Node ==
           ...`` for those names, to report a clash as a conflict before the ``cas``
           create (which refuses it anyway).

        A stale answer can lag the leader by a few milliseconds: the next cycle then
        repeats a write that is idempotent (``set``, ``delete``) or refused (``cas``),
        never a wrong one.
        """
        params = {"node-meta": f"{META_OWNER}:{owner}", "stale": ""}
        nodes = self._call("GET", "/v1/catalog/nodes", _strict_json, params=params) or []
        # The node-meta filter is Consul's; ownership is checked here as well.
        ours = {n["Node"]: n for n in nodes if (n.get("Meta") or {}).get(META_OWNER) == owner}
        checks = self._call("GET", "/v1/health/state/any", _strict_json, params=params) or []
        checks_by_node: dict[str, list[dict[str, Any]]] = {}
        for check in checks:
            if check.get("Node") in ours:
                checks_by_node.setdefault(check["Node"], []).append(check)
        owned: list[Service] = []
        status: list[tuple[str, str, str]] = []
        for name, entries in self._node_services(ours).items():
            node_checks = checks_by_node.get(name, [])
            status += [(c["CheckID"], c.get("Status", ""), c.get("Output", "")) for c in node_checks]
            owned += [service_from_catalog(ours[name], e, node_checks) for e in entries if e.get("ID", "").startswith(SERVICE_ID_PREFIX)]
        foreign = self._taken(sorted(set(wanted_nodes) - set(ours)))
        self._status = {check_id: (st, out) for check_id, st, out in status}
        return Observed(owned=tuple(sorted(owned, key=lambda s: s.service_id)), foreign_nodes=foreign, check_status=tuple(sorted(status)))

    #: Names per clash-check request (keeps the URL short).
    TAKEN_BATCH = 32

    def _taken(self, names: list[str]) -> frozenset[str]:
        """Which of ``names`` are nodes in the catalog (none of them is ours)."""
        taken: set[str] = set()
        for start in range(0, len(names), self.TAKEN_BATCH):
            chunk = names[start : start + self.TAKEN_BATCH]
            flt = " or ".join(f"Node == {_quote(n)}" for n in chunk)
            found = self._call("GET", "/v1/catalog/nodes", _strict_json, params={"filter": flt, "stale": ""}) or []
            taken.update(n["Node"] for n in found if n.get("Node") in chunk)
        return frozenset(taken)

    def _node_services(self, ours: dict[str, dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
        """The service entries of each of our nodes: batched ``Service get`` reads where
        the node names its service ID, single-node reads otherwise."""
        result: dict[str, list[dict[str, Any]]] = {}
        alone: list[str] = []
        known = [(n, (ours[n].get("Meta") or {}).get(META_SERVICE_ID, "")) for n in sorted(ours)]
        alone += [n for n, sid in known if not sid]
        batch = [(n, sid) for n, sid in known if sid]
        for start in range(0, len(batch), MAX_TXN_OPS):
            chunk = batch[start : start + MAX_TXN_OPS]
            ops = [{"Service": {"Verb": "get", "Node": n, "Service": {"ID": sid}}} for n, sid in chunk]
            answer = self._call("PUT", "/v1/txn", _txn_result, body=ops, params={"stale": ""}) or {}
            results = answer.get("Results") or []
            if answer.get("Errors") or len(results) != len(chunk):
                alone += [n for n, _ in chunk]  # a service changed by hand: read those nodes whole
                continue
            for (name, _), item in zip(chunk, results):
                result[name] = [item.get("Service") or {}]
        for name in alone:
            result[name] = self._one_node(name)
        return result

    def _one_node(self, name: str) -> list[dict[str, Any]]:
        """Every service of one node: ``/v1/catalog/node-services`` (Consul 1.7 and
        later), else ``/v1/catalog/node`` (whose services are a map)."""
        if self._node_services_endpoint:
            try:
                answer = self._call("GET", f"/v1/catalog/node-services/{name}", _strict_json, params={"stale": ""}) or {}
                return list(answer.get("Services") or [])
            except ConsulError as exc:
                if "404 not found" not in str(exc):
                    raise
                self._node_services_endpoint = False  # an older Consul: not asked again
        answer = self._call("GET", f"/v1/catalog/node/{name}", _strict_json, params={"stale": ""}) or {}
        return list((answer.get("Services") or {}).values())

    def apply(self, actions: list[Action], should_stop: Callable[[], bool]) -> Iterator[tuple[Action, JailsyncdError | None]]:
        for batch in _batches([(a, self._ops(a)) for a in actions], MAX_TXN_OPS):
            if should_stop():
                return
            yield from self._txn(batch)

    def write_checks(self, writes: list[tuple[Target, str, str]]) -> Iterator[tuple[tuple[Target, str, str], JailsyncdError | None]]:
        ops = [(w, [_check_op(w[0].node, w[0].spec, w[0].service_id, w[1], w[2])]) for w in writes if w[0].spec is not None]
        for batch in _batches(ops, MAX_TXN_OPS):
            yield from self._txn(batch)

    def _ops(self, action: Action) -> list[dict[str, Any]]:
        new, old = action.service, action.old
        if action.kind == "deregister":
            return [{"Node": {"Verb": "delete", "Node": {"Node": new.node}}}]
        statuses = dict(action.statuses)
        ops: list[dict[str, Any]] = []
        moved = old is not None and old.node != new.node
        if moved:
            assert old is not None
            ops.append({"Node": {"Verb": "delete", "Node": {"Node": old.node}}})
        if old is None or moved:
            # cas at index 0: create only if no such node exists by now.
            ops.append({"Node": {"Verb": "cas", "Node": {**_node_body(new), "ModifyIndex": 0}}})
        elif (old.address, old.node_meta) != (new.address, new.node_meta):
            ops.append({"Node": {"Verb": "set", "Node": _node_body(new)}})
        if old is None or moved or _service_fields(old) != _service_fields(new):
            ops.append({"Service": {"Verb": "set", "Node": new.node, "Service": _catalog_service(new)}})
        have = old.checks if old is not None and not moved else frozenset()
        for spec in new.check_specs:
            if spec.observable in have:
                continue
            # A changed definition keeps the status Consul holds; a new check starts
            # with the status probed just before registration (or critical).
            if spec.check_id in self._status:
                current, output = self._status[spec.check_id]
            elif spec.check_id in statuses:
                current, output = statuses[spec.check_id], f"first probe before registration: {statuses[spec.check_id]}"
            else:
                current, output = "critical", NOT_PROBED_OUTPUT
            ops.append(_check_op(new.node, spec, new.service_id, current, output))
        if old is not None and not moved:
            wanted = {c.check_id for c in new.check_specs}
            ops += [
                {"Check": {"Verb": "delete", "Check": {"Node": new.node, "CheckID": check_id}}}
                for check_id, _, _ in sorted(old.checks)
                if check_id not in wanted
            ]
        return ops

    def _txn(self, batch: list[tuple[Any, list[dict[str, Any]]]]) -> Iterator[tuple[Any, JailsyncdError | None]]:
        """Apply one batch atomically. When Consul rejects some operations (409), the
        whole transaction was rolled back: report the actions those operations belong
        to and try the rest again, until a transaction applies or nothing is left."""
        while batch:
            ops = [op for _, item_ops in batch for op in item_ops]
            try:
                result = self._call("PUT", "/v1/txn", _txn_result, body=ops, write=True) or {}
            except (ConsulRejected, ConsulDenied) as exc:
                # The whole request was refused (a payload Consul will not parse, a
                # name the token may not write) without saying which operation: try
                # each item alone, so that only the culprit fails.
                if len(batch) == 1:
                    yield batch[0][0], ConsulRejected(f"{_subject(batch[0][0])}: {exc}")
                    return
                for one in batch:
                    yield from self._txn([one])
                return
            errors = result.get("Errors") or []
            if not errors:
                for item, _ in batch:
                    yield item, None
                return
            failed: dict[int, str] = {}
            for error in errors:
                index = error.get("OpIndex", 0)
                position = 0
                for i, (_, item_ops) in enumerate(batch):
                    if position <= index < position + len(item_ops):
                        failed.setdefault(i, error.get("What", "rejected"))
                        break
                    position += len(item_ops)
            for i, what in sorted(failed.items()):
                item = batch[i][0]
                yield item, ConsulRejected(f"PUT {self.endpoint}/v1/txn: {_subject(item)}: {what}")
            batch = [b for i, b in enumerate(batch) if i not in failed]



#: Consul applies at most 64 operations in one transaction.
MAX_TXN_OPS = 64
NOT_PROBED_OUTPUT = "not probed yet"


#: How Consul begins the 500 answers it gives for a definition it refuses to apply
#: (Consul 1.8.7, agent/agent.go and agent/structs: e.g. 'Service tagged address
#: "lan_ipv6" must be a valid ipv6 address', 'Unknown check "..."', 'CheckID "..." does
#: not have associated TTL' for a check removed since the read, 'Check type is not
#: valid'). Any other 500 is Consul failing, which ends the cycle.
_PAYLOAD_500 = ("Service ", "Check ", "CheckID ", "Invalid ", "Unknown service", "Unknown check", "Unknown node")


def _rejects_payload(message: str) -> bool:
    """Whether an error answer to a write refuses that write's payload, not Consul's
    state: a 4xx other than 408/429 (python-consul2's ``ClientError``), or a 500
    whose text names the definition (``_PAYLOAD_500``)."""
    code, _, body = message.partition(" ")
    if not code.isdigit():
        return False
    status = int(code)
    if 400 <= status < 500:
        return status not in (408, 429)
    return status == 500 and body.strip().startswith(_PAYLOAD_500)


def _body(response: Any) -> str:
    """The answer's text, checked like python-consul2 checks (a 404 is an error here)."""
    consul_base.CB._status(response, allow_404=False)
    return str(response.body)


def _observe_agent(owner: str, services_json: str, checks_json: str, accessor: str) -> Observed:
    """What the agent's answers say this host owns (``ConsulAgent.read`` keeps the
    last one)."""
    raw = json.loads(services_json)
    raw_checks = json.loads(checks_json)
    if not isinstance(raw, dict) or not isinstance(raw_checks, dict):
        raise ValueError("not a JSON object")
    checks_by_service: dict[str, list[dict[str, Any]]] = {}
    for check in raw_checks.values():
        checks_by_service.setdefault(check.get("ServiceID", ""), []).append(check)
    owned: list[Service] = []
    foreign: set[str] = set()
    status: list[tuple[str, str, str]] = []
    for sid, entry in raw.items():
        if not (sid.startswith(SERVICE_ID_PREFIX) or sid == SELF_SERVICE_ID):
            continue
        if (entry.get("Meta") or {}).get(META_OWNER) != owner:
            foreign.add(sid)
            continue
        checks = checks_by_service.get(sid, [])
        owned.append(service_from_consul(entry, checks))
        status += [(c["CheckID"], c.get("Status", ""), c.get("Output", "")) for c in checks]
    return Observed(
        owned=tuple(sorted(owned, key=lambda s: s.service_id)),
        foreign_ids=frozenset(foreign),
        check_status=tuple(sorted(status)),
        token_accessor=accessor,
    )


def _strict_json(response: Any) -> Any:
    """Like python-consul2's JSON callback, but a 404 is an error here, not "nothing"."""
    consul_base.CB._status(response, allow_404=False)
    return json.loads(response.body)


def _txn_result(response: Any) -> Any:
    """A transaction's JSON; a 409 (operations rolled back) is an answer, not an error."""
    if response.code != 409:
        consul_base.CB._status(response)
    return json.loads(response.body) if response.body else None


def _quote(text: str) -> str:
    """A string literal of Consul's filter language."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _subject(item: Any) -> str:
    if isinstance(item, Action):
        return f"node {item.service.node} of jail {item.service.jail}"
    return f"check {item[0].check_id}"


def _batches(items: list[tuple[Any, list[dict[str, Any]]]], limit: int) -> list[list[tuple[Any, list[dict[str, Any]]]]]:
    """Pack items into batches of at most ``limit`` operations, never splitting one
    item's operations (an item with more than ``limit`` gets a batch of its own)."""
    batches: list[list[tuple[Any, list[dict[str, Any]]]]] = []
    current: list[tuple[Any, list[dict[str, Any]]]] = []
    size = 0
    for item, ops in items:
        if not ops:
            continue
        if current and size + len(ops) > limit:
            batches.append(current)
            current, size = [], 0
        current.append((item, ops))
        size += len(ops)
    if current:
        batches.append(current)
    return batches


def _node_body(service: Service) -> dict[str, Any]:
    return {"Node": service.node, "Address": service.address, "Meta": dict(service.node_meta)}


def _service_fields(service: Service) -> tuple[object, ...]:
    return (service.name, service.address, service.port, service.tags, service.meta, service.tagged_addresses)


def _catalog_service(service: Service) -> dict[str, Any]:
    body = service_payload(service)
    body.pop("Checks", None)
    body["Service"] = body.pop("Name")
    return body


def _check_op(node: str, spec: CheckSpec, service_id: str, status: str, output: str) -> dict[str, Any]:
    check = {"Node": node, "CheckID": spec.check_id, "Name": spec.name, "Notes": spec.notes, "Status": status, "Output": output[:MAX_OUTPUT]}
    if spec.kind == "service":
        check["ServiceID"] = service_id
    return {"Check": {"Verb": "set", "Check": check}}


def service_from_catalog(dump: dict[str, Any], entry: dict[str, Any], checks: list[dict[str, Any]]) -> Service:
    """A ``Service`` from one of our nodes (as ``/v1/catalog/nodes`` lists it), one of
    its services and the node's checks."""
    sid = entry["ID"]
    mine = [c for c in checks if c.get("CheckID", "").startswith(sid + ":")]
    kinds = frozenset((c["CheckID"], "service" if c.get("ServiceID") else "node", c.get("Notes", "")) for c in mine)
    service = service_from_consul(entry)
    return Service(
        service_id=service.service_id,
        name=service.name,
        address=service.address,
        port=service.port,
        tags=service.tags,
        meta=service.meta,
        tagged_addresses=service.tagged_addresses,
        checks=kinds,
        node=dump["Node"],
        node_meta=tuple(sorted((dump.get("Meta") or {}).items())),
    )


def consul_answers(client: ConsulClient, mode: str, timeout: float = 1.0) -> bool:
    """Whether Consul answers again (``daemon``'s backoff probe, through ``app``): one
    ``GET /v1/status/leader`` over the process's client, bounded by ``timeout``. In
    catalog mode the answer must name a leader (reads and writes need one); agent mode
    needs only the local agent. False on any error."""
    try:
        leader = client.call("GET", "/v1/status/leader", consul_base.CB.json(), timeout=min(client.timeout, timeout))
    except JailsyncdError:
        return False
    return mode != "catalog" or bool(leader)


def connect(settings: ConsulSettings, client: ConsulClient | None = None) -> ConsulAgent | ConsulCatalog:
    """The store for the configured mode, over ``client`` (the process's one client;
    without one, the store builds its own and closes it in ``close``)."""
    over: ConsulClient | ConsulSettings = client if client is not None else settings
    return ConsulCatalog(over) if settings.mode == "catalog" else ConsulAgent(over)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else exc.__class__.__name__)[:200]


def check_payload(check: CheckSpec, status: str) -> dict[str, Any]:
    if check.kind == "alias":
        return {"CheckID": check.check_id, "Name": check.name, "Notes": check.notes, "AliasService": check.alias_of}
    return {"CheckID": check.check_id, "Name": check.name, "Notes": check.notes, "TTL": f"{check.ttl:g}s", "Status": status}


def service_payload(service: Service, statuses: dict[str, str] | None = None) -> dict[str, Any]:
    """The agent API body for ``service`` (with its checks, if any)."""
    statuses = statuses or {}
    checks = [check_payload(c, statuses.get(c.check_id, "critical")) for c in service.check_specs]
    return {
        "ID": service.service_id,
        "Name": service.name,
        "Address": service.address,
        "Port": service.port,
        "Tags": sorted(service.tags),
        "Meta": dict(service.meta),
        "TaggedAddresses": {name: {"Address": addr, "Port": service.port} for name, addr in service.tagged_addresses},
        "EnableTagOverride": False,
        **({"Checks": checks} if checks else {}),
    }


def service_from_consul(entry: dict[str, Any], checks: Sequence[dict[str, Any]] = ()) -> Service:
    """A ``Service`` from one value of ``/v1/agent/services`` and its entries of
    ``/v1/agent/checks``; absent fields become empty."""
    tagged = entry.get("TaggedAddresses") or {}
    return Service(
        service_id=entry["ID"],
        name=entry.get("Service", ""),
        address=entry.get("Address", ""),
        port=int(entry.get("Port") or 0),
        tags=frozenset(entry.get("Tags") or ()),
        meta=tuple(sorted((entry.get("Meta") or {}).items())),
        tagged_addresses=tuple(sorted((k, v.get("Address", "")) for k, v in tagged.items())),
        checks=frozenset((c["CheckID"], c.get("Type", ""), c.get("Notes", "")) for c in checks),
    )
