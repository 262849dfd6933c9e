"""ACL permissions, for ``check-config --online``: the shared part.

Each Consul mode says which permissions it needs for a host's entries
(``acl_needs`` in ``adapters/consul/agent.py`` and ``catalog.py``, measured against
Consul 1.8.7 with ``default_policy = "deny"``; docs/acl/agent-mode.hcl and
docs/acl/catalog-mode.hcl list the endpoints) with ``write_needs`` from here;
``cli`` (``cmd_check_config``) asks Consul about each one
(``adapters.consul.transport.StoreBase.authorize``) and prints ``findings``. Pure:
names in, permissions and lines for people out; no I/O.

The names are those of this host's current desired state and of what it owns in
Consul. A policy that lists names one by one is fine for them, but not for a jail
created later: a permission for a new name is asked too, as a note.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

__all__ = ["EXAMPLE_NODE", "EXAMPLE_SERVICE", "Need", "findings", "write_needs"]

#: Stand-ins for the name of a jail created later (and for every name when this
#: host's names cannot be known).
EXAMPLE_SERVICE = "example-jail"
EXAMPLE_NODE = "example-jail.example.org"

#: How many names a finding lists before it says "...".
SHOWN = 5


@dataclass(frozen=True)
class Need:
    """One permission to ask Consul about.

    ``group`` collects the needs reported in one line; ``required`` False means a
    missing permission is a note, not a failure.
    """

    resource: str  # service, node
    segment: str
    access: str  # read, write
    group: str
    required: bool = True


#: Per resource: the example name, and how the groups of ``write_needs`` call a name.
_RESOURCES = {
    "service": (EXAMPLE_SERVICE, "a jail's service name", "this host's service names", "the name of a jail created later"),
    "node": (EXAMPLE_NODE, "a jail's node name", "this host's node names", "the node name of a jail created later"),
}


def write_needs(names: Sequence[tuple[str, Iterable[str]]], known: bool) -> list[Need]:
    """``write`` on every name of each ``(resource, names)``, in that order, then on
    the name of a jail created later (a note, not required). ``known`` False: this
    host's names are unknown (or it has none), so the example names stand in, as
    required."""
    if not known:
        return [Need(r, _RESOURCES[r][0], "write", f"{r}:write on {_RESOURCES[r][1]}") for r, _ in names]
    out: list[Need] = []
    for resource, items in names:
        out += [Need(resource, name, "write", f"{resource}:write on {_RESOURCES[resource][2]}") for name in sorted(set(items))]
    for resource, _ in names:
        example, _, _, later = _RESOURCES[resource]
        out.append(Need(resource, example, "write", f"{resource}:write on {later}", required=False))
    return out


_CONSEQUENCE = {
    "service:write on the name of a jail created later": "a new jail is refused unless the policy gets its name too",
    "node:write on the node name of a jail created later": "a new jail is refused unless the policy gets its node name too",
    "agent:read and node:read for the Consul watch": "sync.watch_consul cannot run: a change made in Consul by hand waits for the periodic cycle",
    "node:read on every node": "a node name held by another owner is not seen, so that jail's write fails (exit 77) instead of being skipped as a conflict",
}


def findings(asked: Sequence[Need], allowed: Sequence[bool]) -> list[tuple[bool | None, str]]:
    """One ``(ok, text)`` per group of ``asked``, in order: ``True`` all granted,
    ``False`` a required permission is missing (the text names every missing name),
    ``None`` a missing permission that is not required."""
    groups: dict[str, list[tuple[Need, bool]]] = {}
    for need, ok in zip(asked, allowed, strict=True):
        groups.setdefault(need.group, []).append((need, ok))
    out: list[tuple[bool | None, str]] = []
    for group, items in groups.items():
        missing = [n.segment for n, ok in items if not ok]
        names = [n.segment for n, _ in items]
        if not missing:
            out.append((True, f"{group}: allowed{_list(names)}"))
        elif items[0][0].required:
            out.append((False, f"{group}: MISSING on {len(missing)} of {len(names)}: {_show(missing)}"))
        else:
            out.append((None, f"{group}: not granted{_list(names)}: {_CONSEQUENCE.get(group, 'not needed now')}"))
    return out


def _show(names: Sequence[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:SHOWN])
    return shown + (f" and {len(names) - SHOWN} more" if len(names) > SHOWN else "")


def _list(names: Sequence[str]) -> str:
    return f" ({_show(names)})" if names != [""] else ""
