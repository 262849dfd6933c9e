"""Compare desired and observed services and decide what to write (pure).

Called by ``reconcile`` each cycle and by ``cli plan`` for a dry run. ``plan`` never
does I/O; the safety rails live here so that a dry run shows exactly what a real
cycle would refuse.
"""

from __future__ import annotations

from jailsyncd.model import COMPARED_FIELDS, Desired, Observed, Plan, Service, Skip, Update


def changed_fields(old: Service, new: Service) -> tuple[str, ...]:
    """The compared fields whose values differ; tags compare as sets."""
    return tuple(f for f in COMPARED_FIELDS if getattr(old, f) != getattr(new, f))


def plan(
    desired: Desired,
    observed: Observed,
    *,
    max_deregistrations: int,
    force: bool = False,
) -> Plan:
    """What to register, update and deregister so that Consul matches ``desired``.

    - A desired service whose ID is held by an entry jailsyncd does not own (our
      prefix, another owner), or whose catalog node exists and is not ours (an
      agent's node, another host's jail), is skipped as ``conflict``, never
      overwritten.
    - Owned services of ``desired.protected`` jails (state unknown) are left as they are.
    - More than ``max_deregistrations`` deregistrations are all refused (moved to
      ``Plan.refused``) unless ``force``: a sudden mass removal more often means a
      broken read than a host that really lost its jails.
    """
    owned = {s.service_id: s for s in observed.owned}
    wanted = {s.service_id: s for s in desired.services}
    register: list[Service] = []
    update: list[Update] = []
    skipped: list[Skip] = list(desired.skipped)
    for sid, new in sorted(wanted.items()):
        if new.jail in desired.protected:
            continue
        old = owned.get(sid)
        if new.node and new.node in observed.foreign_nodes and (old is None or old.node != new.node):
            skipped.append(Skip(new.jail, "conflict", f"node {new.node} exists in Consul and is not owned by this host"))
            continue
        if old is None:
            if sid in observed.foreign_ids:
                skipped.append(Skip(new.jail, "conflict", f"service ID {sid} exists in Consul and is not owned by this host"))
            else:
                register.append(new)
            continue
        fields = changed_fields(old, new)
        if fields:
            update.append(Update(old, new, fields))
    deregister = [
        old for sid, old in sorted(owned.items()) if sid not in wanted and old.jail not in desired.protected
    ]
    refused: list[Service] = []
    if len(deregister) > max_deregistrations and not force:
        refused, deregister = deregister, []
        skipped.extend(
            Skip(s.jail, "refused", f"{len(refused)} deregistrations exceed sync.max_deregistrations={max_deregistrations}; use --force")
            for s in refused
        )
    return Plan(
        register=tuple(register),
        update=tuple(update),
        deregister=tuple(deregister),
        skipped=tuple(skipped),
        refused=tuple(refused),
        notes=desired.notes,
    )


def purge_plan(observed: Observed) -> Plan:
    """Deregister everything this host owns (``jailsyncd purge``)."""
    return Plan(deregister=tuple(sorted(observed.owned, key=lambda s: s.service_id)))
