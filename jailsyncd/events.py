"""The names of the log events that are read back: declared once, here.

``reconcile`` and ``healthloop`` write them; ``report`` and ``reporthtml`` read them
from jailsyncd's JSON logs (``jailsyncd report``); docs/operations.md documents them
(a unit test checks the table). Any other event is written in one place only, with
its name as a literal at that call. Stable snake_case names: renaming one breaks
reports of older logs.
"""

from __future__ import annotations

DRIFT_DETECTED = "drift_detected"
JAIL_SKIPPED = "jail_skipped"
HEALTH_CHANGED = "health_changed"
DEREGISTRATIONS_REFUSED = "deregistrations_refused"
SERVICE_REGISTERED = "service_registered"
SERVICE_UPDATED = "service_updated"
SERVICE_DEREGISTERED = "service_deregistered"
ACTION_FAILED = "action_failed"
CYCLE_FINISHED = "cycle_finished"
CYCLE_FAILED = "cycle_failed"

#: The event of each applied action, by ``Action.kind``.
APPLIED = {"register": SERVICE_REGISTERED, "update": SERVICE_UPDATED, "deregister": SERVICE_DEREGISTERED}
