"""The one place that wires jailsyncd from its settings.

Used by ``cli`` (every command), by ``daemon`` (through the reconciler factory the
CLI hands it), by the benchmark and by tests. ``App`` is made once per process: it
holds the one long-lived Consul client (``adapters.consul.ConsulClient``, with the
token provider that re-reads ``consul.token_file`` when it changes), the stores of
the configured mode over it (one for the reconciler, one for the health loop, so
each counts its own requests), the CBSD reader, and, with health on, the health loop
and its prober. A reload makes new reconcilers over the same client: the settings a
reload may change never touch it (``consul`` changes need a restart).
"""

from __future__ import annotations

import gc
from typing import Callable

from jailsyncd import platform as platform_module
from jailsyncd.adapters.cbsd import CbsdSource
from jailsyncd.adapters.consul import ConsulAgent, ConsulCatalog, ConsulChangeFeed, ConsulClient, TokenProvider, connect, consul_answers
from jailsyncd.adapters.discovery import AddressDiscovery
from jailsyncd.adapters.probe import Prober
from jailsyncd.healthloop import HealthLoop
from jailsyncd.logs import get_logger, register_secret
from jailsyncd.reconcile import Reconciler, StartupWindow
from jailsyncd.settings import Settings


class App:
    """jailsyncd's parts for one process, built from ``settings``.

    The health loop is built on first use (``health_loop``), so that commands that
    never probe never open an ICMP socket."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.client = ConsulClient(settings.consul, TokenProvider(settings.consul, on_new=register_secret))
        #: The reconciler's store: the mode is chosen here, once.
        self.store: ConsulAgent | ConsulCatalog = connect(settings.consul, self.client)
        self.source = _source(settings)
        self.prober: Prober | None = None
        self._health: HealthLoop | None = None
        #: Consul's change feed (``run`` only, built by ``consul_watch``).
        self.watch: ConsulChangeFeed | None = None

    def health_loop(self) -> HealthLoop | None:
        """The health loop when health is on (built once; fails now, with
        ``ProbeUnavailable``, if ICMP cannot work here); None when it is off."""
        if self._health is None and self.settings.health.enabled:
            self._health = self._health_loop()
        return self._health

    def reconciler(
        self,
        settings: Settings | None = None,
        should_stop: Callable[[], bool] = lambda: False,
        *,
        quiet_noop: bool = False,
        health: bool = False,
        startup: StartupWindow | None = None,
        standalone: bool = True,
        watch: bool = False,
    ) -> Reconciler:
        """A reconciler over this process's parts; ``settings`` are the reloaded ones
        (``daemon``), by default those the app was built with. ``health``: with the
        health loop (when health is on); ``watch``: with the Consul watch (``run``,
        when ``sync.watch_consul``), so that cycles may reuse an unchanged read."""
        settings = settings or self.settings
        same = (settings.cbsd, settings.sync.discover_addresses) == (self.settings.cbsd, self.settings.sync.discover_addresses)
        source = self.source if same else _source(settings)
        discovery = (
            AddressDiscovery(settings.cbsd.workdir, settings.sync.dhcp_leases, platform_module.current()) if settings.sync.discover_addresses else None
        )
        return Reconciler(
            settings, source, self.store, should_stop=should_stop, quiet_noop=quiet_noop,
            health=self.health_loop() if health else None, startup=startup, standalone=standalone, discovery=discovery,
            watch=self.consul_watch() if watch and settings.sync.watch_consul else None,
        )

    def consul_answers(self, timeout: float) -> bool:
        """Whether Consul answers again (the daemon's backoff probe), over the one client."""
        return consul_answers(self.client, self.store.needs_leader, timeout)

    def consul_watch(self) -> ConsulChangeFeed:
        """Consul's change feed over the one client (``daemon``'s Consul-watch thread),
        blocking on what the mode's store says."""
        if self.watch is None:
            self.watch = ConsulChangeFeed(self.client, self.store.watch_query())
        return self.watch

    def close(self) -> None:
        self.client.close()

    def _health_loop(self) -> HealthLoop:
        settings = self.settings
        platform = platform_module.current()
        prober = self.prober = Prober(platform=platform)
        prober.check()
        default_rate = platform.default_rate_limit()  # FreeBSD: read net.inet.icmp.icmplim now
        # The health loop's own store over the same client: its writes are not counted
        # in a cycle's numbers.
        loop = HealthLoop(settings.health, prober, connect(settings.consul, self.client), default_rate=default_rate, advice=platform.raise_limit_hint)
        limit = platform.echo_limit()
        get_logger().info(
            "health_rate_limit",
            rate_limit=loop.rate,
            source="health.rate_limit" if settings.health.rate_limit is not None else "platform",
            kernel_limit=f"{limit.sysctl}={limit.limit}" if limit else None,
            # the most addresses a round fits in health.interval at this rate (None: no limit)
            fits_addresses=int((settings.health.interval - settings.health.timeout) * loop.rate / settings.health.count) if loop.rate else None,
        )
        return loop


def freeze_startup() -> None:
    """Take what the process holds after start-up out of the garbage collector's
    walks (``gc.freeze``), after one collection: the modules, settings, clients and
    caches loaded by then (some 60,000 objects) live as long as the process, and
    every full collection a cycle's allocations trigger walked all of them again.
    Called once by ``once`` and ``run`` before their first cycle (and by the
    benchmark, which builds its reconcilers as ``once`` does); at 5,000 jails it
    takes about 20 % off the CPU of a cold cycle (docs/performance.md). Nothing is
    turned off: what a cycle makes is collected as before."""
    gc.collect()
    gc.freeze()


def _source(settings: Settings) -> CbsdSource:
    """CBSD's reader; it reads the NICs' MACs only when addresses are discovered."""
    return CbsdSource(settings.cbsd.workdir, settings.cbsd.busy_timeout, read_macs=settings.sync.discover_addresses)
