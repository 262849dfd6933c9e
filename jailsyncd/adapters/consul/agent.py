"""Agent mode: this host's services on its local Consul agent (``ConsulAgent``), and
the agent API's service records: jailsyncd's ``Service`` to a registration body and
back.

Made once per process by ``app`` (``connect``); used by ``reconcile`` (``read``,
``apply``) and ``healthloop`` (``write_checks``, ``heartbeat``). Requests go through
``transport``; the catalog mode reuses the service body built here.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Iterator, Sequence

from jailsyncd.aclcheck import Need, write_needs
from jailsyncd.adapters.consul.transport import MAX_OUTPUT, OK, ConsulClient, StoreBase, text_body
from jailsyncd.errors import ConsulDenied, ConsulError, ConsulRefused, ConsulRejected, JailsyncdError
from jailsyncd.health import Target
from jailsyncd.model import META_OWNER, SELF_CHECK_ID, SELF_SERVICE_ID, SERVICE_ID_PREFIX, Action, CheckSpec, Observed, Service
from jailsyncd.settings import ConsulSettings


class ConsulAgent(StoreBase):
    """Agent mode: this host's services on its local Consul agent."""

    has_heartbeat = True
    checks_expire = True

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
        services = self._call("GET", "/v1/agent/services", text_body)
        checks = self._call("GET", "/v1/agent/checks", text_body)
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

    @staticmethod
    def acl_needs(desired: Sequence[Service] | None, owned: Sequence[Service] = ()) -> list[Need]:
        """The ACL permissions agent mode needs for these services (``check-config
        --online``; ``desired`` None: this host's names are unknown).

        ``service:write`` on the name of every service it registers, updates or
        deregisters (deregistering needs the old name's write; the heartbeat service
        ``jailsyncd`` included when health is on). No node rule: the agent syncs the
        services to the catalog with the token that registered them, and jailsyncd
        reads no node."""
        names = {s.name for s in (*(desired or ()), *owned) if s.name}
        return write_needs([("service", names)], known=desired is not None and bool(desired or owned))

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
        self._call("PUT", "/v1/agent/service/register", OK, body=payload, write=True)

    def heartbeat(self, output: str) -> None:
        """Set jailsyncd's own heartbeat check passing (resets its TTL)."""
        self.update_check(SELF_CHECK_ID, "passing", output)

    def update_check(self, check_id: str, status: str, output: str) -> None:
        """Set a TTL check's status and output (this also resets its TTL)."""
        body = {"Status": status, "Output": output[:MAX_OUTPUT]}
        self._call("PUT", f"/v1/agent/check/update/{check_id}", OK, body=body, write=True)

    def deregister(self, service_id: str) -> None:
        try:
            self._call("PUT", f"/v1/agent/service/deregister/{service_id}", OK, write=True)
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

