"""Compare desired and observed records and decide what to write (pure).

Called by ``reconcile`` each cycle and by ``cli plan`` for a dry run. ``plan`` never
does I/O; the safety rails live here so that a dry run shows exactly what a real
cycle would refuse.
"""

from __future__ import annotations

from typing import Any

from jailsyncd.model import Action, CbsdState, Confirmation, Desired, Observed, Pending, Plan, Record, Skip, Startup, Update


def changed_fields(old: Record, new: Record) -> tuple[str, ...]:
    """The fields (the mode's, in its order) whose values differ; tags compare as sets."""
    if old.fields == new.fields:
        return ()
    before = dict(old.fields)
    return tuple(name for name, value in new.fields if before.get(name) != value)


def field_changes(update: Update) -> dict[str, dict[str, Any]]:
    """``{field: {"from": ..., "to": ...}}`` of an update in JSON types (sets as sorted
    lists, pairs as objects, check triples as lists): the one rendering, for the drift
    log and ``plan --json``."""
    return {f: {"from": _plain(update.old.value(f)), "to": _plain(update.new.value(f))} for f in update.fields}


def _plain(value: object) -> Any:
    if isinstance(value, frozenset):
        return sorted(list(v) if isinstance(v, tuple) else v for v in value)
    if isinstance(value, tuple):
        return dict(value)
    return value


def plan(
    desired: Desired,
    observed: Observed,
    *,
    max_deregistrations: int,
    force: bool = False,
    startup: Startup | None = None,
    confirm: Confirmation | None = None,
) -> Plan:
    """What to register, update and deregister so that Consul matches ``desired``:
    its records (``desired.records``, the mode's) against the observed ones, field by
    field as the mode names them.

    - A desired record whose ID is held by an entry jailsyncd does not own (our
      prefix, another owner), or whose place (catalog mode's node) exists and is not
      ours (an agent's node, another host's jail), is skipped as ``conflict``, never
      overwritten.
    - Owned services of ``desired.protected`` jails (state unknown) are left as they are.
    - During the start-up grace (``startup``, see ``hold_for_autostart``) the
      deregistrations of jails CBSD has yet to start at boot are held back (moved to
      ``Plan.held``), before the next rail counts what is left.
    - An owned entry (our owner) whose ``cbsd-host`` names another CBSD node than
      ``desired.host`` is a ``collision``: two hosts configured with one
      ``host.name`` (or a renamed CBSD node). It is never updated nor deregistered,
      and reported as a ``collision`` skip naming both nodes.
    - A registration (or an update moving its node) whose node is held by another of
      this host's entries that stays this cycle (its deregistration refused or held
      back, a collision) is skipped as ``conflict`` until the node is freed.
    - Any deregistration is refused (moved to ``Plan.refused``) when CBSD's
      ``jails`` table has no row at all (``desired.empty_source``), whatever their
      number, unless ``force``: an empty table looks like a replaced or broken DB.
      Rows with every jail stopped deregister normally.
    - More than ``max_deregistrations`` deregistrations (a *burst*: a maintenance
      window, or a broken read), counting under ``run`` those applied without a
      confirmation within the last ``sync.interval`` (``confirm.recent``: cycles
      follow events, so one burst can be read in several steps), need a confirming
      read unless ``force``. Under
      ``run`` (``confirm`` given, ``confirm.after`` > 0) the first read that plans
      a burst holds it (``Plan.confirming``, due in ``Plan.confirm_in``); a read at
      least ``confirm.after`` seconds later whose burst differs from it by at most
      ``max_deregistrations`` service IDs applies it; one that differs by more is
      refused (``Plan.refused``, an alert) and starts a new wait. Without
      confirmation (``once``, ``plan``, ``confirm.after`` = 0) a burst is refused.
    """
    collisions = {s.service_id: s for s in observed.owned if _other_node(s, desired.host)}
    owned = {s.service_id: s for s in observed.owned if s.service_id not in collisions}
    wanted = {s.service_id: s for s in desired.records}
    register: list[Record] = []
    update: list[Update] = []
    skipped: list[Skip] = list(desired.skipped)
    for sid, other in sorted(collisions.items()):
        where = f"node {other.place}" if other.place else f"service ID {sid}"
        skipped.append(
            Skip(
                other.jail,
                "collision",
                f"{where} carries host.name {other.owner!r} but CBSD node {other.cbsd_host!r}, and this host is CBSD node "
                f"{desired.host!r}: two hosts share host.name (give each its own) or the CBSD node was renamed; "
                "left as it is",
            )
        )
    for sid, new in sorted(wanted.items()):
        if new.jail in desired.protected or sid in collisions:
            continue
        old = owned.get(sid)
        if new.place and new.place in observed.foreign_places and (old is None or old.place != new.place):
            skipped.append(Skip(new.jail, "conflict", f"node {new.place} exists in Consul and is not owned by this host"))
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
    deregister, held = hold_for_autostart(deregister, startup)
    refused: list[Record] = []
    confirming: list[Record] = []
    confirm_in = 0.0
    burst: frozenset[str] = frozenset()
    why = ""
    if deregister and not force:
        if desired.empty_source:
            why = (
                f"CBSD's jails table is empty while Consul holds {len(deregister)} "
                f"{'entry' if len(deregister) == 1 else 'entries'} of this host "
                "(a replaced or broken DB?); check the CBSD state, then use --force"
            )
        elif len(deregister) + (confirm.recent if confirm is not None else 0) > max_deregistrations:
            burst = frozenset(s.service_id for s in deregister)
            why, confirm_in = _confirm_burst(burst, confirm, max_deregistrations)
            if confirm_in:
                confirming, deregister = deregister, []
    if why:
        refused, deregister = deregister, []
        skipped.extend(Skip(s.jail, "refused", why) for s in refused)
    register, update = _wait_for_places(register, update, deregister, [*owned.values(), *collisions.values()], skipped)
    return Plan(
        register=tuple(register),
        update=tuple(update),
        deregister=tuple(deregister),
        skipped=tuple(skipped),
        refused=tuple(refused),
        notes=desired.notes,
        held=tuple(held),
        held_until=startup.until if held and startup is not None else "",
        refused_why=why,
        collisions=tuple(collisions[k] for k in sorted(collisions)),
        confirming=tuple(confirming),
        confirm_in=confirm_in,
        burst=burst,
    )


def _wait_for_places(
    register: list[Record], update: list[Update], deregister: list[Record], held: list[Record], skipped: list[Skip]
) -> tuple[list[Record], list[Update]]:
    """Registrations and moving updates whose place (catalog mode's node) is held by
    another of this host's entries that stays there this cycle (its deregistration
    refused or held back by a rail, an update not moving it, a collision) become
    ``conflict`` skips: the place is created only if it does not exist, so Consul
    could only refuse them on every cycle. Agent mode has no places."""
    leaving = {r.service_id for r in deregister} | {u.old.service_id for u in update if u.old.place != u.new.place}
    staying = {r.place: r for r in held if r.place and r.service_id not in leaving}
    if not staying:
        return register, update

    def blocked(new: Record) -> bool:
        other = staying.get(new.place)
        if other is None or other.service_id == new.service_id:
            return False
        skipped.append(Skip(new.jail, "conflict", f"node {new.place} is still held by jail {other.jail}, which is not deregistered this cycle"))
        return True

    kept_register = [r for r in register if not blocked(r)]
    kept_update = [u for u in update if u.old.place == u.new.place or not blocked(u.new)]
    return kept_register, kept_update


def frees_first(actions: list[Action]) -> list[Action]:
    """``actions`` with those that free a place (catalog mode's node: a deregistration,
    or an update moving its service elsewhere) or a service ID (but for case) that
    another action takes moved to the front, the order otherwise kept. A node is created only if it does not exist
    (``cas`` at index 0), so a jail given the node of one that stopped, was renamed
    or changed its host_hostname in the same cycle would otherwise be refused
    ("index is stale") until the next cycle."""
    taken = {a.service.place for a in actions if a.kind != "deregister" and a.service.place and (a.old is None or a.old.place != a.service.place)}
    # Consul's catalog compares service IDs without case: registering jailsyncd-Web1
    # before deregistering jailsyncd-web1 (its case-twin's old ID, naming.service_ids)
    # would delete the new entry from the catalog, the agent keeping it until its next
    # anti-entropy pass.
    ids = {a.service.service_id.lower(): a.service.service_id for a in actions if a.kind == "register"}
    if not taken and not ids:
        return actions

    def frees(a: Action) -> bool:
        if a.kind == "deregister" and ids.get(a.service.service_id.lower(), a.service.service_id) != a.service.service_id:
            return True
        return a.old is not None and a.old.place in taken and (a.kind == "deregister" or a.service.place != a.old.place)

    return [a for a in actions if frees(a)] + [a for a in actions if not frees(a)]


# -- the bulk rail (sync.max_deregistrations, sync.confirm_after) ----------------------


def _confirm_burst(burst: frozenset[str], confirm: Confirmation | None, limit: int) -> tuple[str, float]:
    """(why it is refused, '' if not; seconds until the confirming read, 0 if none is
    awaited). Neither: the burst is confirmed and applied."""
    n = len(burst)
    if confirm is None or confirm.after <= 0:
        return f"{n} deregistrations exceed sync.max_deregistrations={limit}; check the CBSD state, then use --force", 0.0
    agrees = confirm.previous is not None and len(burst ^ confirm.previous) <= limit
    if confirm.previous is None or confirm.age < confirm.after:
        return "", (confirm.after - confirm.age) if agrees else confirm.after
    if agrees:
        return "", 0.0
    differ = len(burst ^ confirm.previous)
    return (
        f"{n} deregistrations exceed sync.max_deregistrations={limit} and the read {confirm.age:.0f}s before planned "
        f"{len(confirm.previous)} with {differ} differing (a flapping or broken CBSD read?); check the CBSD state, "
        "then use --force, or wait for two reads that agree"
    ), 0.0


def track_burst(pending: Pending | None, burst: frozenset[str], *, applied: bool, now: float, limit: int) -> Pending | None:
    """The burst waiting for confirmation after a cycle whose plan had ``burst``: none
    when there was none or it was applied; else this burst, since the first read that
    planned it, or since ``now`` when it differs from the pending one by more than
    ``limit`` IDs (a refusal or a new burst restarts the wait)."""
    if not burst or applied:
        return None
    if pending is not None and len(burst ^ pending.ids) <= limit:
        return Pending(burst, pending.since)
    return Pending(burst, now)


# -- the start-up grace rail (sync.startup_grace) -------------------------------------


def autostart_stopped(state: CbsdState) -> frozenset[str]:
    """The jnames CBSD starts at boot (``astart=1``) that are not running now."""
    return frozenset(env.jname for env in state.environments if env.awaiting_autostart)


def hold_for_autostart(deregister: list[Record], startup: Startup | None) -> tuple[list[Record], list[Record]]:
    """Split deregistrations into (to do now, held back by the start-up grace).

    At boot ``cbsdd`` only queues the ``astart=1`` environments (``jails-astart``),
    which then start one after another while their rows still say "off": a service
    Consul kept across the reboot would be deregistered and registered again moments
    later. So while ``startup.elapsed < startup.grace``, the services of jails that
    CBSD will start (``autostart_stopped``) are kept, unless CBSD has shown the jail
    running since ``run`` started (``seen_running``): then it was started and stopped
    again, and the normal rules apply. Without ``startup`` (``once``, ``plan``) or
    after the grace nothing is held. Registrations are never delayed.
    """
    if startup is None or startup.elapsed >= startup.grace:
        return deregister, []
    waiting = startup.autostart_stopped - startup.seen_running
    now = [s for s in deregister if s.jail not in waiting]
    held = [s for s in deregister if s.jail in waiting]
    return now, held


def _other_node(s: Record, host: str) -> bool:
    """An entry with our owner but another CBSD node's name (``cbsd-host``): a
    collision, never ours to change (only decidable when this node's name is known)."""
    return bool(host and s.cbsd_host and s.cbsd_host != host)


def purge_plan(observed: Observed, host: str = "") -> Plan:
    """Deregister everything this host owns (``jailsyncd purge``), except entries of
    another CBSD node (``host`` known and ``cbsd-host`` different): collisions."""
    mine = [s for s in observed.owned if not _other_node(s, host)]
    collisions = tuple(s for s in observed.owned if _other_node(s, host))
    return Plan(deregister=tuple(sorted(mine, key=lambda s: s.service_id)), collisions=collisions)
