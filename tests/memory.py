"""In-memory implementations of jailsyncd's own ports (``jailsyncd.ports``), for fast
tests of the loop: a CBSD reader, a Consul store that keeps services in a dict, a
check writer and a prober. Never Consul's HTTP API: these stand in for OUR protocols.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable, Iterable, Iterator, Mapping

from jailsyncd.errors import ConsulRejected, JailsyncdError
from jailsyncd.health import Probe, ProbeResult, RoundReport
from jailsyncd.model import META_HOST, META_OWNER, Action, CbsdState, Desired, Environment, Observed, Record, Service
from jailsyncd.ports import CheckWrite
from jailsyncd.settings import Settings


def jail(jname: str, n: int, address: str | None = None, *, running: bool = True) -> Environment:
    """A running jail of CBSD's ``jails`` table."""
    return Environment(jname, "jail", 1 if running else 0, n if running else 0, address or f"10.0.0.{n}", None, None)


class MemorySource:
    """CBSD as a value the test sets; ``fail`` makes the next reads raise it (at
    ``begin``, as the real reader's node DB read does)."""

    def __init__(self, *environments: Environment, nodename: str = "node1") -> None:
        self.state = CbsdState(nodename, tuple(environments))
        self.fail: JailsyncdError | None = None
        self.reads = 0

    def set(self, *environments: Environment) -> None:
        self.state = replace(self.state, environments=tuple(environments))

    def read(self) -> CbsdState:
        reading = self.begin()
        for _ in reading.parts(max(1, len(reading.listed))):
            pass
        return reading.state()

    def begin(self) -> "MemoryReading":
        self.reads += 1
        self._read = None
        if self.fail is not None:
            raise self.fail
        reading = MemoryReading(self, self.state)
        self._reading = reading
        return reading

    def unchanged(self) -> bool:
        return getattr(self, "_read", None) is self.state and self.fail is None

    def nodename(self) -> str:
        assert self.state.nodename is not None
        return self.state.nodename


class MemoryReading:
    """``MemorySource.begin()``'s reading (``ports.CbsdReading``) of the state set when
    it began: the environments in jname order, each group with the unreadable
    entries of its jails (entries naming no environment come with the last group)."""

    def __init__(self, source: MemorySource, state: CbsdState) -> None:
        self.nodename = state.nodename or ""
        self.listed = tuple(sorted(state.environments, key=lambda e: e.jname))
        self.nameless = state.nameless
        self._source = source
        self._state = state
        self._done = 0
        self._finished = False

    def parts(self, size: int) -> Iterator[tuple[tuple[Environment, ...], tuple[tuple[str, str], ...]]]:
        if size < 1:
            raise ValueError(f"part size must be at least 1, not {size}")
        listed = {e.jname for e in self.listed}
        leftover = {j for j, _ in self._state.unreadable} - listed
        if not self.listed and leftover and not self._finished:
            self._finished = True  # no environment to come with: a group of its own
            yield (), self._state.unreadable
        while self._done < len(self.listed):
            group = self.listed[self._done : self._done + size]
            self._done += len(group)
            names = {e.jname for e in group} | (leftover if self._done == len(self.listed) else set())
            yield group, tuple(u for u in self._state.unreadable if u[0] in names)

    def state(self) -> CbsdState:
        self._done = len(self.listed)
        self._finished = True
        if getattr(self._source, "_reading", None) is self:
            self._source._read = self._state  # what unchanged() compares, as after read()
            self._source._reading = None
        return self._state


def record(service: Service) -> Record:
    """A service as the memory store's mode records it: the common fields, and each
    check by its ID and probe."""
    checks = frozenset((c.check_id, c.probe, "") for c in service.checks)
    fields = (("name", service.name), ("address", service.address), ("port", service.port), ("tags", service.tags), ("meta", service.meta), ("checks", checks))
    meta = dict(service.meta)
    return Record(service.service_id, service.jail, fields, owner=meta.get(META_OWNER, ""), cbsd_host=meta.get(META_HOST, ""), checks=service.checks)


class MemoryStore:
    """Consul's services as a dict of records. Records every action it applied, in
    order; ``refuse`` holds service IDs whose writes are rejected (that action alone)."""

    has_heartbeat = True
    applies_read_statuses = False

    def __init__(self) -> None:
        self.services: dict[str, Record] = {}
        self.applied: list[tuple[str, str]] = []
        self.refuse: set[str] = set()
        #: How many times ``register_new`` was called.
        self.streamed = 0
        self.requests = 0
        self.writes = 0
        self.bytes_read = 0

    @staticmethod
    def records(desired: Desired, settings: Settings, *, taken: Mapping[str, str] | None = None) -> Desired:
        return replace(desired, records=tuple(record(s) for s in desired.services))

    def read(self, owner: str) -> Observed:
        self.requests += 1
        owned = tuple(s for s in sorted(self.services.values(), key=lambda s: s.service_id) if s.owner == owner)
        return Observed(owned)

    @staticmethod
    def settle(desired: Desired, observed: Observed, *, standalone: bool, settings: Settings) -> tuple[Desired, bool]:
        return desired, False

    def places_taken(self, places: frozenset[str]) -> frozenset[str]:
        return frozenset()

    def apply(self, actions: list[Action], should_stop: Callable[[], bool]) -> Iterator[tuple[Action, JailsyncdError | None]]:
        for action in actions:
            if should_stop():
                return
            self.requests += 1
            sid = action.service.service_id
            if sid in self.refuse:
                yield action, ConsulRejected(f"{sid}: refused")
                continue
            self.writes += 1
            self.applied.append((action.kind, sid))
            if action.kind == "deregister":
                self.services.pop(sid, None)
            else:
                self.services[sid] = replace(action.service, checks=())
            yield action, None

    def register_new(self, actions: Iterable[Action], should_stop: Callable[[], bool]) -> Iterator[tuple[Action, JailsyncdError | None]]:
        """``apply``, taking each action as it is made (as catalog mode does)."""
        self.streamed += 1
        for action in actions:
            yield from self.apply([action], should_stop)


class MemoryChecks:
    """A check writer: records the writes; ``refuse`` holds check IDs it rejects."""

    has_heartbeat = True
    checks_expire = True

    def __init__(self, refuse: set[str] | None = None) -> None:
        self.written: list[tuple[str, str]] = []
        self.refuse = refuse or set()
        self.heartbeats = 0

    def write_checks(self, writes: list[CheckWrite]) -> Iterator[tuple[CheckWrite, JailsyncdError | None]]:
        for write in writes:
            if write[0].check_id in self.refuse:
                yield write, ConsulRejected(f"{write[0].check_id}: refused")
                continue
            self.written.append((write[0].check_id, write[1]))
            yield write, None

    def heartbeat(self, output: str) -> None:
        self.heartbeats += 1


class MemoryProber:
    """Answers every probe with ``up`` (a set of addresses that answer)."""

    def __init__(self, up: set[str]) -> None:
        self.up = up
        self.rounds = 0

    def run_round(self, probes: list[Probe], *, count: int, timeout: float, rate: float | None = None) -> RoundReport:
        self.rounds += 1
        return RoundReport(results={p.key: ProbeResult(p.address in self.up, "up" if p.address in self.up else "down") for p in probes})


class MemoryWatch:
    """Consul's change feed as the reconciler sees it (``ports.ConsulWatch``): the test
    moves ``generation`` when "Consul changed" and sets ``healthy``."""

    def __init__(self) -> None:
        self.generation = 0
        self.healthy = True

    def wait_change(self, owner: str, timeout: float | None = None) -> bool:
        return False
