"""Values passed between the layers: what CBSD holds, what Consul should hold, the plan.

All are frozen dataclasses with no behaviour beyond small derived views. Built by
``adapters.cbsd`` (``Environment``, ``CbsdState``), ``desired`` (``Service``, ``Skip``,
``Desired``: in the project's own terms), the Consul mode modules (``Record``: an
entry in the mode's shape; ``Observed``) and ``plan`` (``Plan``).
No I/O, no third-party imports.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

#: Every service ID jailsyncd registers starts with this. It is half of the ownership
#: test; the other half is ``META_OWNER`` equal to this host's name.
SERVICE_ID_PREFIX = "jailsyncd-"
META_SOURCE = "external-source"
META_SOURCE_VALUE = "cbsd"
META_OWNER = "jailsyncd-owner"
META_JNAME = "cbsd-jname"
META_HOST = "cbsd-host"
META_EMULATOR = "cbsd-emulator"
META_FQDN = "cbsd-fqdn"
#: The AccessorID (public, not the secret) of the token that registered a service.
META_TOKEN = "jailsyncd-token-accessor"
#: Where a discovered address came from (``leases.SOURCES``); absent when CBSD's
#: ``ip4_addr`` gave the address.
META_ADDRESS_SOURCE = "cbsd-address-source"
#: Catalog mode: every address of the jail (Consul 1.8's ``/v1/txn`` drops a
#: service's ``TaggedAddresses``).
META_ADDRESSES = "cbsd-addresses"
#: Meta keys jailsyncd itself sets: the CBSD ``tags`` column cannot override them (an
#: item naming one is dropped with a note), and a ``[[rule]]`` naming one is refused.
RESERVED_META = frozenset(
    {META_SOURCE, META_OWNER, META_JNAME, META_HOST, META_EMULATOR, META_FQDN, META_TOKEN, META_ADDRESS_SOURCE, META_ADDRESSES}
)


@dataclass(frozen=True)
class Environment:
    """One row of CBSD's ``jails`` table (merged with the per-VM DB for bhyve, xen, qemu).

    Text values are stripped; CBSD's spellings of "unset" (``'0'``, ``''``, NULL,
    ``(null)``) are already ``None`` here.
    """

    jname: str
    emulator: str
    status: int
    jid: int
    ip4_addr: str | None
    host_hostname: str | None
    tags: str | None
    #: CBSD starts it at boot (``astart=1``; for VMs from the node DB's ``bhyve`` (``xen``...)
    #: table, which ``bset`` keeps in step with the per-VM ``settings``).
    astart: bool = False
    #: A VNET jail (``vnet=1``): it has NICs of its own (``jailnic``).
    vnet: bool = False
    #: The MACs of its NICs in ``nic_order`` (``bhyvenic``/``xennic``/``qemunic``/``jailnic``, normalised
    #: ``58:9c:fc:00:00:01``), read only for environments that need address discovery.
    macs: tuple[str, ...] = ()

    @property
    def kind(self) -> str:
        """The kind used as a Consul tag: cross-arch ``qemu-*-static`` jails are jails."""
        if self.emulator.startswith("qemu-") and self.emulator.endswith("-static"):
            return "jail"
        return self.emulator

    @property
    def running(self) -> bool:
        """Whether CBSD says it runs here: slaves (2) and maintenance (3) never do.

        Jails need ``status=1`` and a kernel jail id; CBSD never sets ``status=1`` for
        VMs, whose ``jid`` is the hypervisor's PID.
        """
        if self.status in (2, 3) or self.jid <= 0:
            return False
        if self.kind == "jail":
            return self.status == 1
        return True

    @property
    def awaiting_autostart(self) -> bool:
        """Whether CBSD will start it at boot and it is not running yet: ``astart=1``
        and off (status 0; slaves and maintenance never start here)."""
        return self.astart and self.status not in (2, 3) and not self.running


@dataclass(frozen=True)
class CbsdState:
    """A complete read of one CBSD node DB.

    ``unreadable`` maps a jname to the reason its own data (a per-VM DB) could not be
    read; such environments are neither registered nor deregistered this cycle.
    """

    nodename: str | None
    environments: tuple[Environment, ...]
    unreadable: tuple[tuple[str, str], ...] = ()
    #: Rows of ``jails`` whose ``jname`` (the primary key) is NULL or empty: not an
    #: environment anything can manage, so never registered; reported as a skip.
    nameless: int = 0


#: The ID of jailsyncd's own service, which carries the heartbeat. A jname never
#: contains a dot, so no jail's ``jailsyncd-<jname>`` can ever equal it.
SELF_SERVICE_ID = "jailsyncd.heartbeat"
SELF_SERVICE_NAME = "jailsyncd"
SELF_CHECK_ID = "jailsyncd.heartbeat:ttl"


@dataclass(frozen=True)
class CheckSpec:
    """A check jailsyncd keeps on a service, in its own terms: what is probed and how
    long a written status holds. How it is written (a TTL check and its notes, a node
    or service check) is the mode's business (``adapters/consul/agent.py``,
    ``catalog.py``).

    ``probe`` is ``ping``, ``tcp`` or ``http:/path`` (``heartbeat`` for agent mode's
    own check, which is never probed); ``on_host`` says the check is about the
    environment itself (the ping), not about its service (TCP, HTTP).
    """

    check_id: str
    name: str
    probe: str
    ttl: float = 0.0
    on_host: bool = False


@dataclass(frozen=True)
class Service:
    """One environment's service as jailsyncd wants it in Consul, in the project's own
    terms (``desired.build_desired``); each mode turns it into its records.

    ``address`` is the one to publish; ``addresses`` every usable address of the
    environment (IPv4 ones first, each family in column order); ``fqdn`` its
    ``host_hostname`` ('' when unset). ``meta`` is a sorted tuple of pairs so that
    values are hashable and compare by content.
    """

    service_id: str
    name: str
    address: str
    port: int
    tags: frozenset[str]
    meta: tuple[tuple[str, str], ...]
    addresses: tuple[str, ...] = ()
    fqdn: str = ""
    checks: tuple[CheckSpec, ...] = ()

    @property
    def jail(self) -> str:
        """The CBSD jname this service stands for."""
        for key, value in reversed(self.meta):  # the last pair wins, as in dict(self.meta)
            if key == META_JNAME:
                return value
        return self.service_id.removeprefix(SERVICE_ID_PREFIX)


@dataclass(frozen=True)
class Record:
    """One of this host's entries in Consul, in the shape the mode writes and reads
    back: what ``plan`` diffs, desired (the mode's ``records``) or observed (its
    ``read``). Built only by the mode modules; the core reads it by field name.

    ``fields`` are what is compared, named by the mode, in the order differences are
    reported (``name``, ``address``, ``port``, ``tags`` (a frozenset), ``meta`` (sorted
    pairs) and ``checks`` (a frozenset of what Consul returns of each check) in every
    mode, plus the mode's own). ``place`` is where the mode keeps the entry besides
    its service ID ('' when nowhere: catalog mode's node name): a desired record whose
    place exists in Consul without being this host's is a conflict. ``owner`` and
    ``cbsd_host`` are the ownership marks the mode found or wrote. ``checks`` are the
    check definitions (desired side; observed: rebuilt from what Consul returns).
    """

    service_id: str
    jail: str
    fields: tuple[tuple[str, object], ...]
    place: str = ""
    owner: str = ""
    cbsd_host: str = ""
    checks: tuple[CheckSpec, ...] = field(default=(), compare=False)

    def value(self, name: str) -> object:
        """The value of one of ``fields`` (None when the mode has no such field)."""
        for key, value in self.fields:
            if key == name:
                return value
        return None

    def with_values(self, **values: object) -> Record:
        """A copy with the values of some of ``fields`` replaced (the ownership marks
        stay as they are)."""
        unknown = set(values) - {key for key, _ in self.fields}
        if unknown:
            raise KeyError(f"no such field: {', '.join(sorted(unknown))}")
        return replace(self, fields=tuple((key, values[key] if key in values else value) for key, value in self.fields))

    @property
    def name(self) -> str:
        return str(self.value("name") or "")

    @property
    def address(self) -> str:
        return str(self.value("address") or "")

    @property
    def port(self) -> int:
        value = self.value("port")
        return value if isinstance(value, int) else 0

    @property
    def tags(self) -> frozenset[str]:
        value = self.value("tags")
        return value if isinstance(value, frozenset) else frozenset()

    @property
    def meta(self) -> tuple[tuple[str, str], ...]:
        value = self.value("meta")
        return value if isinstance(value, tuple) else ()

    @property
    def check_ids(self) -> frozenset[str]:
        """The IDs of the checks Consul holds (or should hold) for this entry."""
        value = self.value("checks")
        return frozenset(item[0] for item in value if isinstance(item, tuple)) if isinstance(value, frozenset) else frozenset()

    @property
    def is_self(self) -> bool:
        """jailsyncd's own heartbeat service: not a jail (never counted or reported as one)."""
        return self.service_id == SELF_SERVICE_ID


@dataclass(frozen=True)
class Skip:
    """An environment not registered, or a change not made, and why.

    ``reason`` is a stable snake_case word (``unaddressable``, ``opted_out``,
    ``source_error``, ``conflict``, ``refused``); ``detail`` is for people.
    """

    jail: str
    reason: str
    detail: str


@dataclass(frozen=True)
class Note:
    """Something an admin should know that did not stop registration (e.g. a name
    collision, or a ``tags`` item that was ignored)."""

    jail: str
    kind: str
    detail: str


@dataclass(frozen=True)
class Desired:
    """The complete desired state for this host, from ``desired.build_desired``.

    ``protected`` lists jnames whose state is unknown this cycle (their per-VM DB could
    not be read): ``plan`` neither updates nor deregisters their services.
    ``host`` is the CBSD node name written into ``cbsd-host`` ('' when unknown);
    ``owner`` the owner identity written with every entry; ``empty_source`` says
    that CBSD's ``jails`` table had no row at all.

    ``records`` are ``services`` in the mode's records (its ``records``, which may
    also add skips of its own): what ``plan`` compares with Consul.
    """

    services: tuple[Service, ...]
    skipped: tuple[Skip, ...] = ()
    notes: tuple[Note, ...] = ()
    protected: frozenset[str] = frozenset()
    host: str = ""
    empty_source: bool = False
    owner: str = ""
    records: tuple[Record, ...] = ()


@dataclass(frozen=True)
class Confirmation:
    """What ``plan`` needs to confirm a deregistration burst (``sync.confirm_after``):
    ``previous``, the service IDs of the burst an earlier read of this ``run`` planned
    (None: none), and ``age``, the seconds since the first read that planned it (or
    one that differed from it by at most ``max_deregistrations``). ``after`` 0 turns
    confirmation off. ``recent``: deregistrations this ``run`` applied without a
    confirmation within the last ``sync.interval``; they count towards the limit, so
    that a burst spread over several event-driven cycles is still a burst. Built by
    ``reconcile`` from ``Pending`` and its log of deregistrations: the clock stays
    there."""

    after: float
    previous: frozenset[str] | None = None
    age: float = 0.0
    recent: int = 0


@dataclass(frozen=True)
class Pending:
    """A deregistration burst waiting for its confirming read: its service IDs and the
    monotonic time it was first planned (``plan.track_burst``)."""

    ids: frozenset[str]
    since: float


@dataclass(frozen=True)
class Startup:
    """Where ``run`` is in its start-up grace (``sync.startup_grace``), as ``plan``
    needs it. Built outside the core (``reconcile.StartupWindow``): the clock stays there.

    ``autostart_stopped``: jnames CBSD will start at boot that are not running now.
    ``seen_running``: jnames CBSD has shown running at any read since ``run`` started.
    ``until``: when the grace ends (UTC, ISO 8601), for logs and ``plan`` only.
    """

    elapsed: float
    grace: float
    autostart_stopped: frozenset[str] = frozenset()
    seen_running: frozenset[str] = frozenset()
    until: str = ""


@dataclass(frozen=True)
class Observed:
    """What Consul holds that matters to this host, from the Consul adapter.

    ``owned``: services with our ID prefix and our owner. ``foreign_ids``: IDs with our
    prefix but another (or no) owner; jailsyncd must never write to them.
    """

    owned: tuple[Record, ...]
    foreign_ids: frozenset[str] = frozenset()
    #: Places (``Record.place``: catalog mode's node names) this cycle wants that
    #: exist and are not ours (agents' nodes, other hosts' jails, anything without our
    #: owner): never written to.
    foreign_places: frozenset[str] = frozenset()
    #: Status and output of every check of an owned service, by check ID.
    check_status: tuple[tuple[str, str, str], ...] = ()
    #: The AccessorID (public) of the token in use, when the mode asked ('' otherwise).
    token_accessor: str = ""


@dataclass(frozen=True)
class Update:
    """A service to re-register, with the fields that differ from what Consul holds."""

    old: Record
    new: Record
    fields: tuple[str, ...]


@dataclass(frozen=True)
class Action:
    """One change to apply: ``kind`` is register, update or deregister; ``old`` is what
    Consul held (update, deregister); ``statuses`` the initial status of new checks."""

    kind: str
    service: Record
    old: Record | None = None
    statuses: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Plan:
    """What to change in Consul so that it matches ``Desired``.

    ``refused`` holds deregistrations held back by a safety rail (more than
    ``max_deregistrations``, or an empty ``jails`` table), ``refused_why`` says which;
    ``held`` those held back by the start-up grace until ``held_until``; neither is
    in ``deregister``. ``collisions`` holds entries carrying this host's owner but
    another CBSD node name: never written, never deregistered.
    """

    register: tuple[Record, ...] = ()
    update: tuple[Update, ...] = ()
    deregister: tuple[Record, ...] = ()
    skipped: tuple[Skip, ...] = ()
    refused: tuple[Record, ...] = ()
    notes: tuple[Note, ...] = field(default=())
    held: tuple[Record, ...] = ()
    held_until: str = ""
    refused_why: str = ""
    collisions: tuple[Record, ...] = ()
    #: Deregistrations above ``max_deregistrations`` waiting for a confirming read,
    #: due in ``confirm_in`` seconds (``run`` asks for a cycle then).
    confirming: tuple[Record, ...] = ()
    confirm_in: float = 0.0
    #: The service IDs of this plan's deregistration burst (more than
    #: ``max_deregistrations``; confirmed, waiting or refused), for ``track_burst``.
    burst: frozenset[str] = frozenset()

    @property
    def writes(self) -> int:
        """How many Consul writes applying this plan costs."""
        return len(self.register) + len(self.update) + len(self.deregister)
