"""``summary.drift_found`` and ``new_drift``: ``jailsyncd_drift_total`` counts drift
when it appears, for every kind, not in every cycle that still sees it."""

from __future__ import annotations

from records import agent_record

from jailsyncd.model import Plan, Record, Skip, Update
from jailsyncd.summary import drift_found, new_drift


def svc(jail: str, address: str = "127.0.0.2") -> Record:
    return agent_record(jail, address=address)


PLAN = Plan(
    register=(svc("vm1"),),
    update=(Update(svc("web1"), svc("web1", "127.0.0.9"), ("address",)),),
    deregister=(svc("gone"),),
    refused=(svc("web2"),),
    skipped=(
        Skip("dhcp1", "unaddressable", "DHCP"),
        Skip("smtp", "conflict", "taken"),
        Skip("vm9", "source_error", "per-VM DB unreadable"),
        Skip("off", "opted_out", "consul=off"),
        Skip("web2", "refused", "rail"),
    ),
)


def test_every_kind_is_a_key_but_choices() -> None:
    assert drift_found(PLAN) == {
        ("missing", "jailsyncd-vm1", ""),
        ("changed", "jailsyncd-web1", "address"),
        ("orphan", "jailsyncd-gone", ""),
        ("refused", "jailsyncd-web2", ""),
        ("unaddressable", "dhcp1", ""),
        ("conflict", "smtp", ""),
        ("source_error", "vm9", ""),
    }


def test_steady_drift_counts_once() -> None:
    first = drift_found(PLAN)
    assert new_drift(frozenset(), first) == {
        "missing": 1, "changed": 1, "orphan": 1, "refused": 1, "unaddressable": 1, "conflict": 1, "source_error": 1,
    }
    assert new_drift(first, drift_found(PLAN)) == {}


def test_drift_that_goes_and_comes_back_counts_again() -> None:
    one = drift_found(Plan(skipped=(Skip("dhcp1", "unaddressable", "DHCP"),)))
    none = drift_found(Plan())
    assert new_drift(one, none) == {}
    assert new_drift(none, one) == {"unaddressable": 1}
    # Another field changing on the same service is another drift.
    a = drift_found(Plan(update=(Update(svc("w"), svc("w", "127.0.0.3"), ("address",)),)))
    b = drift_found(Plan(update=(Update(svc("w"), svc("w", "127.0.0.3"), ("address", "tags")),)))
    assert new_drift(a, b) == {"changed": 1}
