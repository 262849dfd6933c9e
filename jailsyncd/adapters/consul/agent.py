"""Agent mode: this host's services on its local Consul agent (``ConsulAgent``), and
everything that is agent mode's own: the records it writes (a jailsyncd ``Service``
with tagged addresses, TTL checks whose notes record probe and TTL, the alias check
on the heartbeat), jailsyncd's heartbeat service, the token's AccessorID in the meta,
its ACL needs, and the agent API's bodies to and from those records.

Made once per process by ``app`` (``connect``); used by ``reconcile`` (``records``,
``read``, ``settle``, ``apply``) and ``healthloop`` (``write_checks``,
``heartbeat``). Requests go through ``transport``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from jailsyncd.aclcheck import Need, write_needs
from jailsyncd.adapters.consul.transport import MAX_OUTPUT, OK, ConsulClient, Sharing, StoreBase, service_body, strict_json, text_body
from jailsyncd.desired import MAX_META_PAIRS
from jailsyncd.errors import ConsulDenied, ConsulError, ConsulRefused, ConsulRejected, JailsyncdError
from jailsyncd.health import HEARTBEAT_STOPPED, PASSING, Target
from jailsyncd.model import (
    META_HOST,
    META_JNAME,
    META_OWNER,
    META_SOURCE,
    META_TOKEN,
    SELF_CHECK_ID,
    SELF_SERVICE_ID,
    SELF_SERVICE_NAME,
    SERVICE_ID_PREFIX,
    Action,
    CheckSpec,
    Desired,
    Observed,
    Record,
    Service,
)
from jailsyncd.settings import ConsulSettings, Settings


class ConsulAgent(StoreBase):
    """Agent mode: this host's services on its local Consul agent."""

    has_heartbeat = True
    checks_expire = True

    def __init__(self, client: ConsulClient | ConsulSettings) -> None:
        super().__init__(client)
        #: A digest of the last answers read, and what they say: in a steady state they
        #: repeat byte for byte, and turning a thousand services into values costs more
        #: than the requests themselves. The answers themselves (0.9 KiB per service)
        #: are not kept.
        self._last: tuple[tuple[str, bytes, bytes, str], Observed] | None = None

    def places_taken(self, places: frozenset[str]) -> frozenset[str]:
        """Agent mode has no places (node names): nothing to look up."""
        return frozenset()

    def read(self, owner: str) -> Observed:
        """Every service and check on the agent in two requests, whatever their number;
        keep ours, and note foreign IDs that look like ours."""
        services, services_digest = self._call("GET", "/v1/agent/services", _text_and_digest)
        checks, checks_digest = self._call("GET", "/v1/agent/checks", _text_and_digest)
        try:
            accessor = self._token_accessor()
            key = (owner, services_digest, checks_digest, accessor)
            if self._last is not None and self._last[0] == key:
                observed = self._last[1]
            else:
                self._last = None  # the old values go before the new ones are made
                observed = _observe_agent(owner, services, checks, accessor)
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

    def watch_query(self) -> AgentWatch:
        """What the Consul watch blocks on in agent mode (``watch.ConsulChangeFeed``)."""
        return AgentWatch(self._client)

    @staticmethod
    def records(desired: Desired, settings: Settings, *, taken: Mapping[str, str] | None = None) -> Desired:
        """``desired`` with its agent records (pure): one per service, plus the
        heartbeat service when health is on. Agent records have no place, so no
        part of the table can take one from another (``taken`` is not needed)."""
        return records(desired, settings)

    @staticmethod
    def settle(desired: Desired, observed: Observed, *, standalone: bool, settings: Settings) -> tuple[Desired, bool]:
        """The records made final with what only Consul tells: the token in use
        (``mark_token``) and, for ``once``/``plan`` (``standalone``) with health on,
        whether a daemon's heartbeat is alive (docs/architecture.md, "once and the
        daemon"): then its heartbeat service is kept exactly as it is; without one,
        the heartbeat is wanted with ``health.ttl``. Returns the records and whether a
        daemon runs."""
        desired = mark_token(desired, observed.token_accessor)
        mine = [r for r in desired.records if r.is_self]
        if not standalone or not settings.health.enabled or not mine:
            return desired, False
        running = daemon_heartbeat(observed)
        heartbeat = running if running is not None else standalone_self_record(mine[0], settings.health.ttl)
        return replace(desired, records=tuple(heartbeat if r.is_self else r for r in desired.records)), running is not None

    @staticmethod
    def acl_needs(desired: Sequence[Record] | None, owned: Sequence[Record] = ()) -> list[Need]:
        """The ACL permissions agent mode needs for these services (``check-config
        --online``; ``desired`` None: this host's names are unknown).

        ``service:write`` on the name of every service it registers, updates or
        deregisters (deregistering needs the old name's write; the heartbeat service
        ``jailsyncd`` included when health is on). No node write: the agent syncs the
        services to the catalog with the token that registered them. The Consul watch
        (``sync.watch_consul``) needs ``agent:read`` (the node name, ``/v1/agent/self``)
        and ``node:read`` on the agent's node (its blocking query): without them it
        cannot run, a note, not a failure."""
        names = {s.name for s in (*(desired or ()), *owned) if s.name}
        watch = "agent:read and node:read for the Consul watch"
        return write_needs([("service", names)], known=desired is not None and bool(desired or owned)) + [
            Need("agent", "", "read", watch, required=False),
            Need("node", "", "read", watch, required=False),
        ]

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

    def register(self, service: Record, statuses: dict[str, str] | None = None) -> None:
        """Create or replace one service on the agent (the agent API is an upsert).

        ``statuses`` gives the initial status of new TTL checks (default critical);
        Consul keeps the current status of checks that already exist (``apply``
        writes it for an update).
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

    def deregister_check(self, check_id: str) -> None:
        self._deregister(f"/v1/agent/check/deregister/{check_id}", "Unknown check")

    def deregister(self, service_id: str) -> None:
        self._deregister(f"/v1/agent/service/deregister/{service_id}", "Unknown service")

    def _deregister(self, path: str, unknown: str) -> None:
        """One deregistration. An entry the agent does not know (``unknown`` in its
        answer) is gone since the read, removed by hand or by a restart of a dev
        agent: what the deregistration wanted is true."""
        try:
            self._call("PUT", path, OK, write=True)
        except ConsulRejected as exc:
            if unknown not in str(exc):
                raise

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
                    if action.kind == "update" and action.old is not None:
                        # Consul keeps the checks of a service that a new registration
                        # of it does not list: ours that the jail no longer has (a
                        # probe dropped from its tags, health turned off) go explicitly.
                        for check_id in dropped_checks(action.old, action.service):
                            self.deregister_check(check_id)
                        # Consul keeps an existing TTL check's status when the service is
                        # registered again: a check probed for this update (pointed at
                        # another address or port, or redefined) gets its status now,
                        # not one health round later. The round writes the probe's output.
                        for check_id, status in action.statuses:
                            self.update_check(check_id, status, f"probed before the update: {status}")
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

    def register_new(self, actions: Iterable[Action], should_stop: Callable[[], bool]) -> Iterator[tuple[Action, JailsyncdError | None]]:
        """``apply`` of new registrations: agent mode sends one request per service,
        and the agent, not jailsyncd, is what limits a cold start (docs/performance.md),
        so they are taken all at once (which names the token may write is asked
        over all of them, as ``apply`` does)."""
        yield from self.apply(list(actions), should_stop)

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


def _text_and_digest(response: Any) -> tuple[str, bytes]:
    """An answer's text and a digest of its bytes, to tell whether it repeats the last
    one (BLAKE2b: a chance collision would hide a change for as long as it lasts)."""
    return text_body(response), hashlib.blake2b(response.content, digest_size=32).digest()


def _observe_agent(owner: str, services_json: str, checks_json: str, accessor: str) -> Observed:
    """What the agent's answers say this host owns (``ConsulAgent.read`` keeps the
    last one). Each service entry is turned into what is kept of it (a record, a
    foreign ID, or nothing) as soon as the JSON parser has made it, so the parsed
    answer is never held whole: at 5,000 jails it would be some 15 MB."""
    raw_checks = json.loads(checks_json)
    if not isinstance(raw_checks, dict):
        raise ValueError("not a JSON object")
    checks_by_service: dict[str, list[dict[str, Any]]] = {}
    for check in raw_checks.values():
        checks_by_service.setdefault(check.get("ServiceID", ""), []).append(check)
    owned: list[Record] = []
    share = Sharing()
    foreign: set[str] = set()
    status: list[tuple[str, str, str]] = []

    def take(sid: str, entry: dict[str, Any]) -> None:
        if not (sid.startswith(SERVICE_ID_PREFIX) or sid == SELF_SERVICE_ID):
            return
        if (entry.get("Meta") or {}).get(META_OWNER) != owner:
            foreign.add(sid)
            return
        checks = checks_by_service.get(sid, [])
        owned.append(share(record_from_consul(entry, checks)))
        status.extend((c["CheckID"], c.get("Status", ""), c.get("Output", "")) for c in checks)

    def entry_hook(obj: dict[str, Any]) -> Any:
        # Called for every JSON object, innermost first: a service entry (its own
        # string ID and name) is taken at once; any other object is left as it is.
        sid = obj.get("ID")
        if isinstance(sid, str) and isinstance(obj.get("Service"), str):
            take(sid, obj)
            return _TAKEN
        return obj

    raw = json.loads(services_json, object_hook=entry_hook)
    if not isinstance(raw, dict):
        raise ValueError("not a JSON object")
    for sid, entry in raw.items():
        if entry is not _TAKEN:  # not shaped like an entry: as before, by its key
            take(sid, entry)
    return Observed(
        owned=tuple(sorted(owned, key=lambda s: s.service_id)),
        foreign_ids=frozenset(foreign),
        check_status=tuple(sorted(status)),
        token_accessor=accessor,
    )


#: What ``_observe_agent`` leaves in the parsed answer in place of an entry it took.
_TAKEN = object()


# -- agent records: jailsyncd's services as the agent API holds them -----------------------

#: What the alias check on the heartbeat is called, and its notes.
ALIAS_NAME = "jailsyncd alive"
ALIAS_NOTES = f"jailsyncd alias={SELF_SERVICE_ID}"
#: Marks the notes of a heartbeat that ``once`` registered with no daemon running.
STANDALONE_MARK = "by=once"


def _ttl_text(seconds: float) -> str:
    return f"{seconds:g}s"


def check_notes(spec: CheckSpec) -> str:
    """A TTL check's notes: its probe and TTL, because the agent API does not return a
    TTL check's TTL (a changed note re-registers it)."""
    return f"jailsyncd probe={spec.probe} ttl={_ttl_text(spec.ttl)}"


def tagged_addresses(addresses: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """Every address of the environment, by name.

    The first address of each family is ``lan_ipv4``/``wan_ipv4`` (or ``_ipv6``), the
    names Consul itself fills in from a service address (setting them keeps Consul
    from adding them and the plan from seeing a difference); further ones are
    ``cbsd_ipv4_2``, ``cbsd_ipv4_3``, ... in column order.
    """
    pairs: list[tuple[str, str]] = []
    index = {"ipv4": 0, "ipv6": 0}
    for addr in addresses:
        family = "ipv6" if ":" in addr else "ipv4"
        index[family] += 1
        if index[family] == 1:
            pairs += [(f"lan_{family}", addr), (f"wan_{family}", addr)]
        else:
            pairs.append((f"cbsd_{family}_{index[family]}", addr))
    return tuple(sorted(pairs))


def _fields(
    name: str, address: str, port: int, tags: frozenset[str], meta: tuple[tuple[str, str], ...],
    tagged: tuple[tuple[str, str], ...], checks: frozenset[tuple[str, str, str]],
) -> tuple[tuple[str, object], ...]:
    """An agent record's compared fields, in the order differences are reported."""
    return (("name", name), ("address", address), ("port", port), ("tags", tags), ("meta", meta), ("tagged_addresses", tagged), ("checks", checks))


def record_of(service: Service) -> Record:
    """The agent record of one jail service: its checks as TTL checks, plus the alias
    check on the heartbeat service when it has any."""
    checks = {(c.check_id, "ttl", check_notes(c)) for c in service.checks}
    if service.checks:
        checks.add((f"{service.service_id}:alive", "alias", ALIAS_NOTES))
    meta = dict(service.meta)
    fields = _fields(service.name, service.address, service.port, service.tags, service.meta, tagged_addresses(service.addresses), frozenset(checks))
    return Record(service.service_id, service.jail, fields, owner=meta.get(META_OWNER, ""), cbsd_host=meta.get(META_HOST, ""), checks=service.checks)


def self_record(owner: str, host: str, ttl: float) -> Record:
    """jailsyncd's own service on the agent, carrying the heartbeat TTL check. Each
    jail's alias check mirrors it: if the daemon dies, every jail turns critical
    within one heartbeat TTL for the price of one write per refresh, not one per jail."""
    spec = CheckSpec(SELF_CHECK_ID, "jailsyncd heartbeat", "heartbeat", ttl=ttl)
    meta = tuple(sorted({META_SOURCE: "jailsyncd", META_OWNER: owner, META_HOST: host}.items()))
    fields = _fields(SELF_SERVICE_NAME, "", 0, frozenset(), meta, (), frozenset({(SELF_CHECK_ID, "ttl", f"jailsyncd heartbeat ttl={_ttl_text(ttl)}")}))
    return Record(SELF_SERVICE_ID, SELF_SERVICE_ID, fields, owner=owner, cbsd_host=host, checks=(spec,))


def standalone_self_record(heartbeat: Record, ttl: float) -> Record:
    """The heartbeat service as ``once`` registers it when no daemon runs: its TTL is
    ``health.ttl``, the TTL of the jails' own checks, so that the alias checks of the
    jails ``once`` found answering stay passing as long as their probe results do,
    instead of ``heartbeat_ttl`` (seconds) after ``once`` exits. The notes say so,
    which is how the next ``once`` tells it from a running daemon's heartbeat."""
    spec = replace(heartbeat.checks[0], ttl=ttl)
    notes = f"jailsyncd heartbeat ttl={_ttl_text(ttl)} {STANDALONE_MARK}"
    return replace(heartbeat.with_values(checks=frozenset({(SELF_CHECK_ID, "ttl", notes)})), checks=(spec,))


def records(desired: Desired, settings: Settings) -> Desired:
    """``desired`` with its agent records: one per service, plus the heartbeat
    service when health is on."""
    share = Sharing()
    out = tuple(share(record_of(s)) for s in desired.services)
    if settings.health.enabled:
        out += (self_record(desired.owner, desired.host, settings.health.heartbeat_ttl),)
    return replace(desired, records=out)


def daemon_heartbeat(observed: Observed) -> Record | None:
    """The heartbeat service of a daemon alive on this host, if Consul shows one: ours,
    its TTL check passing (the daemon refreshes it every third of its TTL), and not
    one that ``once`` registered, nor one a daemon that stopped cleanly left passing
    (its output says so). A daemon killed less than ``heartbeat_ttl`` ago still counts
    as alive until its heartbeat expires."""
    status = {check_id: st for check_id, st, output in observed.check_status if output != HEARTBEAT_STOPPED}
    for record in observed.owned:
        if not record.is_self:
            continue
        value = record.value("checks")
        notes = {c[0]: c[2] for c in value if isinstance(c, tuple)} if isinstance(value, frozenset) else {}
        if status.get(SELF_CHECK_ID) == PASSING and SELF_CHECK_ID in notes and STANDALONE_MARK not in notes[SELF_CHECK_ID]:
            return record
    return None


def mark_token(desired: Desired, accessor: str) -> Desired:
    """Record in each service which token registered it.

    A Consul agent syncs a service to the catalog with the token it was registered
    with. After a token rotation (old token deleted, new one in the token file) that
    sync fails silently and the catalog goes stale. With the token's AccessorID in
    the meta, a new token makes every service differ, so the next cycle re-registers
    them all with it. The AccessorID is Consul's public name for a token, not a secret.
    """
    if not accessor:
        return desired
    marked = []
    for record in desired.records:
        meta = dict(record.meta)
        if len(meta) < MAX_META_PAIRS or META_TOKEN in meta:
            meta[META_TOKEN] = accessor
        marked.append(record.with_values(meta=tuple(sorted(meta.items()))))
    return replace(desired, records=tuple(marked))


def service_payload(record: Record, statuses: dict[str, str] | None = None) -> dict[str, Any]:
    """The agent API body for an agent record (with its checks, if any); the checks'
    notes are those the record compares."""
    statuses = statuses or {}
    value = record.value("checks")
    kinds = {c[0]: (c[1], c[2]) for c in value if isinstance(c, tuple)} if isinstance(value, frozenset) else {}
    # A new check starts critical unless probed just before; the heartbeat's own check
    # starts passing: the process registering it is alive.
    first = PASSING if record.is_self else "critical"
    checks: list[dict[str, Any]] = [
        {
            "CheckID": c.check_id, "Name": c.name, "Notes": kinds.get(c.check_id, ("", check_notes(c)))[1],
            "TTL": _ttl_text(c.ttl), "Status": statuses.get(c.check_id, first),
        }
        for c in record.checks
    ]
    checks += [
        {"CheckID": check_id, "Name": ALIAS_NAME, "Notes": notes, "AliasService": SELF_SERVICE_ID}
        for check_id, (kind, notes) in sorted(kinds.items())
        if kind == "alias"
    ]
    return {**service_body(record), "Name": record.name, **({"Checks": checks} if checks else {})}


def dropped_checks(old: Record, new: Record) -> list[str]:
    """The checks of ours (``<service_id>:<name>``) that Consul holds on ``old`` and
    ``new`` no longer has; a check someone else added to the service is not ours."""
    mine = f"{new.service_id}:"
    return sorted(c for c in old.check_ids - new.check_ids if c.startswith(mine))


def _probed_checks(address: str, checks: Sequence[tuple[str, str, str]]) -> tuple[CheckSpec, ...]:
    """The definitions of the probed TTL checks among what the agent returns of a
    service's checks (ID, type, the notes ``check_notes`` wrote), for a record read
    back; the alias and the heartbeat are not probed. Their TTL is set by whoever
    probes them (``health.with_ttl``)."""
    specs = []
    for check_id, kind, notes in sorted(checks):
        probe = next((word.removeprefix("probe=") for word in notes.split() if word.startswith("probe=")), "")
        if kind == "ttl" and probe:
            specs.append(CheckSpec(check_id, f"{probe} {address}", probe, on_host=probe == "ping"))
    return tuple(specs)


def record_from_consul(entry: dict[str, Any], checks: Sequence[dict[str, Any]] = ()) -> Record:
    """An agent record from one value of ``/v1/agent/services`` and its entries of
    ``/v1/agent/checks``; absent fields become empty."""
    tagged = entry.get("TaggedAddresses") or {}
    meta = entry.get("Meta") or {}
    sid = entry["ID"]
    address = entry.get("Address", "")
    triples = frozenset((c["CheckID"], c.get("Type", ""), c.get("Notes", "")) for c in checks)
    fields = _fields(
        entry.get("Service", ""), address, int(entry.get("Port") or 0), frozenset(entry.get("Tags") or ()),
        tuple(sorted(meta.items())), tuple(sorted((k, v.get("Address", "")) for k, v in tagged.items())), triples,
    )
    jail = meta.get(META_JNAME, sid.removeprefix(SERVICE_ID_PREFIX))
    return Record(sid, jail, fields, owner=meta.get(META_OWNER, ""), cbsd_host=meta.get(META_HOST, ""), checks=_probed_checks(address, tuple(triples)))


# -- what agent mode watches (adapters.consul.watch) ------------------------------------


class AgentWatch:
    """Agent mode's ``watch.WatchQuery``: ``/v1/catalog/node-services/<node>`` of the
    local agent's node (its name read once from ``/v1/agent/self``). The agent syncs a
    service registered, edited or deregistered through its API to the catalog at once,
    which wakes the query; TTL check updates and other nodes do not. The index also
    moves for the agent's other services: the change is in the entries with
    jailsyncd's IDs (ours, and others' that look like ours) and their ModifyIndex."""

    dc_scoped = False
    index_is_change = False

    def __init__(self, client: ConsulClient) -> None:
        self._client = client
        self._node = ""
        self.requests = 0

    def query(self, owner: str) -> tuple[str, dict[str, str]]:
        if not self._node:
            self.requests += 1
            me = self._client.call("GET", "/v1/agent/self", strict_json, timeout=self._client.timeout)
            try:
                self._node = str(me["Config"]["NodeName"])
            except (KeyError, TypeError):
                raise ConsulError(f"GET {self._client.endpoint}/v1/agent/self: the answer names no node (is this a Consul agent?)") from None
        return f"/v1/catalog/node-services/{self._node}", {}

    def forget(self) -> None:
        """After a failed query the agent's node name is read again: an agent restarted
        under another name would otherwise be watched under the old one for good (a
        node no longer in the catalog, or a stale one whose services never change)."""
        self._node = ""

    def digest(self, body: str) -> str:
        where = f"GET {self._client.endpoint}/v1/catalog/node-services/{self._node}"
        try:
            answer = json.loads(body, object_hook=_slim)
            node = answer.get("Node")
            services = answer.get("Services") or []
        except (ValueError, AttributeError):
            raise ConsulError(f"{where}: the answer is not Consul's") from None
        if node is None:
            # Consul answers 200 with no node to a token without node:read on it, and
            # for a node that is not in the catalog (the agent came back under another
            # name: the name is read again for the next query, see ``forget``).
            raise ConsulRefused(
                f"{where}: no node {self._node} in the answer: the agent's node is not in the catalog under that name "
                f"(it is asked again), or the token lacks node:read on it; the Consul watch needs node:read and agent:read "
                f"(docs/acl/agent-mode.hcl)"
            )
        ours = sorted(
            (s.get("ID", ""), s.get("ModifyIndex", 0))
            for s in services
            if isinstance(s, dict) and (str(s.get("ID", "")).startswith(SERVICE_ID_PREFIX) or s.get("ID") == SELF_SERVICE_ID)
        )
        return hashlib.sha1(json.dumps(ours).encode()).hexdigest()


def _slim(obj: dict[str, Any]) -> dict[str, Any]:
    """json object hook for the watch's answer: each service entry (its own string ID
    and name) shrinks to its ID and ModifyIndex as soon as it is parsed, and what it
    held (meta, tagged addresses, weights...) goes with it; any other object is left
    as it is. The answer lists every service of the agent: at 5,000 jails, whole, it
    would be some 15 MB of dicts for a digest of a few KB (docs/performance.md)."""
    if isinstance(obj.get("ID"), str) and isinstance(obj.get("Service"), str):
        return {"ID": obj["ID"], "ModifyIndex": obj.get("ModifyIndex", 0)}
    return obj
