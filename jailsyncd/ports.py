"""What the loop needs from the outside world: small protocols, one per need.

``reconcile`` and ``healthloop`` see CBSD, Consul and the probes only through these
(an import-linter contract in pyproject.toml keeps the adapters out of them). Each is
implemented once per outside system:

- ``CbsdReader``: ``adapters.cbsd.CbsdSource`` (CBSD's SQLite files, read-only; its
  ``begin()`` gives a ``CbsdReading``, ``adapters.cbsd.CbsdReading``);
- ``ConsulStore`` and ``CheckWriter``: ``adapters.consul.ConsulAgent`` or
  ``ConsulCatalog`` (the mode chosen once at start-up, ``app``);
- ``Prober``: ``adapters.probe.Prober`` (ICMP, TCP, HTTP);
- ``ConsulWatch``: ``adapters.consul.ConsulChangeFeed`` (one blocking query per call);
- ``AddressFinder``: ``adapters.discovery.AddressDiscovery`` (DHCP leases, neighbours);

and in memory by the unit tests of the loop (``tests/unit/memory.py``). ``app`` wires
the real ones from the settings.
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator, Mapping, Protocol

from jailsyncd.errors import JailsyncdError
from jailsyncd.health import Probe, RoundReport, Target
from jailsyncd.leases import Discovered
from jailsyncd.leases import Target as AddressTarget
from jailsyncd.model import Action, CbsdState, Desired, Environment, Observed
from jailsyncd.settings import Settings

#: One check status to write: the check, its status, its output.
CheckWrite = tuple[Target, str, str]


class CbsdReading(Protocol):
    """One read of CBSD under way (``CbsdReader.begin``), handing the environments
    over group by group as their own DBs are read."""

    #: CBSD's node name, read by ``begin`` as ``read`` reads it.
    nodename: str
    #: Every named ``jails`` row as an environment, in jname order, before what its
    #: own DB adds (a VM's settings, NIC MACs) is merged.
    listed: tuple[Environment, ...]
    #: Rows of ``jails`` without a jname (``CbsdState.nameless``).
    nameless: int

    def parts(self, size: int) -> Iterator[tuple[tuple[Environment, ...], tuple[tuple[str, str], ...]]]:
        """The environments not handed over yet, complete (as ``read`` gives them), in
        jname order and groups of at most ``size``, each with the ``(jname, error)``
        entries of its environments whose own data could not be read; each group's
        data is read as it is asked for."""
        ...

    def state(self) -> CbsdState:
        """The complete read, exactly what ``read`` returns (reading whatever ``parts``
        has not handed over yet); ``unchanged`` then answers as after ``read``."""
        ...


class CbsdReader(Protocol):
    """CBSD's state on this host."""

    def read(self) -> CbsdState:
        """A complete read; a failed or partial one raises ``SourceError`` (never "no jails")."""
        ...

    def begin(self) -> CbsdReading:
        """A read handed over in parts: the node's own data (node DB, node name) is
        read now, and a failure raises here as ``read`` would, before anything is
        handed over."""
        ...

    def nodename(self) -> str:
        """CBSD's node name, read now; raises ``SourceError`` when it cannot be read."""
        ...

    def unchanged(self) -> bool:
        """Whether a read now would return what the last complete read did (cheap: no
        DB is opened); False when it cannot tell."""
        ...


class ConsulStore(Protocol):
    """Consul as a reconcile cycle sees it, in the mode's records: the desired
    services as records, what this host owns, and the writes.

    ``requests``, ``writes`` and ``bytes_read`` (answers' bodies) count what this store
    sent and received since it was made (the reconciler reports the difference over
    one cycle)."""

    requests: int
    writes: int
    bytes_read: int
    #: Whether the mode has jailsyncd's heartbeat service (agent mode).
    has_heartbeat: bool
    #: Whether ``apply`` writes a changed check's definition with the status of the
    #: store's last ``read`` (catalog mode), so that read must be fresh when checks are on.
    applies_read_statuses: bool

    def records(self, desired: Desired, settings: Settings, *, taken: Mapping[str, str] | None = None) -> Desired:
        """``desired`` with its records in this mode (``Desired.records``; pure), and
        the mode's own skips. ``desired`` may be a part of the table
        (``desired.combine``): ``taken`` maps the places the parts before it gave
        to their jails."""
        ...

    def read(self, owner: str) -> Observed:
        """What ``owner`` holds, as records (``places_taken`` tells which other
        places are someone else's)."""
        ...

    def places_taken(self, places: frozenset[str]) -> frozenset[str]:
        """Which of ``places`` exist and are not ours (``Observed.foreign_places``):
        asked after each read for the places the cycle wants that no record of ours
        holds, so that a clash is a ``conflict`` before the write."""
        ...

    def settle(self, desired: Desired, observed: Observed, *, standalone: bool, settings: Settings) -> tuple[Desired, bool]:
        """The records made final with what only Consul's answers tell (agent mode:
        the token in use; for ``once``/``plan`` with health on, a running daemon's
        heartbeat), and whether a daemon runs on this host."""
        ...

    def apply(self, actions: list[Action], should_stop: Callable[[], bool]) -> Iterator[tuple[Action, JailsyncdError | None]]:
        """Apply in order, yielding each action with None (done) or the error that
        rejected that action alone; stops early when ``should_stop()``; raises on
        errors that would fail every other action too (unreachable, 403...)."""
        ...

    def register_new(self, actions: Iterable[Action], should_stop: Callable[[], bool]) -> Iterator[tuple[Action, JailsyncdError | None]]:
        """``apply`` for registrations of records Consul holds nothing of for this
        host (no owned service ID or place), taken from ``actions`` as they are made:
        the mode may send some while the caller is still making the next."""
        ...


class CheckWriter(Protocol):
    """Where health rounds write check statuses (the mode's own kind of check)."""

    #: Whether the mode has jailsyncd's heartbeat service (agent mode).
    has_heartbeat: bool
    #: Whether the statuses written expire by themselves (agent mode's TTL checks);
    #: catalog checks keep the last status written, even after jailsyncd stopped.
    checks_expire: bool

    def write_checks(self, writes: list[CheckWrite]) -> Iterator[tuple[CheckWrite, JailsyncdError | None]]:
        """Each write with None (written) or the error that refused that check alone;
        errors that would fail every write (unreachable, token refused) are raised."""
        ...

    def heartbeat(self, output: str) -> None:
        """Set jailsyncd's heartbeat check passing (nothing where the mode has none)."""
        ...


class ConsulWatch(Protocol):
    """Consul's change feed (``daemon``'s Consul-watch thread calls ``wait_change``;
    the reconciler reads ``generation`` and ``healthy``)."""

    #: Moves each time ``wait_change`` reports a change.
    generation: int
    #: The last ``wait_change`` got an answer (False before the first one, and after a failure).
    healthy: bool

    def wait_change(self, owner: str, timeout: float | None = None) -> bool:
        """Block until Consul answers or ``timeout`` passes; True when what ``owner``
        holds may have changed since the last answer. Raises ``ConsulError`` when
        Consul cannot answer; never sleeps (backoff and rate limit are the caller's)."""
        ...


class AddressFinding(Protocol):
    """One cycle's address discovery, asked part by part (``AddressFinder.session``)."""

    def discover(self, wanted: tuple[AddressTarget, ...]) -> dict[str, Discovered]: ...

    def finish(self) -> None: ...


class AddressFinder(Protocol):
    """Addresses of environments CBSD gives none (``sync.discover_addresses``)."""

    def discover(self, wanted: tuple[AddressTarget, ...], now: float) -> dict[str, Discovered]: ...

    def session(self, now: float) -> AddressFinding:
        """The same, asked in parts: together they find what one ``discover`` finds."""
        ...


class Prober(Protocol):
    """Runs one round of probes."""

    def run_round(self, probes: list[Probe], *, count: int, timeout: float, rate: float | None = None) -> RoundReport: ...
