"""Read and write this host's services on a Consul agent (agent mode).

Called by ``reconcile`` (``read``, ``register``, ``deregister``) and by ``cli``. The
only module that imports python-consul2 (and the ``requests`` it runs on).

python-consul2 is used as the transport and response checker: its ``HTTPClient``
sends the requests, its ``CB`` callbacks map status codes to exceptions. Its
high-level ``Consul`` object is not used because it reads ``CONSUL_HTTP_ADDR`` and
``CONSUL_HTTP_TOKEN`` itself and lets them override explicit arguments, and its
``register`` cannot send ``TaggedAddresses``. The token travels only in the
``X-Consul-Token`` header, never in a URL; no message built here contains it.
"""

from __future__ import annotations

import json
from typing import Any, Callable

import consul.base as consul_base
import consul.std as consul_std
import requests

from jailsyncd.errors import ConsulError, ConsulRefused, ConsulRejected
from jailsyncd.model import META_OWNER, SELF_SERVICE_ID, SERVICE_ID_PREFIX, CheckSpec, Observed, Service
from jailsyncd.settings import ConsulSettings


#: Check output is cut to this many characters (Consul's default limit is 4 KiB).
MAX_OUTPUT = 1024


class _ServerNameAdapter(requests.adapters.HTTPAdapter):
    """Checks the server certificate against ``tls_server_name`` instead of the host
    in the address (``CONSUL_TLS_SERVER_NAME``), e.g. ``server.dc1.consul``."""

    def __init__(self, server_name: str) -> None:
        self._server_name = server_name
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["server_hostname"] = self._server_name
        kwargs["assert_hostname"] = self._server_name
        super().init_poolmanager(*args, **kwargs)


class ConsulAgent:
    """This host's view of a Consul agent. Counts the HTTP requests and writes it makes."""

    def __init__(self, settings: ConsulSettings) -> None:
        host, port = settings.host_port
        self.endpoint = f"{settings.scheme}://{host}:{port}"
        verify: bool | str = str(settings.ca_file) if settings.ca_file else settings.verify
        cert = (str(settings.cert_file), str(settings.key_file)) if settings.cert_file else None
        self._http = consul_std.HTTPClient(host, port, settings.scheme, verify, cert, timeout=settings.timeout)
        if settings.tls_server_name:
            self._http.session.mount("https://", _ServerNameAdapter(settings.tls_server_name))
        self._timeout = settings.timeout
        self._headers: dict[str, str] = {}
        try:
            token = settings.read_token()
        except ValueError as exc:
            raise ConsulRefused(f"consul.token_file: {exc}") from None
        if token is not None:
            self._headers["X-Consul-Token"] = token.reveal()
        self.requests = 0
        self.writes = 0

    def close(self) -> None:
        self._http.session.close()

    # -- the interface reconcile uses ------------------------------------------------

    def read(self, owner: str) -> Observed:
        """Every service and check on the agent in two requests, whatever their number;
        keep ours, and note foreign IDs that look like ours."""
        raw = self._call("GET", "/v1/agent/services", consul_base.CB.json()) or {}
        raw_checks = self._call("GET", "/v1/agent/checks", consul_base.CB.json()) or {}
        checks_by_service: dict[str, list[dict]] = {}
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
        return Observed(tuple(sorted(owned, key=lambda s: s.service_id)), frozenset(foreign), tuple(sorted(status)))

    def register(self, service: Service, statuses: dict[str, str] | None = None) -> None:
        """Create or replace one service on the agent (the agent API is an upsert).

        ``statuses`` gives the initial status of new TTL checks (default critical);
        Consul keeps the current status of checks that already exist.
        """
        payload = service_payload(service, statuses or {})
        self._call("PUT", "/v1/agent/service/register", consul_base.CB.bool(), body=payload, write=True)

    def update_check(self, check_id: str, status: str, output: str) -> None:
        """Set a TTL check's status and output (this also resets its TTL)."""
        body = {"Status": status, "Output": output[:MAX_OUTPUT]}
        self._call("PUT", f"/v1/agent/check/update/{check_id}", consul_base.CB.bool(), body=body, write=True)

    def deregister(self, service_id: str) -> None:
        self._call("PUT", f"/v1/agent/service/deregister/{service_id}", consul_base.CB.bool(), write=True)

    def leader(self) -> str:
        """The cluster leader's address ('' while there is none): a cheap liveness probe."""
        return self._call("GET", "/v1/status/leader", consul_base.CB.json()) or ""

    # -- plumbing -------------------------------------------------------------------

    def _call(self, method: str, path: str, callback: Callable, *, body: Any = None, write: bool = False) -> Any:
        what = f"{method} {self.endpoint}{path.split('?')[0]}"
        self.requests += 1
        try:
            if method == "GET":
                result = self._http.get(callback, path, headers=self._headers)
            else:
                data = json.dumps(body) if body is not None else ""
                result = self._http.put(callback, path, data=data, headers=self._headers)
        except (consul_base.ACLPermissionDenied, consul_base.ACLDisabled) as exc:
            raise ConsulRefused(f"{what}: permission denied ({_first_line(exc)}); check the token and its ACL policy") from None
        except consul_base.BadRequest as exc:
            raise ConsulRejected(f"{what}: Consul rejected the request ({_first_line(exc)})") from None
        except consul_base.ConsulException as exc:
            raise ConsulError(f"{what}: Consul failed ({_first_line(exc)})") from None
        except requests.exceptions.SSLError:
            raise ConsulError(f"{what}: TLS handshake failed (check consul.ca_file, cert_file and tls_server_name)") from None
        except requests.exceptions.Timeout:
            raise ConsulError(f"{what}: no answer within {self._timeout:g}s") from None
        except requests.exceptions.ConnectionError:
            raise ConsulError(f"{what}: cannot connect (is the Consul agent running at {self.endpoint}?)") from None
        except requests.exceptions.RequestException as exc:
            raise ConsulError(f"{what}: request failed ({exc.__class__.__name__})") from None
        if write:
            self.writes += 1
        return result


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


def service_from_consul(entry: dict[str, Any], checks: list[dict[str, Any]] = ()) -> Service:
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
