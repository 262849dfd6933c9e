"""The desired state built part by part (``Naming``, ``build_desired(naming=...)``, the
mode's ``records(taken=...)``, ``combine``) is the desired state built over the whole
table: what ``reconcile`` registers while CBSD is still being read must be exactly
what the cycle's plan would register. Pure: no I/O."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from jailsyncd.adapters.consul import agent, catalog
from jailsyncd.desired import NAMELESS, Naming, build_desired, combine, without_reserved_names
from jailsyncd.model import CbsdState, Desired, Environment
from jailsyncd.settings import CatalogSettings, HealthSettings, Settings
from jailsyncd.tagspec import Rule

OWNER = "host-a"


def env(jname: str, *, status: int = 1, ip4_addr: str | None = "10.0.0.1", host_hostname: str | None = None, tags: str | None = None, emulator: str = "jail") -> Environment:
    return Environment(jname, emulator, status, 7 if status else 0, ip4_addr, host_hostname, tags)


def awkward_table(seed: int) -> CbsdState:
    """Jails whose names, node names and service IDs interact: case twins (one
    service ID each, suffixed), names that map to one DNS label, two jails with one
    host_hostname (one catalog node name), a service named ``consul``, stopped,
    opted-out, unaddressable and unreadable jails, nameless rows."""
    rng = random.Random(seed)
    names = ["web", "Web", "WEB", "db_1", "db-1", "db.1", "consul", "mail", "www", "a", "b", "c"]
    names += [f"j{n:03d}" for n in range(rng.randint(20, 90))]
    rng.shuffle(names)
    envs = []
    for i, name in enumerate(names):
        roll = rng.random()
        envs.append(
            env(
                name,
                status=0 if roll < 0.1 else 1,
                ip4_addr=None if roll > 0.92 else f"10.1.{i // 250}.{i % 250 + 1}",
                host_hostname=rng.choice([None, None, "shared.example.org", f"{name}.example.org", "."]),
                tags=rng.choice([None, None, "consul=off", "consul.port=80,consul.tags=x", "consul.name=consul"]),
                emulator=rng.choice(["jail", "jail", "bhyve"]),
            )
        )
    unreadable = tuple((e.jname, "per-VM DB unreadable") for e in envs if e.emulator == "bhyve" and rng.random() < 0.2)
    return CbsdState("node1", tuple(envs), unreadable, nameless=seed % 3)


def whole(state: CbsdState, settings: Settings, mode: object) -> Desired:
    desired = build_desired(state, owner=OWNER, rules=settings.rules)
    return without_reserved_names(mode.records(desired, settings))  # type: ignore[attr-defined]


def in_parts(state: CbsdState, settings: Settings, mode: object, size: int) -> Desired:
    """What ``Reconciler._read_registering`` does with the parts of a read."""
    listed = tuple(sorted(state.environments, key=lambda e: e.jname))
    naming = Naming.of(e.jname for e in listed)
    unreadable = dict(state.unreadable)
    taken: dict[str, str] = {}
    parts = []
    for start in range(0, len(listed), size):
        group = listed[start : start + size]
        lost = tuple((e.jname, unreadable[e.jname]) for e in group if e.jname in unreadable)
        part = build_desired(CbsdState(state.nodename, group, lost), owner=OWNER, rules=settings.rules, naming=naming)
        part = mode.records(part, settings, taken=taken)  # type: ignore[attr-defined]
        taken.update((r.place, r.jail) for r in part.records if r.place)  # reserved names hold theirs too
        part = without_reserved_names(part)
        parts.append(part)
    return combine(parts, state, owner=OWNER)


#: Health off: ``reconcile`` reads in parts only then (agent mode adds its heartbeat
#: service to every build with health on, and new checks are probed as one round).
OFF = HealthSettings(enabled=False)
MODES = {
    "catalog": (catalog.ConsulCatalog, Settings(health=OFF)),
    "catalog-by-jname": (catalog.ConsulCatalog, Settings(health=OFF, catalog=CatalogSettings(node_name="{jname}"))),
    "article": (catalog.ConsulCatalog, Settings(health=OFF, catalog=CatalogSettings(layout="article", host_tag="h"))),
    "agent": (agent.ConsulAgent, Settings(health=OFF)),
    "agent-rules": (agent.ConsulAgent, Settings(health=OFF, rules=(Rule(match="j0*", tags=("ruled",)),))),
}


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("size", [1, 2, 7, 32, 1000])
@pytest.mark.parametrize("seed", range(6))
def test_parts_combine_into_the_whole(mode: str, size: int, seed: int) -> None:
    store, settings = MODES[mode]
    state = awkward_table(seed)
    expected, got = whole(state, settings, store), in_parts(state, settings, store, size)
    assert got.records == expected.records  # same records, same order
    assert got.services == expected.services
    assert Counter(got.skipped) == Counter(expected.skipped)  # skips: same ones (order by part)
    assert got.notes == expected.notes
    assert (got.protected, got.host, got.owner, got.empty_source) == (expected.protected, expected.host, expected.owner, expected.empty_source)


def test_the_table_exercises_what_parts_could_get_wrong() -> None:
    """The tables above do hold every interaction between parts (else the test
    above could pass on a part builder that ignores them)."""
    store, settings = MODES["catalog"]
    desired = whole(awkward_table(0), settings, store)
    kinds = Counter(k.reason for k in desired.skipped)
    assert kinds["conflict"] >= 1  # two jails, one node name (shared.example.org)
    assert kinds["reserved_name"] >= 1 and kinds["opted_out"] >= 1 and kinds["source_error"] >= 1
    ids = {r.service_id for r in desired.records}
    assert any("~" in i for i in ids)  # case twins: suffixed service IDs
    assert NAMELESS not in {k.jail for k in desired.skipped} or awkward_table(0).nameless


def test_an_empty_table_combines_to_the_empty_desired_state() -> None:
    state = CbsdState("node1", (), (), nameless=2)
    store, settings = MODES["catalog"]
    assert combine([], state, owner=OWNER) == whole(state, settings, store)
