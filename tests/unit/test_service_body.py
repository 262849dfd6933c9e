"""``transport.service_body`` (the service entry both modes write) says what the
record's own properties say, for records of both modes; pure, no Consul."""

from __future__ import annotations

from typing import Any

import pytest
from records import agent_record, catalog_record

from jailsyncd.adapters.consul.transport import service_body
from jailsyncd.model import Record, Service


def _by_properties(record: Record) -> dict[str, Any]:
    """The body as the record's properties give it (how it was built before)."""
    tagged = record.value("tagged_addresses")
    return {
        "ID": record.service_id, "Address": record.address, "Port": record.port, "Tags": sorted(record.tags), "Meta": dict(record.meta),
        "TaggedAddresses": {name: {"Address": addr, "Port": record.port} for name, addr in (tagged if isinstance(tagged, tuple) else ())},
        "EnableTagOverride": False,
    }


@pytest.mark.parametrize(
    "record",
    [
        agent_record("web1"),
        agent_record("web2", port=8080, tags=("a", "b", "c"), meta={"team": "x"}, addresses=("10.0.0.2", "fd00::2"), address="10.0.0.2"),
        agent_record("db1", tags=(), address=""),
        catalog_record("web1"),
        catalog_record("web3", port=443, tags=("z", "a"), probes=("ping", "tcp")),
        catalog_record("web1").with_values(port="not a number", tags=None, meta=None, address=None),
        Record("jailsyncd-bare", "bare", ()),
    ],
    ids=["agent", "agent with addresses", "agent bare", "catalog", "catalog with checks", "odd values", "no fields"],
)
def test_service_body_is_what_the_records_properties_say(record: Record) -> None:
    assert service_body(record) == _by_properties(record)


@pytest.mark.parametrize(
    "meta,service_id,jail",
    [
        ((("cbsd-jname", "web1"), ("external-source", "cbsd")), "jailsyncd-web1", "web1"),
        ((("cbsd-jname", "Web_1"),), "jailsyncd-web-1", "Web_1"),
        ((("external-source", "cbsd"),), "jailsyncd-db1", "db1"),
        ((), "other-id", "other-id"),
        ((("cbsd-jname", "first"), ("cbsd-jname", "last")), "jailsyncd-x", "last"),
        ((("cbsd-jname", ""),), "jailsyncd-x", ""),
    ],
)
def test_a_services_jail_is_its_jname_meta_else_its_id(meta: tuple, service_id: str, jail: str) -> None:
    svc = Service(service_id, "web", "10.0.0.1", 0, frozenset(), meta)
    assert svc.jail == jail == dict(meta).get("cbsd-jname", service_id.removeprefix("jailsyncd-"))
