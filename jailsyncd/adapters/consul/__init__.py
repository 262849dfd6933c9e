"""Read and write what this host owns in Consul, one module per concern:

- ``transport``: the one HTTP client per process, the token provider, the deadline,
  the errors (the only module that imports python-consul2);
- ``agent``: agent mode (``ConsulAgent``): its records (tagged addresses, TTL and
  alias checks), the heartbeat service, the token meta, its ACL needs, what its
  Consul watch blocks on;
- ``catalog``: catalog mode (``ConsulCatalog``), one external node per jail: its
  records (nodes, node meta, node and service checks), its ACL needs, what its
  Consul watch blocks on;
- ``watch``: the change feed (``ConsulChangeFeed``), one blocking query per call on
  what the mode's ``watch_query`` names, with the hygiene both modes share.

``connect`` chooses the mode's store, once, at start-up (``app``).
"""

from __future__ import annotations

from jailsyncd.adapters.consul.agent import ConsulAgent, record_from_consul, service_payload
from jailsyncd.adapters.consul.catalog import MAX_TXN_OPS, NOT_PROBED_OUTPUT, ConsulCatalog, record_from_catalog
from jailsyncd.adapters.consul.watch import ConsulChangeFeed
from jailsyncd.adapters.consul.transport import JSON, MAX_OUTPUT, ConsulClient, StoreBase, TokenProvider, rejects_payload
from jailsyncd.errors import JailsyncdError
from jailsyncd.settings import ConsulSettings

#: Kept under its former name (tests of which answers fail one action).
_rejects_payload = rejects_payload

__all__ = [
    "MAX_OUTPUT", "MAX_TXN_OPS", "NOT_PROBED_OUTPUT", "ConsulAgent", "ConsulCatalog", "ConsulChangeFeed", "ConsulClient", "StoreBase", "TokenProvider",
    "connect", "consul_answers", "rejects_payload", "record_from_catalog", "record_from_consul", "service_payload",
]


def consul_answers(client: ConsulClient, needs_leader: bool, timeout: float = 1.0) -> bool:
    """Whether Consul answers again (``daemon``'s backoff probe, through ``app``): one
    ``GET /v1/status/leader`` over the process's client, bounded by ``timeout``. When
    the mode ``needs_leader`` (catalog mode: reads and writes go to the servers) the
    answer must name one; agent mode needs only the local agent. False on any error."""
    try:
        leader = client.call("GET", "/v1/status/leader", JSON, timeout=min(client.timeout, timeout))
    except JailsyncdError:
        return False
    return not needs_leader or bool(leader)


def connect(settings: ConsulSettings, client: ConsulClient | None = None) -> ConsulAgent | ConsulCatalog:
    """The store for the configured mode, over ``client`` (the process's one client;
    without one, the store builds its own and closes it in ``close``)."""
    over: ConsulClient | ConsulSettings = client if client is not None else settings
    return ConsulCatalog(over) if settings.mode == "catalog" else ConsulAgent(over)
