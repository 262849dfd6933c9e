"""Catalog mode: every jail an external node of its own (``ConsulCatalog``), written
through ``/v1/txn``, and everything that is catalog mode's own: its records (a node
with its meta, the service on it, its inert node and service checks), the node
names and their clashes, the Consul quirks of its endpoints, its ACL needs, and the
catalog's bodies to and from those records.

Made once per process by ``app`` (``connect``); used by ``reconcile`` (``records``,
``read``, ``apply``) and ``healthloop`` (``write_checks``; catalog mode has no
heartbeat service). Requests go through ``transport``.
"""

from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence, TypeVar

from jailsyncd.aclcheck import Need, write_needs
from jailsyncd.adapters.consul.transport import MAX_OUTPUT, ConsulClient, Sharing, StoreBase, service_body, strict_json, txn_errors, txn_result
from jailsyncd.desired import MAX_META_PAIRS, NAMELESS
from jailsyncd.errors import ConsulDenied, ConsulError, ConsulRejected, JailsyncdError
from jailsyncd.health import Target
from jailsyncd.model import (
    META_ADDRESSES,
    META_EMULATOR,
    META_HOST,
    META_JNAME,
    META_OWNER,
    SERVICE_ID_PREFIX,
    Action,
    CheckSpec,
    Desired,
    Observed,
    Record,
    Service,
    Skip,
)
from jailsyncd.naming import dns_label
from jailsyncd.settings import CatalogSettings, ConsulSettings, Settings
from jailsyncd.tagspec import MAX_META_VALUE


#: Consul applies at most 64 operations in one transaction.
MAX_TXN_OPS = 64
NOT_PROBED_OUTPUT = "not probed yet"
#: Node meta naming the jail service on the node, so that one read-only transaction
#: reads every service of this host (``ConsulCatalog.read``).
META_SERVICE_ID = "jailsyncd-service-id"


class ConsulCatalog(StoreBase):
    """Catalog mode: every jail is an external node of its own (node meta
    ``external-node=true``), registered through ``/v1/txn`` in batches of at most 64
    operations. Nodes are created with ``cas`` at index 0, so a node that appeared
    since the read (another host, an agent) is never overwritten; a node's
    operations never straddle two transactions, so nothing is left half-written."""

    applies_read_statuses = True
    needs_leader = True

    def __init__(self, client: ConsulClient | ConsulSettings) -> None:
        super().__init__(client)
        self._dc_scoped = True
        self._status: dict[str, tuple[str, str]] = {}
        #: Our nodes as the last read found them, with their ``ModifyIndex``: a jail
        #: service created on a node of ours that lacks it (removed by hand, or the
        #: node kept for someone else's service) is written with ``cas`` at that index.
        self._node_index: dict[str, int] = {}
        #: Nodes the actions being applied must not delete: something stays on them
        #: (another action's service, or a service that is not ours). Set by ``apply``.
        self._keep: frozenset[str] = frozenset()
        #: False once Consul answered 404 to /v1/catalog/node-services (before 1.7).
        self._node_services_endpoint = True

    def read(self, owner: str) -> Observed:
        """Our nodes with their services and checks. Only public endpoints,
        answered by any server (``?stale``), and what is read depends on this host's
        jails only, never on the size of the cluster (docs/scaling.md):

        1. ``GET /v1/catalog/nodes?node-meta=jailsyncd-owner:<owner>``: our nodes;
        2. ``GET /v1/health/state/any?node-meta=jailsyncd-owner:<owner>``: their checks;
        3. ``PUT /v1/txn`` with one read-only ``Service get`` per node (64 per request),
           the ID taken from the node meta ``jailsyncd-service-id``; a node without it
           (written by an older jailsyncd) or a get that fails (a service changed by
           hand) is read alone (``/v1/catalog/node-services/<node>``, Consul >= 1.7,
           else ``/v1/catalog/node/<node>``).

        Whether the node names a cycle wants are taken is asked apart, after the
        read (``places_taken``).

        A stale answer can lag the leader by a few milliseconds: the next cycle then
        repeats a write that is idempotent (``set``, ``delete``) or refused (``cas``),
        never a wrong one.
        """
        params = {"node-meta": f"{META_OWNER}:{owner}", "stale": ""}
        nodes = self._call("GET", "/v1/catalog/nodes", strict_json, params=params) or []
        # The node-meta filter is Consul's; ownership is checked here as well. Only the
        # name, address and meta of each node are kept: the answers of a large host are held
        # one at a time, never all at once (peak memory, docs/performance.md).
        ours = {
            n["Node"]: {"Node": n["Node"], "Address": n.get("Address", ""), "Meta": n.get("Meta") or {}}
            for n in nodes
            if (n.get("Meta") or {}).get(META_OWNER) == owner
        }
        self._node_index = {n["Node"]: int(n.get("ModifyIndex") or 0) for n in nodes if n["Node"] in ours}
        del nodes
        checks = self._call("GET", "/v1/health/state/any", strict_json, params=params) or []
        checks_by_node: dict[str, list[dict[str, Any]]] = {}
        for check in checks:
            if check.get("Node") in ours:
                checks_by_node.setdefault(check["Node"], []).append(check)
        owned: list[Record] = []
        share = Sharing()
        status: list[tuple[str, str, str]] = []
        for name, entries in self._node_services(ours):
            node_checks = checks_by_node.get(name, [])
            status += [(c["CheckID"], c.get("Status", ""), c.get("Output", "")) for c in node_checks]
            owned += [record_from_catalog(ours[name], e, node_checks, share=share) for e in entries if e.get("ID", "").startswith(SERVICE_ID_PREFIX)]
            sid = str(ours[name]["Meta"].get(META_SERVICE_ID) or "")
            if not entries and sid.startswith(SERVICE_ID_PREFIX):
                # A node of ours with no service at all (its service removed by hand,
                # or the node kept for a service of someone else's that is gone now):
                # read as the jail's service with nothing in it, so that the jail's
                # service is written back on it, or the node removed.
                owned.append(record_from_catalog(ours[name], {"ID": sid}, node_checks, share=share))
        self._status = {check_id: (st, out) for check_id, st, out in status}
        return Observed(owned=tuple(sorted(owned, key=lambda s: s.service_id)), check_status=tuple(sorted(status)))

    def watch_query(self) -> CatalogWatch:
        """What the Consul watch blocks on in catalog mode (``watch.ConsulChangeFeed``)."""
        return CatalogWatch()

    @staticmethod
    def records(desired: Desired, settings: Settings, *, taken: Mapping[str, str] | None = None) -> Desired:
        """``desired`` with its catalog records (pure): each service on a node of its
        own; a node name two jails would share goes to the first jname in sort order,
        the other is skipped as ``conflict``. ``taken``: the node names earlier parts
        of the table gave to their jails (``desired.combine``)."""
        return records(desired, settings.catalog, taken=taken)

    @staticmethod
    def settle(desired: Desired, observed: Observed, *, standalone: bool, settings: Settings) -> tuple[Desired, bool]:
        """Nothing to finish from Consul's answers: no token meta, no heartbeat."""
        return desired, False

    @staticmethod
    def acl_needs(desired: Sequence[Record] | None, owned: Sequence[Record] = ()) -> list[Need]:
        """The ACL permissions catalog mode needs for these services (``check-config
        --online``; ``desired`` None: this host's names are unknown).

        ``node:write`` on every jail's node name (and on the nodes it deregisters:
        deleting a node is a node write only), ``service:write`` on every service name
        it writes; ``/v1/txn`` needs nothing else. ``node:read`` on every node is not
        required, but without it a node name held by another owner is invisible to the
        read, so the jail's write fails (exit 77) instead of being skipped as a
        ``conflict``: a note, not a failure."""
        services = {s.name for s in desired or () if s.name}
        nodes = {s.place for s in (*(desired or ()), *owned) if s.place}
        needs = write_needs([("service", services), ("node", nodes)], known=desired is not None and bool(desired or owned))
        return [*needs, Need("node", "", "read", "node:read on every node", required=False)]

    #: Up to this many names are looked up one by one when the transaction's answer
    #: cannot tell (see ``_taken``); more take one filtered read per ``TAKEN_BATCH``.
    TAKEN_ALONE = 4
    #: Names per filtered clash-check request (keeps the URL short).
    TAKEN_BATCH = 32

    def places_taken(self, places: frozenset[str]) -> frozenset[str]:
        """Which of ``places`` (node names no record of ours holds) are nodes of
        someone else's already: the clash check of a cycle, after its read. A node of
        ours as the last read found it is never taken, even with no service of ours
        on it (kept for someone else's service after its jail was deregistered):
        the jail's service goes back on it (``cas`` at the index read)."""
        return self._taken(sorted(places - self._node_index.keys()))

    def _taken(self, names: list[str]) -> frozenset[str]:
        """Which of ``names`` are nodes in the catalog (none of them is ours). Asked
        only for names a cycle wants and does not own: new jails, persistent conflicts.

        One read-only transaction of ``Node get`` per 64 names: an index lookup each
        on the server (case-insensitive, like the ``cas`` create), whatever the size
        of the cluster, so a cold start of N jails asks N / 64 times instead of N / 32
        (``taken_in`` reads the answer). A chunk whose answer cannot tell is asked
        through the read endpoints (``_taken_by_filter``)."""
        taken: set[str] = set()
        unsure: list[str] = []
        for start in range(0, len(names), MAX_TXN_OPS):
            chunk = names[start : start + MAX_TXN_OPS]
            ops = [{"Node": {"Verb": "get", "Node": {"Node": n}}} for n in chunk]
            found = taken_in(chunk, self._call("PUT", "/v1/txn", txn_result, body=ops, params={"stale": ""}))
            if found is None:
                unsure += chunk
            else:
                taken |= found
        return frozenset(taken | self._taken_by_filter(unsure))

    def _taken_by_filter(self, names: list[str]) -> frozenset[str]:
        """``_taken`` through the catalog's read endpoints, which need only
        ``node:read``: ``GET /v1/catalog/node/<name>`` for up to ``TAKEN_ALONE`` names,
        else one ``GET /v1/catalog/nodes?filter=Node == ...`` per ``TAKEN_BATCH``."""
        taken: set[str] = set()
        if len(names) <= self.TAKEN_ALONE:
            for name in names:
                if self._call("GET", f"/v1/catalog/node/{name}", strict_json, params={"stale": ""}):
                    taken.add(name)
            return frozenset(taken)
        for start in range(0, len(names), self.TAKEN_BATCH):
            chunk = names[start : start + self.TAKEN_BATCH]
            flt = " or ".join(f"Node == {_quote(n)}" for n in chunk)
            found = self._call("GET", "/v1/catalog/nodes", strict_json, params={"filter": flt, "stale": ""}) or []
            taken.update(n["Node"] for n in found if n.get("Node") in chunk)
        return frozenset(taken)

    def _node_services(self, ours: dict[str, dict[str, Any]]) -> Iterator[tuple[str, list[dict[str, Any]]]]:
        """The service entries of each of our nodes, one transaction's worth at a time
        (the caller turns them into values before the next is read): batched
        ``Service get`` reads where the node names its service ID, single-node reads
        otherwise."""
        alone: list[str] = []
        known = [(n, (ours[n].get("Meta") or {}).get(META_SERVICE_ID, "")) for n in sorted(ours)]
        alone += [n for n, sid in known if not sid]
        batch = [(n, sid) for n, sid in known if sid]
        for start in range(0, len(batch), MAX_TXN_OPS):
            chunk = batch[start : start + MAX_TXN_OPS]
            ops = [{"Service": {"Verb": "get", "Node": n, "Service": {"ID": sid}}} for n, sid in chunk]
            answer = self._call("PUT", "/v1/txn", txn_result, body=ops, params={"stale": ""}) or {}
            results = answer.get("Results") or []
            if answer.get("Errors") or len(results) != len(chunk):
                alone += [n for n, _ in chunk]  # a service changed by hand: read those nodes whole
                continue
            for (name, _), item in zip(chunk, results):
                yield name, [item.get("Service") or {}]
        for name in alone:
            yield name, self._one_node(name)

    def _one_node(self, name: str) -> list[dict[str, Any]]:
        """Every service of one node: ``/v1/catalog/node-services`` (Consul 1.7 and
        later), else ``/v1/catalog/node`` (whose services are a map)."""
        if self._node_services_endpoint:
            try:
                answer = self._call("GET", f"/v1/catalog/node-services/{name}", strict_json, params={"stale": ""}) or {}
                return list(answer.get("Services") or [])
            except ConsulError as exc:
                if "404 not found" not in str(exc):
                    raise
                self._node_services_endpoint = False  # an older Consul: not asked again
        answer = self._call("GET", f"/v1/catalog/node/{name}", strict_json, params={"stale": ""}) or {}
        return list((answer.get("Services") or {}).values())

    def apply(self, actions: list[Action], should_stop: Callable[[], bool]) -> Iterator[tuple[Action, JailsyncdError | None]]:
        """Write the actions in transactions of at most 64 operations, one after the
        other, in order. From the second on, each is sent by a helper thread while
        the caller handles (logs) the results of the one before: Consul's work on one
        transaction overlaps jailsyncd's on the last, and a cold start of thousands
        of jails costs about Consul's own time (docs/performance.md). Still only one
        transaction is in flight at a time, the next is sent only after the last one
        succeeded, and ``should_stop`` is asked just before each is sent."""
        self._keep = self._nodes_to_keep(actions, should_stop)
        yield from self._send(actions, should_stop)

    def register_new(self, actions: Iterable[Action], should_stop: Callable[[], bool]) -> Iterator[tuple[Action, JailsyncdError | None]]:
        """Registrations of nodes none of ours holds (each created with ``cas`` at
        index 0, so a node that exists by now is refused, never overwritten), taken
        from ``actions`` as the caller makes them: the next transaction's actions are
        made while the one before is out (``_one_after_another``)."""
        yield from self._send(actions, should_stop)

    def _send(self, actions: Iterable[Action], should_stop: Callable[[], bool]) -> Iterator[tuple[Action, JailsyncdError | None]]:
        # Each transaction's operations are built while the one before is out.
        batches = _batches(((a, self._ops(a)) for a in actions), MAX_TXN_OPS)
        yield from _one_after_another(batches, lambda batch: list(self._txn(batch)), should_stop)

    def write_checks(self, writes: list[tuple[Target, str, str]]) -> Iterator[tuple[tuple[Target, str, str], JailsyncdError | None]]:
        ops = [(w, [_check_op(w[0].node, w[0].spec, w[0].service_id, w[1], w[2])]) for w in writes if w[0].spec is not None]
        for batch in _batches(ops, MAX_TXN_OPS):
            yield from self._txn(batch)

    def _nodes_to_keep(self, actions: list[Action], should_stop: Callable[[], bool] = lambda: False) -> frozenset[str]:
        """The nodes these actions would delete (a deregistration, a renamed node's old
        one) on which something stays: a service another action puts there (a jail
        renamed in CBSD keeps its node name), or a service that is not jailsyncd's
        (someone's exporter registered on the jail's node). Only jailsyncd's service
        and checks are removed from those. One ``/v1/catalog/node-services`` read per
        node to delete (the batched read sees only our service on each node). Once
        ``should_stop``, the nodes not read yet are kept: nothing more is sent then
        anyway, and a node is never deleted unread."""
        staying = {a.service.place for a in actions if a.kind != "deregister"}
        leaving: dict[str, set[str]] = {}
        for a in actions:
            old = a.service if a.kind == "deregister" else a.old
            if old is not None and old.place and (a.kind == "deregister" or old.place != a.service.place):
                leaving.setdefault(old.place, set()).add(old.service_id)
        keep = {place for place in leaving if place in staying}
        for place in sorted(set(leaving) - keep):
            if should_stop() or {str(e.get("ID", "")) for e in self._one_node(place)} - leaving[place]:
                keep.add(place)
        return frozenset(keep)

    def _removal(self, record: Record) -> list[dict[str, Any]]:
        """Remove ``record`` from its node: the node with it, or only the service and
        its checks when something else stays on the node (``_nodes_to_keep``)."""
        if record.place not in self._keep:
            self._node_index.pop(record.place, None)
            return [{"Node": {"Verb": "delete", "Node": {"Node": record.place}}}]
        ops: list[dict[str, Any]] = [
            {"Check": {"Verb": "delete", "Check": {"Node": record.place, "CheckID": check_id}}} for check_id, _, _ in sorted(_triples(record))
        ]
        if record.name:  # a node read with no service has none to delete
            ops.append({"Service": {"Verb": "delete", "Node": record.place, "Service": {"ID": record.service_id, "Service": record.name}}})
        return ops

    def _ops(self, action: Action) -> list[dict[str, Any]]:
        new, old = action.service, action.old
        if action.kind == "deregister":
            return self._removal(new)
        statuses = dict(action.statuses)
        ops: list[dict[str, Any]] = []
        moved = old is not None and old.place != new.place
        if moved:
            assert old is not None
            ops += self._removal(old)
        if old is None or moved:
            # cas at index 0: create only if no such node exists by now; on a node of
            # ours without this service, at the index it was read at (changed since:
            # refused, and read again next cycle).
            index = self._node_index.get(new.place, 0)
            ops.append({"Node": {"Verb": "cas", "Node": {**_node_body(new), "ModifyIndex": index}}})
        elif (old.value("node_address"), old.value("node_meta")) != (new.value("node_address"), new.value("node_meta")):
            ops.append({"Node": {"Verb": "set", "Node": _node_body(new)}})
        if old is None or moved or _service_fields(old) != _service_fields(new):
            ops.append({"Service": {"Verb": "set", "Node": new.place, "Service": _catalog_service(new)}})
        have = _triples(old) if old is not None and not moved else frozenset()
        for spec in new.checks:
            if _triple(spec) in have and spec.check_id not in statuses:
                continue
            # A check probed just before (new, or pointed at another address or port)
            # starts with that status; any other changed definition keeps the status
            # Consul holds; else critical.
            if spec.check_id in statuses:
                current, output = statuses[spec.check_id], f"first probe before registration: {statuses[spec.check_id]}"
            elif spec.check_id in self._status:
                current, output = self._status[spec.check_id]
            else:
                current, output = "critical", NOT_PROBED_OUTPUT
            ops.append(_check_op(new.place, spec, new.service_id, current, output))
        if old is not None and not moved:
            wanted = {c.check_id for c in new.checks}
            ops += [
                {"Check": {"Verb": "delete", "Check": {"Node": new.place, "CheckID": check_id}}}
                for check_id, _, _ in sorted(_triples(old))
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
                errors = self._call("PUT", "/v1/txn", txn_errors, body=ops, write=True)
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


def taken_in(chunk: list[str], answer: Any) -> set[str] | None:
    """Which names of ``chunk`` exist, from the answer to a read-only transaction of
    one ``Node get`` per name (in order); None when the answer cannot tell.

    A get fails only when its node does not exist, and Consul then lists every
    failed operation (``OpIndex``, ``node "x" doesn't exist``) and no results
    (HTTP 409); a name not listed exists, even when the token may not read it
    (Consul 1.8 leaves such a node out of ``Results`` but still answers the get).
    Any other error (e.g. ``Permission denied``, should a Consul vet gets against
    ``node:write``) makes the answer unusable."""
    if not isinstance(answer, dict):
        return None
    errors = answer.get("Errors") or []
    missing: set[int] = set()
    for error in errors:
        index = error.get("OpIndex") if isinstance(error, dict) else None
        if not isinstance(index, int) or not 0 <= index < len(chunk) or "doesn't exist" not in str(error.get("What", "")):
            return None
        missing.add(index)
    return {name for i, name in enumerate(chunk) if i not in missing}


_Batch = TypeVar("_Batch")
_Result = TypeVar("_Result")


#: Transactions built ahead of the one being sent (``_one_after_another``): enough
#: that building never waits for Consul while there is more to build, few enough that
#: at most a few hundred operations are held at once.
AHEAD = 4


def _one_after_another(
    batches: Iterable[_Batch], send: Callable[[_Batch], list[_Result]], should_stop: Callable[[], bool], ahead: int = AHEAD
) -> Iterator[_Result]:
    """``send(batch)`` for each batch, in order, yielding each batch's results in
    order. The sends run on one helper thread, one at a time (the first as soon as it
    is built), while this thread takes the next batches from ``batches`` (builds them) and
    queues them, up to ``ahead`` waiting; results are handed over as they come, and
    this thread waits for one only when ``ahead`` are queued or nothing is left to
    build. After a batch raised, or once ``should_stop()`` (asked just before each
    send), nothing more is sent, and the error is raised here in its turn. Leaving
    early (the caller stops iterating) waits for the batch being sent."""
    halted = threading.Event()

    def run(batch: _Batch) -> list[_Result] | None:
        if halted.is_set() or should_stop():
            halted.set()
            return None
        try:
            return send(batch)
        except BaseException:
            halted.set()  # set on the helper itself: the next queued batch sees it
            raise

    it = iter(batches)
    first = next(it, None)
    if first is None:
        return
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="consul-txn")
    try:
        # The first goes out as soon as it is built: the next is built meanwhile.
        queued: deque[Future[list[_Result] | None]] = deque([pool.submit(run, first)])
        upcoming = next(it, None)
        while upcoming is not None or queued:
            if upcoming is not None and len(queued) <= ahead:
                queued.append(pool.submit(run, upcoming))  # sent once those before it are done
                upcoming = next(it, None) if not halted.is_set() else None
                if not queued[0].done():
                    continue  # build the next one while Consul works
            results = queued.popleft().result()
            if results is None:
                return
            yield from results
    finally:
        halted.set()
        pool.shutdown(wait=True, cancel_futures=True)


def _quote(text: str) -> str:
    """A string literal of Consul's filter language."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _subject(item: Any) -> str:
    if isinstance(item, Action):
        return f"node {item.service.place} of jail {item.service.jail}"
    return f"check {item[0].check_id}"


def _batches(items: Iterable[tuple[Any, list[dict[str, Any]]]], limit: int) -> Iterator[list[tuple[Any, list[dict[str, Any]]]]]:
    """Pack items into batches of at most ``limit`` operations, never splitting one
    item's operations (an item with more than ``limit`` gets a batch of its own);
    each batch is made when asked for, from as many items as it takes."""
    current: list[tuple[Any, list[dict[str, Any]]]] = []
    size = 0
    for item, ops in items:
        if not ops:
            continue
        if current and size + len(ops) > limit:
            yield current
            current, size = [], 0
        current.append((item, ops))
        size += len(ops)
    if current:
        yield current


def _node_body(record: Record) -> dict[str, Any]:
    node_meta = record.value("node_meta")
    return {"Node": record.place, "Address": record.address, "Meta": dict(node_meta if isinstance(node_meta, tuple) else ())}


def _service_fields(record: Record) -> tuple[object, ...]:
    return (record.name, record.address, record.port, record.tags, record.meta, record.value("tagged_addresses"))


def _catalog_service(record: Record) -> dict[str, Any]:
    return {**service_body(record), "Service": record.name}


def _notes(spec: CheckSpec) -> str:
    return f"jailsyncd probe={spec.probe}"


def _triple(spec: CheckSpec) -> tuple[str, str, str]:
    """What Consul returns of a check: its ID, node or service check, its notes."""
    return (spec.check_id, "node" if spec.on_host else "service", _notes(spec))


def _probed_checks(address: str, checks: Sequence[tuple[str, str, str]]) -> tuple[CheckSpec, ...]:
    """The definitions of the checks among what the catalog returns of a node's
    checks (ID, node or service check, the notes ``_notes`` wrote), for a record read
    back. Their TTL is set by whoever probes them (``health.with_ttl``)."""
    specs = []
    for check_id, kind, notes in sorted(checks):
        probe = next((word.removeprefix("probe=") for word in notes.split() if word.startswith("probe=")), "")
        if probe:
            specs.append(CheckSpec(check_id, f"{probe} {address}", probe, on_host=kind == "node"))
    return tuple(specs)


def _triples(record: Record) -> frozenset[tuple[str, str, str]]:
    value = record.value("checks")
    return frozenset(c for c in value if isinstance(c, tuple)) if isinstance(value, frozenset) else frozenset()


def _check_op(node: str, spec: CheckSpec, service_id: str, status: str, output: str) -> dict[str, Any]:
    """A node check for what is about the jail itself (the ping: a dead jail's node,
    and every service on it, is critical), a service check for the rest."""
    check = {"Node": node, "CheckID": spec.check_id, "Name": spec.name, "Notes": _notes(spec), "Status": status, "Output": output[:MAX_OUTPUT]}
    if not spec.on_host:
        check["ServiceID"] = service_id
    return {"Check": {"Verb": "set", "Check": check}}


# -- catalog records: jailsyncd's services as external nodes ------------------------------


def node_name(template: str, *, fqdn: str, jname: str, host: str) -> str:
    """The catalog node name: the template filled in, each dot-separated label made
    DNS-safe, so ``<node>.node.consul`` resolves (``Redis_1.My.Domain`` becomes
    ``redis-1.my.domain``). A ``fqdn`` without any label (``host_hostname = "."``)
    names nothing and counts as unset: the jname, as when there is no host_hostname
    (an empty node name fails every transaction with "Must provide node")."""
    if not any(fqdn.split(".")):
        fqdn = jname
    text = template.format(fqdn=fqdn, jname=jname, host=host)
    return ".".join(dns_label(label) for label in text.split(".") if label)


def _fields(
    name: str, address: str, port: int, tags: frozenset[str], meta: tuple[tuple[str, str], ...], tagged: tuple[tuple[str, str], ...],
    checks: frozenset[tuple[str, str, str]], node: str, node_address: str, node_meta: tuple[tuple[str, str], ...],
) -> tuple[tuple[str, object], ...]:
    """A catalog record's compared fields, in the order differences are reported. The
    node's address is a field of its own: it is what ``<node>.node.consul`` answers,
    and it can be changed by hand apart from the service's."""
    return (
        ("name", name), ("address", address), ("port", port), ("tags", tags), ("meta", meta), ("tagged_addresses", tagged),
        ("checks", checks), ("node", node), ("node_address", node_address), ("node_meta", node_meta),
    )


def record_of(service: Service, node: str, catalog: CatalogSettings, *, owner: str, host: str) -> Record:
    """The catalog record of one jail service on its node ``node``."""
    return _record_of(service, node, catalog, owner, host, None)


def _record_of(service: Service, node: str, catalog: CatalogSettings, owner: str, host: str, share: Sharing | None) -> Record:
    """``record_of``, its fields shared through ``share`` when given (``records``)."""
    jail = service.jail
    meta = dict(service.meta)
    # In key order (the keys are these constants; a unit test checks the order), not
    # a dict built and sorted for every jail.
    node_meta = (
        (META_EMULATOR, meta.get(META_EMULATOR, "")),
        (META_HOST, host),
        (META_JNAME, jail),
        ("external-node", "true"),
        ("external-probe", "true" if catalog.external_probe else "false"),
        (META_OWNER, owner),
        (META_SERVICE_ID, service.service_id),
    )
    name, tags = (service.name, service.tags) if catalog.layout != "article" else ("jail", frozenset({catalog.host_tag, "jail"}))
    # Consul 1.8's /v1/txn drops a service's TaggedAddresses, so every address goes
    # into the meta value cbsd-addresses instead.
    addresses = ",".join(service.addresses)
    if len(addresses) <= MAX_META_VALUE and len(meta) < MAX_META_PAIRS:
        meta[META_ADDRESSES] = addresses
    # consul-esm pings the nodes with external-probe=true: no node check of ours then.
    checks = tuple(c for c in service.checks if not c.on_host) if catalog.external_probe else service.checks
    fields = _fields(
        name, service.address, service.port, tags, tuple(sorted(meta.items())), (), frozenset(_triple(c) for c in checks), node, service.address, node_meta
    )
    # Ownership as a read finds it: the service's meta, else the node's.
    owned_by, cbsd_host = meta.get(META_OWNER) or owner, meta.get(META_HOST) or host
    return Record(service.service_id, jail, share.fields(fields) if share is not None else fields, node, owned_by, cbsd_host, checks)


def records(desired: Desired, catalog: CatalogSettings, *, taken: Mapping[str, str] | None = None) -> Desired:
    """``desired`` with its catalog records: each service on an external node of its
    own (``catalog.node_name``); a node name two jails would share goes to the first
    jname in sort order, the other is skipped as ``conflict``. ``desired`` may be a
    part of the table (``desired.combine``): ``taken`` maps the node names of the
    parts before it (jnames sorting first) to their jails."""
    earlier = taken or {}
    nodes: dict[str, str] = {}  # node name -> jname, this part's
    out: list[Record] = []
    share = Sharing()
    conflicts: list[Skip] = []
    for service in desired.services:
        node = node_name(catalog.node_name, fqdn=service.fqdn or service.jail, jname=service.jail, host=desired.host)
        holder = nodes.get(node) or earlier.get(node)
        if holder is not None:
            conflicts.append(Skip(service.jail, "conflict", f"node name {node} is already used by jail {holder}"))
            continue
        nodes[node] = service.jail
        out.append(_record_of(service, node, catalog, desired.owner, desired.host, share))
    if not conflicts:
        return replace(desired, records=tuple(out))
    # In jname order among the others (the row without a jname last), as if found on the way.
    skipped = tuple(sorted((*desired.skipped, *conflicts), key=lambda k: (k.jail == NAMELESS, k.jail)))
    lost = {k.jail for k in conflicts}
    notes = tuple(n for n in desired.notes if not (n.jail in lost and n.kind == "check_ignored"))
    return replace(desired, records=tuple(out), skipped=skipped, notes=notes)


def record_from_catalog(dump: dict[str, Any], entry: dict[str, Any], checks: list[dict[str, Any]], *, share: Sharing | None = None) -> Record:
    """A catalog record from one of our nodes (as ``/v1/catalog/nodes`` lists it), one
    of its services and the node's checks; its fields shared through ``share`` when
    given (``ConsulCatalog.read``)."""
    sid = entry["ID"]
    mine = [c for c in checks if c.get("CheckID", "").startswith(sid + ":")]
    triples = frozenset((c["CheckID"], "service" if c.get("ServiceID") else "node", c.get("Notes", "")) for c in mine)
    meta = entry.get("Meta") or {}
    node_meta = dump.get("Meta") or {}
    tagged = entry.get("TaggedAddresses") or {}
    address = entry.get("Address", "")
    fields = _fields(
        entry.get("Service", ""), address, int(entry.get("Port") or 0), frozenset(entry.get("Tags") or ()), tuple(sorted(meta.items())),
        tuple(sorted((k, v.get("Address", "")) for k, v in tagged.items())), triples, dump["Node"], dump.get("Address", ""),
        tuple(sorted(node_meta.items())),
    )
    return Record(
        sid, meta.get(META_JNAME, sid.removeprefix(SERVICE_ID_PREFIX)), share.fields(fields) if share is not None else fields, place=dump["Node"],
        owner=meta.get(META_OWNER) or node_meta.get(META_OWNER, ""), cbsd_host=meta.get(META_HOST) or node_meta.get(META_HOST) or "",
        checks=_probed_checks(address, tuple(triples)),
    )


# -- what catalog mode watches (adapters.consul.watch) ----------------------------------


class CatalogWatch:
    """Catalog mode's ``watch.WatchQuery``: ``/v1/catalog/services`` filtered by our
    node meta (``jailsyncd-owner:<owner>``). Its index moves when a service of one of
    our nodes is registered, edited or removed, or one of our nodes is deregistered;
    the health rounds' check writes do not move it. The answer (names and tags)
    cannot show an edited port or address: the moved index is the change."""

    dc_scoped = True
    index_is_change = True
    requests = 0

    def query(self, owner: str) -> tuple[str, dict[str, str]]:
        if not owner:
            raise ConsulError("the Consul watch needs the owner identity (host.name, or CBSD's node name after a cycle)")
        return "/v1/catalog/services", {"node-meta": f"{META_OWNER}:{owner}"}

    def digest(self, body: str) -> str:
        return body

    def forget(self) -> None:
        """Nothing learnt from Consul to drop: the query depends on the owner only."""
