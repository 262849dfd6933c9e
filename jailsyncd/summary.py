"""What one reconcile cycle leaves behind, in numbers an operator watches (pure).

Called by ``metrics`` after every cycle of ``jailsyncd run``; its numbers become the
gauges that ``jailsyncd status`` shows and that the alert rules in
``etc/prometheus/jailsyncd.rules.yml`` use. No I/O, no clock, no logging.

- ``summarise``: per CBSD kind (``jail``, ``bhyve``...), the services this host
  keeps in Consul and the environments skipped, by reason; refused deregistrations;
  the drift the cycle found and acted on (one key per service and kind of drift;
  refused deregistrations are not in it: they have their own number and alert);
- ``drift_found``/``new_drift``: every drift a plan found, one key per subject and
  kind, and which of them the previous cycle did not find: ``jailsyncd_drift_total``
  counts drift when it appears (a transition), not in every cycle that still sees it;
- ``drift_streaks``: for each drift key, in how many consecutive cycles it was
  found. A drift that is repaired is gone from the next cycle's plan; one that is
  found again and again (a write Consul accepts but does not keep, a rejected
  payload, a refused deregistration) grows its streak, which is what
  ``JailsyncdDriftNotConverging`` alerts on.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Mapping

from jailsyncd.model import CbsdState, Plan, Record

#: Skip reasons that are not drift: a jail opted out on purpose; refused
#: deregistrations are counted from the plan's own list (kind ``refused``).
NOT_DRIFT = frozenset({"opted_out", "refused"})

#: Kind label for services and skips whose environment is not in the CBSD state
#: (e.g. an orphan whose row was deleted).
UNKNOWN_KIND = "unknown"


@dataclass(frozen=True)
class CycleSummary:
    """``services``/``skipped`` are sorted ``((kind[, reason]), count)`` pairs."""

    services: tuple[tuple[str, int], ...] = ()
    skipped: tuple[tuple[tuple[str, str], int], ...] = ()
    refused: int = 0
    #: Deregistrations of a burst waiting for their confirming read (sync.confirm_after).
    unconfirmed: int = 0
    drift: frozenset[tuple[str, str, str]] = frozenset()


def summarise(plan: Plan, desired_services: Iterable[Record], state: CbsdState | None) -> CycleSummary:
    """The numbers of one planned cycle. ``desired_services``: the desired state's
    services (jailsyncd's own heartbeat service is not counted)."""
    kinds = {env.jname: env.kind for env in (state.environments if state else ())}
    # A desired service the plan skipped (a conflict) is not kept in Consul.
    held_back = {k.jail for k in plan.skipped}
    services = Counter(
        kinds.get(s.jail, UNKNOWN_KIND) for s in desired_services if not s.is_self and s.jail not in held_back
    )
    skipped = Counter((kinds.get(k.jail, UNKNOWN_KIND), k.reason) for k in plan.skipped)
    drift = {key for key in drift_found(plan) if key[0] in ("missing", "changed", "orphan")}
    return CycleSummary(
        services=tuple(sorted(services.items())),
        skipped=tuple(sorted(skipped.items())),
        refused=len(plan.refused),
        unconfirmed=len(plan.confirming),
        drift=frozenset(drift),
    )


def drift_found(plan: Plan) -> frozenset[tuple[str, str, str]]:
    """Every drift of a plan as ``(kind, subject, detail)``: ``missing``, ``changed``
    (detail: the fields), ``orphan`` and ``refused`` per service ID, and per jail every
    skip reason but those in ``NOT_DRIFT`` (``conflict``, ``unaddressable``,
    ``source_error``...)."""
    keys: set[tuple[str, str, str]] = set()
    # jailsyncd's own heartbeat service is not a jail: its changes are not drift.
    keys.update(("missing", s.service_id, "") for s in plan.register if not s.is_self)
    keys.update(("changed", u.new.service_id, ",".join(sorted(u.fields))) for u in plan.update if not u.new.is_self)
    keys.update(("orphan", s.service_id, "") for s in plan.deregister + plan.confirming if not s.is_self)
    keys.update(("refused", s.service_id, "") for s in plan.refused if not s.is_self)
    keys.update((k.reason, k.jail, "") for k in plan.skipped if k.reason not in NOT_DRIFT)
    return frozenset(keys)


def new_drift(previous: frozenset[tuple[str, str, str]], found: frozenset[tuple[str, str, str]]) -> dict[str, int]:
    """How many drift items appeared, by kind: found now, not found by the previous
    cycle. Drift that is repaired and comes back later appears again."""
    return dict(Counter(kind for kind, _, _ in found - previous))


def drift_streaks(previous: Mapping[tuple[str, str, str], int], found: Iterable[tuple[str, str, str]]) -> dict[tuple[str, str, str], int]:
    """Consecutive cycles each drift key has been found in, after one more cycle
    that found ``found``. A key not found this cycle is dropped (the drift is gone,
    or changed into another one)."""
    return {key: previous.get(key, 0) + 1 for key in found}
