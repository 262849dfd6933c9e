"""Records for the unit tests of ``plan``, the loop and the output, made by the real
mode modules (``adapters/consul/agent.py``, ``catalog.py``) from core ``Service``
values: pure functions, no Consul."""

from __future__ import annotations

from jailsyncd.adapters.consul import agent, catalog
from jailsyncd.health import jail_checks
from jailsyncd.model import Record, Service
from jailsyncd.settings import CatalogSettings

OWNER = "node1"


def service(
    jail: str = "web1",
    *,
    name: str | None = None,
    address: str = "10.0.0.1",
    port: int = 0,
    tags: tuple[str, ...] | frozenset[str] = ("jail",),
    meta: dict[str, str] | tuple[tuple[str, str], ...] = (),
    addresses: tuple[str, ...] | None = None,
    jname_meta: bool = True,
    probes: tuple[str, ...] | None = None,
    ttl: float = 3600.0,
) -> Service:
    """A jail's core service: our owner and source in the meta (``cbsd-jname`` unless
    ``jname_meta`` is False), checks when ``probes`` is given (the ping always)."""
    pairs = {"external-source": "cbsd", "jailsyncd-owner": OWNER, **dict(meta)}
    if jname_meta:
        pairs.setdefault("cbsd-jname", jail)
    sid = f"jailsyncd-{jail}"
    return Service(
        service_id=sid,
        name=name or jail,
        address=address,
        port=port,
        tags=frozenset(tags),
        meta=tuple(sorted(pairs.items())),
        addresses=addresses if addresses is not None else (address,),
        checks=jail_checks(sid, address, probes, ttl) if probes is not None else (),
    )


def agent_record(jail: str = "web1", **kw: object) -> Record:
    """``service(jail, **kw)`` as agent mode records it."""
    return agent.record_of(service(jail, **kw))  # type: ignore[arg-type]


def catalog_record(jail: str = "web1", node: str | None = None, *, settings: CatalogSettings | None = None, host: str = "node1", **kw: object) -> Record:
    """``service(jail, **kw)`` as catalog mode records it, on node ``node`` (default
    ``<jail>.example``)."""
    svc = service(jail, **kw)  # type: ignore[arg-type]
    return catalog.record_of(svc, node or f"{jail}.example", settings or CatalogSettings(), owner=OWNER, host=host)
