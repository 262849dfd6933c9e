"""Which ACL permissions a mode really needs, for ``check-config --online``.

Called by ``cli`` (``cmd_check_config``), which asks Consul about each permission
(``adapters.consul.transport.StoreBase.authorize``) and prints ``findings``. Pure: services in,
permissions and lines for people out; no I/O.

What each mode calls, measured against Consul 1.8.7 with ``default_policy = "deny"``
(docs/acl/agent-mode.hcl and docs/acl/catalog-mode.hcl list the endpoints):

- agent mode: ``service:write`` on the name of every service it registers, updates
  or deregisters (the heartbeat service ``jailsyncd`` included when health is on).
  No node rule: the agent syncs the services to the catalog with the token that
  registered them, and jailsyncd reads no node.
- catalog mode: ``node:write`` on every jail's node name (and on the nodes it
  deregisters), ``service:write`` on every service name it writes; ``/v1/txn`` needs
  nothing else. ``node:read`` on every node is not required, but without it a node
  name held by another owner is invisible to the read, so the jail's write fails
  (exit 77) instead of being skipped as a ``conflict``: a note, not a failure.

The names are those of this host's current desired state and of what it owns in
Consul. A policy that lists names one by one is fine for them, but not for a jail
created later: a permission for a new name is asked too, as a note.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from jailsyncd.model import Service

__all__ = ["EXAMPLE_NODE", "EXAMPLE_SERVICE", "Need", "findings", "needs"]

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


def needs(mode: str, desired: Sequence[Service] | None, owned: Sequence[Service] = ()) -> list[Need]:
    """The permissions ``mode`` needs for these services (``desired`` None: this
    host's names are unknown, so example names stand in for them, as required)."""
    out: list[Need] = []
    catalog = mode == "catalog"
    if desired is None or not (desired or owned):
        out.append(Need("service", EXAMPLE_SERVICE, "write", "service:write on a jail's service name"))
        if catalog:
            out.append(Need("node", EXAMPLE_NODE, "write", "node:write on a jail's node name"))
    else:
        # Agent mode deregisters by service, which needs the old name's write; in
        # catalog mode deleting a node is a node write only.
        services = {s.name for s in (*desired, *(() if catalog else owned)) if s.name}
        out += [Need("service", name, "write", "service:write on this host's service names") for name in sorted(services)]
        if catalog:
            nodes = {s.node for s in (*desired, *owned) if s.node}
            out += [Need("node", name, "write", "node:write on this host's node names") for name in sorted(nodes)]
        out.append(Need("service", EXAMPLE_SERVICE, "write", "service:write on the name of a jail created later", required=False))
        if catalog:
            out.append(Need("node", EXAMPLE_NODE, "write", "node:write on the node name of a jail created later", required=False))
    if catalog:
        out.append(Need("node", "", "read", "node:read on every node", required=False))
    return out


_CONSEQUENCE = {
    "service:write on the name of a jail created later": "a new jail is refused unless the policy gets its name too",
    "node:write on the node name of a jail created later": "a new jail is refused unless the policy gets its node name too",
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
