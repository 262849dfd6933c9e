"""Consul's HTTP transport for jailsyncd: one ``ConsulClient`` per process, the token
provider, the request deadline, and the mapping of every failure to jailsyncd's errors;
``StoreBase``, what the mode stores (``agent``, ``catalog``) share.

Built by ``app`` (one client per process) and used by the mode modules of this
package. The only module that imports python-consul2 (and the ``requests`` and
``urllib3`` it runs on): the mode modules send requests through ``StoreBase._call``
with the answer callbacks defined here.

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
import errno
import functools
import heapq
import itertools
import json
import os
import re
import socket
import threading
import time
from dataclasses import replace
from typing import Any, Callable, Iterator

import consul.base as consul_base
import consul.std as consul_std
import requests
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from jailsyncd.errors import ConfigError, ConsulDenied, ConsulError, ConsulRefused, ConsulRejected
from jailsyncd.model import Record
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
            if self._heap[0][1] == token:
                # The thread sleeps until the earliest deadline it knows of: it needs
                # waking only for an earlier one. A request's deadline is usually later
                # than those already armed (all are now + consul.timeout), so a burst
                # of requests does not wake the thread once each (docs/performance.md).
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
        # Straight to consul.address, whatever the environment says: requests would
        # otherwise send every request, the X-Consul-Token header included, to an
        # http_proxy/https_proxy/all_proxy of the caller's shell or rc.conf (loopback
        # too, which Consul's own client never proxies), and add ~/.netrc credentials.
        self._http.session.trust_env = False
        self._http.session.proxies = {}
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
        ``timeout`` replaces ``consul.timeout`` for this request: shorter for the
        backoff probe, longer for a blocking query's GET (the watch)."""
        timeout = self.timeout if timeout is None else timeout
        what = f"{method} {self.endpoint}{path}"
        params = {**(params or {}), **({"dc": self.datacenter} if self.datacenter and dc_scoped else {})}
        self.check_files()
        token = self.token.current()
        headers = {"X-Consul-Token": token} if token is not None else {}
        if method != "GET":
            # The answers to PUT and POST (an acknowledgement, a transaction's echo of
            # what it wrote) come from the local agent and are read once: compressing
            # them costs Consul CPU (the limit of a cold start) and saves nothing.
            headers["Accept-Encoding"] = "identity"
        counting = _READ_BYTES.set(read_bytes)
        try:
            with self._deadline(timeout):
                if method == "GET" and timeout > self.timeout:
                    # A blocking query (``watch``): the socket may stay silent for the
                    # whole wait, so requests' read timeout must cover it too.
                    http = self._http
                    answer = http.session.get(http.uri(path, params or None), headers=headers, verify=http.verify, cert=http.cert, timeout=(self.timeout, timeout))
                    result = callback(http.response(answer))
                elif method == "GET":
                    result = self._http.get(callback, path, params=params or None, headers=headers)
                else:
                    data = json.dumps(body) if body is not None else ""
                    send = self._http.post if method == "POST" else self._http.put
                    result = send(callback, path, params=params or None, data=data, headers=headers)
        except (consul_base.ACLPermissionDenied, consul_base.ACLDisabled) as exc:
            # "Permission denied: Missing service:write on NAME" may concern one name
            # only; "ACL not found" (unknown or deleted token) concerns every request.
            kind = ConsulDenied if isinstance(exc, consul_base.ACLPermissionDenied) and str(exc).startswith("Permission denied") else ConsulRefused
            raise kind(f"{what}: permission denied ({first_line(exc)}); check the token and its ACL policy") from None
        except consul_base.NotFound:
            raise ConsulError(f"{what}: 404 not found (is {self.endpoint} a Consul agent?)") from None
        except consul_base.BadRequest as exc:
            raise ConsulRejected(f"{what}: Consul rejected the request ({first_line(exc)})") from None
        except consul_base.ConsulException as exc:
            if write and rejects_payload(str(exc)):
                raise ConsulRejected(f"{what}: Consul rejected the request ({first_line(exc)})") from None
            raise ConsulError(f"{what}: Consul failed ({first_line(exc)})") from None
        except requests.exceptions.SSLError:
            raise ConsulError(f"{what}: TLS handshake failed (check consul.ca_file, cert_file and tls_server_name)") from None
        except requests.exceptions.Timeout:
            raise ConsulError(f"{what}: no answer within {timeout:g}s") from None
        except requests.exceptions.ConnectionError as exc:
            raise ConsulError(f"{what}: {connect_failure(exc, self.endpoint, self._settings.host_port[0])}") from None
        except requests.exceptions.RequestException as exc:
            raise ConsulError(f"{what}: request failed ({exc.__class__.__name__})") from None
        except ValueError:  # JSON that is not JSON: a proxy, a portal, not Consul
            raise ConsulError(f"{what}: the answer is not Consul's JSON (is {self.endpoint} a Consul agent?)") from None
        except OSError as exc:  # e.g. a TLS file that went away after start-up
            raise ConsulError(f"{what}: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": ")) from None
        finally:
            _READ_BYTES.reset(counting)
        return result


class StoreBase:
    """What both modes share: requests through the process's ``ConsulClient``, counted
    per store (``requests``, ``writes``: the reconciler and the health loop each have
    their own store over the one client, so a cycle's numbers are its own)."""

    #: Whether this mode has jailsyncd's heartbeat service (agent mode only).
    has_heartbeat = False
    #: Whether the checks this mode writes expire by themselves (agent mode: TTL
    #: checks). Catalog checks are inert: they keep their last status until written.
    checks_expire = False
    #: Whether ``apply`` writes a changed check's definition with the status of this
    #: store's last ``read`` (catalog mode; the agent keeps a check's status itself).
    applies_read_statuses = False
    #: Whether Consul answers this mode only with a cluster leader (catalog reads and
    #: writes go to the servers; agent mode needs only the local agent).
    needs_leader = False

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




# -- values ---------------------------------------------------------------------------


class Sharing:
    """One object for each equal field value among the records of one build or read:
    the same ``("port", 0)``, tag set, ``("external-source", "cbsd")`` meta pair or
    owner string, instead of one copy per record. Every jail's record repeats most of
    them, and a cycle holds thousands of desired and observed records: at 5,000
    jails this takes about a third off their memory (docs/performance.md). Values are
    immutable, so sharing them changes nothing else. Each record is shared as it is
    made (its own copies go at once), and the pool keeps at most ``LIMIT`` values:
    the ones that repeat are met in the first records, the rest need no entry.

    Cheap because it knows the shape of ``Record.fields``: ``(name, value)`` pairs
    whose value is a string, a number, a frozenset (kept whole) or a tuple of
    ``(key, value)`` pairs (meta). A whole pair is looked up before it is taken
    apart, so a pair every record repeats (``("port", 0)``, ``("external-source",
    "cbsd")``) costs one dict lookup; only a pair not met before has its parts
    shared one by one (its name, a meta key, a value another field repeats)."""

    LIMIT = 4096

    def __init__(self) -> None:
        self._pool: dict[Any, Any] = {}

    def __call__(self, record: Record) -> Record:
        return replace(record, fields=self.fields(record.fields))

    def fields(self, fields: tuple[tuple[str, object], ...]) -> tuple[tuple[str, object], ...]:
        """``fields`` with each part equal to one met before replaced by that one.
        Written flat (no call per part): it runs for every record of a cycle."""
        pool = self._pool
        get = pool.get
        room = self.LIMIT - len(pool)
        out = []
        for pair in fields:
            try:
                found = get(pair)
            except TypeError:  # not hashable: kept as it is
                out.append(pair)
                continue
            if found is not None:
                out.append(found)
                continue
            name, value = pair
            known = get(name)
            if known is not None:
                name = known
            elif room > 0:
                pool[name], room = name, room - 1
            if type(value) is tuple:  # meta as sorted (key, value) pairs
                items = []
                for item in value:
                    found = get(item)
                    if found is None:
                        if type(item) is tuple and len(item) == 2 and type(item[0]) is str and type(item[1]) is str:
                            key, text = item
                            known_key, known_text = get(key), get(text)
                            if known_key is None and room > 0:
                                pool[key], room = key, room - 1
                            if known_text is None and room > 0:
                                pool[text], room = text, room - 1
                            found = (key if known_key is None else known_key, text if known_text is None else known_text)
                        else:
                            found = item
                        if room > 0:
                            pool[found], room = found, room - 1
                    items.append(found)
                value = tuple(items)
            elif type(value) is str or type(value) is frozenset:
                # Not a bare number: it would be found as an equal one of another
                # type (1 == True == 1.0). The pair holding it is kept whole below.
                known = get(value)
                if known is not None:
                    value = known
                elif room > 0:
                    pool[value], room = value, room - 1
            shared = (name, value)
            if room > 0:
                pool[shared], room = shared, room - 1
            out.append(shared)
        return tuple(out)


# -- answers -------------------------------------------------------------------------


#: How Consul begins the 500 answers it gives for a definition it refuses to apply
#: (Consul 1.8.7, agent/agent.go and agent/structs: e.g. 'Service tagged address
#: "lan_ipv6" must be a valid ipv6 address', 'Unknown check "..."', 'CheckID "..." does
#: not have associated TTL' for a check removed since the read, 'Check type is not
#: valid'). Any other 500 is Consul failing, which ends the cycle.
_PAYLOAD_500 = ("Service ", "Check ", "CheckID ", "Invalid ", "Unknown service", "Unknown check", "Unknown node")


def service_body(record: Record) -> dict[str, Any]:
    """The fields of a service entry that the agent API and the catalog API spell
    alike; each mode adds its own (the name's key, checks). Tagged addresses come as
    the record holds them, ``(name, address)`` pairs, with the service's port."""
    # The fields looked up once (the ``Record`` properties each walk them): this runs
    # for every service written.
    fields = dict(record.fields)
    port, tags, meta, tagged = fields.get("port"), fields.get("tags"), fields.get("meta"), fields.get("tagged_addresses")
    port = port if isinstance(port, int) else 0
    return {
        "ID": record.service_id,
        "Address": str(fields.get("address") or ""),
        "Port": port,
        "Tags": sorted(tags) if isinstance(tags, frozenset) else [],
        "Meta": dict(meta) if isinstance(meta, tuple) else {},
        "TaggedAddresses": {name: {"Address": addr, "Port": port} for name, addr in (tagged if isinstance(tagged, tuple) else ())},
        "EnableTagOverride": False,
    }


def rejects_payload(message: str) -> bool:
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


def connect_failure(exc: BaseException, endpoint: str, host: str) -> str:
    """Why no connection to Consul could be made, from the OS error at the root of
    ``exc`` (requests wraps urllib3's error, which wraps the socket's): a name that
    does not resolve is named as such (it is ``consul.address`` to fix, not the
    agent), a refused or unreachable address says so; anything else keeps the old
    words. Pure: walks the chain (``args``, ``reason``, causes), each link once."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        link = todo.pop(0)
        if id(link) in seen:
            continue
        seen.add(id(link))
        if isinstance(link, socket.gaierror):
            return f"cannot resolve {host} ({link.strerror or link}): check consul.address (or CONSUL_HTTP_ADDR)"
        if isinstance(link, ConnectionRefusedError):
            return f"cannot connect: connection refused (is the Consul agent running at {endpoint}?)"
        if isinstance(link, OSError) and link.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN, errno.ENETDOWN):
            return f"cannot connect: {link.strerror} (is {endpoint} reachable from this host?)"
        nested = (getattr(link, "reason", None), link.__cause__, link.__context__, *link.args)
        todo += [n for n in nested if isinstance(n, BaseException)]
    return f"cannot connect (is the Consul agent running at {endpoint}?)"


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else exc.__class__.__name__)[:200]


#: The answer callback of a write whose answer is ``true``.
OK = consul_base.CB.bool()
#: The answer callback of a JSON read where a 404 means "none".
JSON = consul_base.CB.json()


def text_body(response: Any) -> str:
    """The answer's text, checked like python-consul2 checks (a 404 is an error here)."""
    consul_base.CB._status(response, allow_404=False)
    return str(response.body)


def strict_json(response: Any) -> Any:
    """Like python-consul2's JSON callback, but a 404 is an error here, not "nothing"."""
    consul_base.CB._status(response, allow_404=False)
    return json.loads(response.body)


def indexed_body(response: Any) -> tuple[int, str]:
    """A blocking query's answer: its ``X-Consul-Index`` (0 when absent or not a
    number) and its text, checked like ``text_body`` (a 404 is an error)."""
    consul_base.CB._status(response, allow_404=False)
    raw = (response.headers or {}).get("X-Consul-Index", "")
    try:
        index = int(raw)
    except (TypeError, ValueError):
        index = 0
    return index, str(response.body)


#: How the answer of a transaction that applied ends (Consul writes ``"Errors": null``
#: last, whatever the indentation).
_NO_TXN_ERRORS = re.compile(r'"Errors"\s*:\s*null\s*}\s*$')


def txn_errors(response: Any) -> list[Any]:
    """The ``Errors`` of a transaction's answer (empty: it applied). An answer that
    ends with ``"Errors": null`` (every 200) is not decoded: it echoes every node and
    service written, which nothing reads; a 409 (operations rolled back) is decoded
    for its errors. Raises ``ValueError`` (not Consul's JSON) for anything else that
    is not an object."""
    if response.code != 409:
        consul_base.CB._status(response)
    body = response.body or ""
    if response.code == 200 and _NO_TXN_ERRORS.search(body, max(0, len(body) - 64)):
        return []
    answer = json.loads(body) if body else {}
    if not isinstance(answer, dict):
        raise ValueError("a transaction's answer is a JSON object")
    return list(answer.get("Errors") or [])


def txn_result(response: Any) -> Any:
    """A transaction's JSON; a 409 (operations rolled back) is an answer, not an error."""
    if response.code != 409:
        consul_base.CB._status(response)
    return json.loads(response.body) if response.body else None
