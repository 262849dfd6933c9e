"""``jailsyncd report [LOGFILE ...]``: a per-jail drift report read back from jailsyncd's own logs.

Called by ``cli`` (which adds the sub-command with ``add_parser`` and calls ``run``);
nothing else calls it. It needs no settings and never talks to CBSD or Consul: it
only reads the JSON log lines jailsyncd wrote (``log.format = "json"``, see ``logs``).

Input: the given files in order, or stdin when none is given (``-`` also means stdin).
Files ending ``.gz``, ``.bz2`` or ``.xz`` (newsyslog's Z, J and X flags) are
decompressed on the fly. Each line is one JSON object as structlog renders it; a line
may carry a syslog prefix (``Nov 27 19:00:01 host jailsyncd[123]: {...}``, from
daemon(8) ``-S`` and syslogd): the object starting at the first ``{`` is used, and
nothing but white space may follow it. Bytes that are not UTF-8 are replaced, never
fatal. A file that is missing, unreadable or not valid compressed data does not
stop the report: the lines read before the problem (a truncated ``.gz`` yields its
intact beginning) and every other file are still reported, the file is listed in the
report (``unreadable``, with the reason), and ``run`` then raises ``ReportError``
(exit 66, EX_NOINPUT: an input file did not exist or was not readable) naming every
such file in one line, so that a cron job or script notices the gap.

A bad ``--since`` (not a date or an age, or out of the range of dates: ``99999999d``,
``0001-01-01T00:00+01:00``) is ``ReportUsageError``: one line, exit 2 like any other
bad command line, nothing read.

Lines used, per jail (``jail`` key):

=============================  ===============================================
event                          counted as
=============================  ===============================================
``drift_detected``             drift kind = its ``kind`` (``missing``,
                               ``changed``, ``orphan``); for ``changed`` the
                               keys of ``fields`` are counted per field
``jail_skipped``               drift kind = its ``reason`` (``conflict``,
                               ``unaddressable``, ``source_error``); latest
                               ``detail`` kept
``health_changed``             drift kind ``health``; ``"<check>: <from> ->
                               <to>"`` transitions counted
``deregistrations_refused``    action ``refused`` for each of its ``jails``,
                               and drift kind ``orphan`` unless a
                               ``drift_detected kind=orphan`` for that jail was
                               already seen in the same cycle (reconcile logs
                               both, so one orphan is counted once; with
                               ``log.level = "warning"`` only the refusal is
                               logged and still counts as an orphan)
``service_registered``         action ``registered``
``service_updated``            action ``updated``
``service_deregistered``       action ``deregistered``
``action_failed``              action ``failed`` (latest ``error`` kept)
``cycle_finished``             totals: ``cycles``
``cycle_failed``               totals: ``cycles`` and ``failed_cycles``
=============================  ===============================================

Decision on ``opted_out``: a ``jail_skipped reason=opted_out`` is *not* drift (the
admin asked for it), but it is shown as kind ``opted_out`` (marked "info" in the text
output, listed in ``INFO_KINDS``) so that the report explains why a jail is absent
from Consul. Unknown ``kind``/``reason`` values of the events above are kept as their
own kinds, so that kinds added later show up without a code change.

Counts mean "times logged": ``jail_skipped`` is logged when a skip first appears in
a process, not on every cycle, and the daemon logs a cycle that changed nothing at
debug level only, so ``cycles`` counts the cycles the log shows.

Every other line is skipped and counted by reason: ``not_json`` (including blank and
truncated lines), ``no_event`` (JSON object without a string ``event``),
``other_event`` (another event, e.g. ``jail_note``, ``daemon_started``) and
``malformed`` (one of the events above without a valid ``timestamp`` or ``jail``).
Lines excluded by ``--since``/``--jail`` are counted as ``filtered_out``;
``--jail`` does not filter the cycle totals, which belong to no jail. Timestamps
without a zone are taken as UTC, as jailsyncd writes them.

``--html FILE`` writes the same selection as a self-contained web page with drift
timelines instead of the text output (``reporthtml``, fed the same lines as they are
read).

Pure part: ``parse_line, ``parse_since`` and ``aggregate`` (lines in, frozen
``Report`` out), ``report_as_json``, ``report_as_text``. I/O part: ``read_lines``,
``run``.
"""

from __future__ import annotations

import argparse
import bz2
import gzip
import json
import lzma
import re
import sys
from collections import Counter
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import IO, Any, Iterable, Iterator, Sequence

from jailsyncd import events
from jailsyncd.errors import ExitCode, JailsyncdError
from jailsyncd.model import SELF_SERVICE_ID

__all__ = [
    "ACTIONS",
    "DRIFT_KINDS",
    "INFO_KINDS",
    "JailReport",
    "KindStats",
    "Report",
    "ReportError",
    "ReportUsageError",
    "Totals",
    "add_parser",
    "aggregate",
    "parse_line",
    "parse_since",
    "read_lines",
    "report_as_json",
    "report_as_text",
    "run",
]


class ReportError(JailsyncdError):
    """A log file given to ``report`` is missing, unreadable or corrupt."""

    exit_code = ExitCode.SOURCE_UNAVAILABLE


class ReportUsageError(JailsyncdError):
    """A bad ``report`` argument (``--since``): a bad command line, exit 2."""

    exit_code = ExitCode.USAGE


#: Drift kinds in display order (unknown kinds follow, alphabetically).
DRIFT_KINDS = ("missing", "changed", "orphan", "conflict", "unaddressable", "source_error", "health")
#: Kinds that are shown but are not drift.
INFO_KINDS = ("opted_out",)
#: What jailsyncd did, in display order.
ACTIONS = ("registered", "updated", "deregistered", "failed", "refused")
#: The reasons a line is skipped, in display order.
SKIP_REASONS = ("not_json", "no_event", "other_event", "malformed")

_ACTION_EVENTS = {
    events.SERVICE_REGISTERED: "registered",
    events.SERVICE_UPDATED: "updated",
    events.SERVICE_DEREGISTERED: "deregistered",
    events.ACTION_FAILED: "failed",
}
_CYCLE_EVENTS = (events.CYCLE_FINISHED, events.CYCLE_FAILED)
USED_EVENTS = frozenset({events.DRIFT_DETECTED, events.JAIL_SKIPPED, events.HEALTH_CHANGED, events.DEREGISTRATIONS_REFUSED, *_ACTION_EVENTS, *_CYCLE_EVENTS})

_DECODER = json.JSONDecoder()


# -- the report (frozen values) ---------------------------------------------------


@dataclass(frozen=True)
class KindStats:
    """How often one kind of drift was logged for one jail, and when.

    ``fields`` (``changed``: field -> count) and ``transitions`` (``health``:
    ``"check: from -> to"`` -> count) are sorted ``(name, count)`` pairs, most frequent
    first. ``detail`` is the latest ``detail`` of a ``jail_skipped`` kind.
    """

    kind: str
    count: int
    first_seen: datetime
    last_seen: datetime
    fields: tuple[tuple[str, int], ...] = ()
    transitions: tuple[tuple[str, int], ...] = ()
    detail: str | None = None


@dataclass(frozen=True)
class JailReport:
    """Everything the log says about one jail. ``kinds`` is in display order;
    ``actions`` holds every name of ``ACTIONS`` (zero when none)."""

    jail: str
    kinds: tuple[KindStats, ...]
    actions: tuple[tuple[str, int], ...]
    last_error: str | None = None

    def kind(self, name: str) -> KindStats | None:
        return next((k for k in self.kinds if k.kind == name), None)

    def action(self, name: str) -> int:
        return dict(self.actions).get(name, 0)


@dataclass(frozen=True)
class Totals:
    """``lines_read`` = ``events_used`` + ``lines_skipped`` + ``filtered_out``."""

    lines_read: int = 0
    events_used: int = 0
    lines_skipped: int = 0
    skipped: tuple[tuple[str, int], ...] = tuple((r, 0) for r in SKIP_REASONS)
    filtered_out: int = 0
    cycles: int = 0
    failed_cycles: int = 0
    first_event: datetime | None = None
    last_event: datetime | None = None


@dataclass(frozen=True)
class Report:
    """``jails`` sorted by jail name. ``unreadable``: ``(file, reason)`` for each input
    that could not be read completely (set by ``run``; ``aggregate`` sees lines only)."""

    jails: tuple[JailReport, ...]
    totals: Totals
    unreadable: tuple[tuple[str, str], ...] = ()

    def jail(self, name: str) -> JailReport | None:
        return next((j for j in self.jails if j.jail == name), None)


# -- parsing ------------------------------------------------------------------------


def parse_line(line: str) -> tuple[str, dict[str, Any] | None]:
    """Classify one log line: ``("ok", obj)`` or ``(skip_reason, None)``.

    ``ok`` means a JSON object with a string ``event`` in ``USED_EVENTS``; it is not
    yet checked for the keys its event needs (``aggregate`` does that).
    """
    start = line.find("{")
    if start < 0:
        return "not_json", None
    try:
        obj, end = _DECODER.raw_decode(line, start)
    except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
        return "not_json", None
    if line[end:].strip():
        return "not_json", None  # e.g. the inner object of a JSON array, or a truncated line plus junk
    if not isinstance(obj, dict):
        return "not_json", None
    event = obj.get("event")
    if not isinstance(event, str):
        return "no_event", None
    if event not in USED_EVENTS:
        return "other_event", None
    return "ok", obj


def parse_timestamp(value: Any) -> datetime | None:
    """An ISO 8601 timestamp as an aware UTC datetime; naive means UTC; else None."""
    if not isinstance(value, str):
        return None
    try:
        ts = datetime.fromisoformat(value.strip())
        if ts.tzinfo is None:
            return ts.replace(tzinfo=timezone.utc)
        return ts.astimezone(timezone.utc)
    except (ValueError, OverflowError):  # OverflowError: a zone moving it past year 1 or 9999
        return None


_RELATIVE = re.compile(r"(\d+)\s*([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """``--since``: an ISO date/time (``2026-11-27``, ``2026-11-27T19:00Z``; no zone
    means UTC) or an age before ``now`` (``30m``, ``2h``, ``7d``, ``1w``, ``1h30m``).

    Raises ``ValueError`` with a one-line message for people, also when the value is
    out of the range of dates (an age reaching before the year 1, a zone moving a
    time past year 1 or 9999).
    """
    value = text.strip().lower()
    shown = text if len(text) <= 40 else text[:37] + "..."
    if value and _RELATIVE.sub("", value).strip() == "":
        now = now or datetime.now(timezone.utc)
        try:
            delta = timedelta()
            for number, unit in _RELATIVE.findall(value):
                if len(number) > 12:  # int() refuses > 4300 digits; no age needs 13
                    raise OverflowError
                delta += timedelta(**{_UNITS[unit]: int(number)})
            return now - delta
        except OverflowError:
            raise ValueError(f"invalid --since {shown!r}: the age reaches before the year 1; use a smaller age or a date") from None
    try:
        ts = datetime.fromisoformat(text.strip())
    except ValueError:
        ts = None
    if ts is None:
        raise ValueError(f"invalid --since {shown!r}: use an ISO date or time (2026-11-27, 2026-11-27T19:00Z) or an age (30m, 2h, 7d)")
    if ts.tzinfo is None:
        return ts.replace(tzinfo=timezone.utc)
    try:
        return ts.astimezone(timezone.utc)
    except OverflowError:
        raise ValueError(f"invalid --since {shown!r}: in UTC this is outside the years 1 to 9999") from None


# -- aggregation ----------------------------------------------------------------------


class _Kind:
    def __init__(self, ts: datetime) -> None:
        self.count = 0
        self.first = ts
        self.last = ts
        self.fields: Counter[str] = Counter()
        self.transitions: Counter[str] = Counter()
        self.detail: str | None = None

    def add(self, ts: datetime) -> None:
        self.count += 1
        self.first = min(self.first, ts)
        self.last = max(self.last, ts)


class _Jail:
    def __init__(self) -> None:
        self.kinds: dict[str, _Kind] = {}
        self.actions: Counter[str] = Counter()
        self.last_error: tuple[datetime, str] | None = None

    def kind(self, name: str, ts: datetime) -> _Kind:
        stats = self.kinds.get(name)
        if stats is None:
            stats = self.kinds[name] = _Kind(ts)
        stats.add(ts)
        return stats


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)


def aggregate(lines: Iterable[str], since: datetime | None = None, jails: Iterable[str] | None = None) -> Report:
    """Read jailsyncd log lines into a ``Report`` (see the module docstring).

    ``since``: only events at or after it (a naive datetime is UTC); ``jails``: only
    these jnames (None: all). Never raises on the content of a line.
    """
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=timezone.utc)
    wanted = None if jails is None else frozenset(jails)
    per_jail: dict[str, _Jail] = {}
    skipped: Counter[str] = Counter()
    read = used = filtered = cycles = failed_cycles = 0
    first_event: datetime | None = None
    last_event: datetime | None = None
    # Jails with an orphan drift_detected in the current cycle, so that the
    # deregistrations_refused that follows does not count the same orphan twice.
    orphan_cycle: Any = object()
    orphans: set[str] = set()

    def jail(name: str) -> _Jail:
        return per_jail.setdefault(name, _Jail())

    for line in lines:
        read += 1
        status, obj = parse_line(line)
        if obj is None:
            skipped[status] += 1
            continue
        if SELF_SERVICE_ID in (obj.get("jail"), obj.get("service_id")):
            skipped["other_event"] += 1  # the heartbeat service is not a jail (older logs)
            continue
        event = obj["event"]
        ts = parse_timestamp(obj.get("timestamp"))
        name = obj.get("jail")
        refused_jails: list[str] = []
        if event == events.DEREGISTRATIONS_REFUSED:
            listed = obj.get("jails")
            refused_jails = [j for j in listed if isinstance(j, str) and j] if isinstance(listed, list) else []
            ok = bool(refused_jails)
        elif event in _CYCLE_EVENTS:
            ok = True
        else:
            ok = isinstance(name, str) and bool(name)
        if ts is None or not ok:
            skipped["malformed"] += 1
            continue

        cycle = obj.get("cycle")
        if cycle != orphan_cycle:
            orphan_cycle, orphans = cycle, set()
        if event == events.DRIFT_DETECTED and obj.get("kind") == "orphan":
            orphans.add(name)

        if since is not None and ts < since:
            filtered += 1
            continue
        if event in _CYCLE_EVENTS:
            orphan_cycle, orphans = object(), set()
            cycles += 1
            failed_cycles += event == events.CYCLE_FAILED
        elif wanted is not None:
            if event == events.DEREGISTRATIONS_REFUSED:
                refused_jails = [j for j in refused_jails if j in wanted]
                if not refused_jails:
                    filtered += 1
                    continue
            elif name not in wanted:
                filtered += 1
                continue

        used += 1
        first_event = ts if first_event is None else min(first_event, ts)
        last_event = ts if last_event is None else max(last_event, ts)

        if event == events.DRIFT_DETECTED:
            kind = obj.get("kind")
            stats = jail(name).kind(kind if isinstance(kind, str) and kind else "unknown", ts)
            fields = obj.get("fields")
            if isinstance(fields, (dict, list)):
                stats.fields.update(f for f in fields if isinstance(f, str))
        elif event == events.JAIL_SKIPPED:
            reason = obj.get("reason")
            stats = jail(name).kind(reason if isinstance(reason, str) and reason else "unknown", ts)
            if stats.last == ts and obj.get("detail") is not None:
                stats.detail = _text(obj.get("detail"))
        elif event == events.HEALTH_CHANGED:
            stats = jail(name).kind("health", ts)
            check = obj.get("check")
            change = f"{_text(obj.get('from'))} -> {_text(obj.get('to'))}"
            stats.transitions[f"{_text(check)}: {change}" if check not in (None, "") else change] += 1
        elif event == events.DEREGISTRATIONS_REFUSED:
            for refused in dict.fromkeys(refused_jails):
                entry = jail(refused)
                entry.actions["refused"] += 1
                if refused not in orphans:
                    entry.kind("orphan", ts)
                    orphans.add(refused)
        elif event in _ACTION_EVENTS:
            entry = jail(name)
            entry.actions[_ACTION_EVENTS[event]] += 1
            if event == events.ACTION_FAILED and (entry.last_error is None or ts >= entry.last_error[0]):
                entry.last_error = (ts, _text(obj.get("error", "")))

    return Report(
        jails=tuple(_freeze(name, per_jail[name]) for name in sorted(per_jail)),
        totals=Totals(
            lines_read=read,
            events_used=used,
            lines_skipped=sum(skipped.values()),
            skipped=tuple((r, skipped[r]) for r in SKIP_REASONS),
            filtered_out=filtered,
            cycles=cycles,
            failed_cycles=failed_cycles,
            first_event=first_event,
            last_event=last_event,
        ),
    )


def _order(kind: str) -> tuple[int, str]:
    known = DRIFT_KINDS + INFO_KINDS
    return (known.index(kind), "") if kind in known else (len(known), kind)


def _ranked(counter: Counter[str]) -> tuple[tuple[str, int], ...]:
    return tuple(sorted(counter.items(), key=lambda item: (-item[1], item[0])))


def _freeze(name: str, entry: _Jail) -> JailReport:
    kinds = tuple(
        KindStats(
            kind=kind,
            count=stats.count,
            first_seen=stats.first,
            last_seen=stats.last,
            fields=_ranked(stats.fields),
            transitions=_ranked(stats.transitions),
            detail=stats.detail,
        )
        for kind, stats in sorted(entry.kinds.items(), key=lambda item: _order(item[0]))
    )
    return JailReport(
        jail=name,
        kinds=kinds,
        actions=tuple((a, entry.actions[a]) for a in ACTIONS),
        last_error=entry.last_error[1] if entry.last_error else None,
    )


# -- rendering --------------------------------------------------------------------------


def _iso(ts: datetime | None) -> str | None:
    return None if ts is None else ts.isoformat().replace("+00:00", "Z")


def report_as_json(report: Report) -> dict[str, Any]:
    """``{"jails": {jname: {...}}, "totals": {...}}``, plain JSON types."""

    def kind(k: KindStats) -> dict[str, Any]:
        out: dict[str, Any] = {"count": k.count, "first_seen": _iso(k.first_seen), "last_seen": _iso(k.last_seen)}
        if k.kind == "changed" or k.fields:
            out["fields"] = dict(k.fields)
        if k.kind == "health" or k.transitions:
            out["transitions"] = dict(k.transitions)
        if k.detail is not None:
            out["detail"] = k.detail
        return out

    t = report.totals
    return {
        "jails": {
            j.jail: {
                "drift": {k.kind: kind(k) for k in j.kinds},
                "actions": dict(j.actions),
                "last_error": j.last_error,
            }
            for j in report.jails
        },
        "totals": {
            "lines_read": t.lines_read,
            "events_used": t.events_used,
            "lines_skipped": t.lines_skipped,
            "skipped": dict(t.skipped),
            "filtered_out": t.filtered_out,
            "cycles": t.cycles,
            "failed_cycles": t.failed_cycles,
            "first_event": _iso(t.first_event),
            "last_event": _iso(t.last_event),
            "unreadable": [{"file": name, "error": reason} for name, reason in report.unreadable],
        },
    }


_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _safe(text: str) -> str:
    """Log content is untrusted: no terminal escapes or line breaks reach the output."""
    return _UNPRINTABLE.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _when(ts: datetime | None) -> str:
    return "-" if ts is None else ts.strftime("%Y-%m-%d %H:%M:%S")


def report_as_text(report: Report) -> str:
    """A table per jail, sorted by jail name, then the totals."""
    lines: list[str] = []
    for j in report.jails:
        lines.append(_safe(j.jail))
        if j.kinds:
            lines.append(f"  {'kind':<17} {'count':>6}  {'first seen (UTC)':<19}  {'last seen (UTC)':<19}  details")
            for k in j.kinds:
                details = []
                if k.fields:
                    details.append("fields: " + ", ".join(f"{_safe(f)} x{n}" for f, n in k.fields))
                if k.transitions:
                    details.append(", ".join(f"{_safe(t)} x{n}" for t, n in k.transitions))
                if k.detail:
                    details.append(_safe(k.detail))
                label = f"{k.kind} (info)" if k.kind in INFO_KINDS else k.kind
                lines.append(f"  {_safe(label):<17} {k.count:>6}  {_when(k.first_seen):<19}  {_when(k.last_seen):<19}  {'; '.join(details)}".rstrip())
        else:
            lines.append("  no drift logged")
        lines.append("  actions: " + ", ".join(f"{a} {n}" for a, n in j.actions))
        if j.last_error:
            lines.append(f"  last error: {_safe(j.last_error)}")
        lines.append("")
    if not report.jails:
        lines += ["no drift or actions in the selected log lines", ""]
    t = report.totals
    reasons = ", ".join(f"{r.replace('_', ' ')} {n}" for r, n in t.skipped if n)
    lines.append(
        f"totals: {t.lines_read} lines read, {t.events_used} events used, "
        f"{t.lines_skipped} lines skipped{f' ({reasons})' if reasons else ''}, {t.filtered_out} filtered out; "
        f"{t.cycles} cycles, {t.failed_cycles} failed"
    )
    if t.first_event is not None:
        lines.append(f"period: {_when(t.first_event)} .. {_when(t.last_event)} UTC")
    for name, reason in report.unreadable:
        lines.append(f"unreadable: {_safe(name)}: {_safe(reason)}")
    return "\n".join(lines)


# -- I/O -------------------------------------------------------------------------------


_OPENERS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}


def _open(path: Path) -> IO[str]:
    opener = _OPENERS.get(path.suffix.lower())
    if opener is not None:
        return opener(path, "rt", encoding="utf-8", errors="replace")
    if path.suffix.lower() == ".zst":
        raise ReportError(f"{path}: zstd-compressed logs are not supported; pipe them in: zstdcat {path} | jailsyncd report")
    return open(path, encoding="utf-8", errors="replace")


def _stdin_lines(stdin: IO[str]) -> Iterator[str]:
    buffer = getattr(stdin, "buffer", None)
    if buffer is None:  # a text stream without bytes underneath (tests, StringIO)
        yield from stdin
        return
    for raw in buffer:
        yield raw.decode("utf-8", errors="replace")


def _problem(exc: BaseException, lines: int) -> str:
    """Why a file could not be read (completely), for people."""
    after = f" after {lines} lines" if lines else ""
    if isinstance(exc, ReportError):
        return str(exc)
    if isinstance(exc, FileNotFoundError):
        return "log file not found"
    if isinstance(exc, PermissionError):
        return "log file not readable (permission denied)"
    if isinstance(exc, IsADirectoryError):
        return "is a directory, not a log file"
    if isinstance(exc, (EOFError, gzip.BadGzipFile, lzma.LZMAError)):
        return f"corrupt or truncated compressed log{after}: {exc}"
    if isinstance(exc, OSError):  # bz2 reports bad data as OSError("Invalid data stream")
        return f"cannot read log file{after}: {exc.strerror or exc}"
    raise exc


def read_lines(paths: Sequence[str | Path], stdin: IO[str] | None = None, unreadable: list[tuple[str, str]] | None = None) -> Iterator[str]:
    """The lines of ``paths`` in order (stdin for none or ``-``), newlines stripped.

    ``stdin`` None means ``sys.stdin`` at call time. A file that cannot be opened or
    decompressed (completely) becomes ``ReportError`` naming it, or, when
    ``unreadable`` is a list, ``(file, reason)`` appended to it and the next file read:
    the lines read before the problem have been yielded either way.
    """
    stdin = sys.stdin if stdin is None else stdin
    if not paths:
        paths = ["-"]
    for item in paths:
        name = "<stdin>" if str(item) == "-" else str(item)
        lines = 0
        try:
            if str(item) == "-":
                for line in _stdin_lines(stdin):
                    lines += 1
                    yield line.rstrip("\r\n")
                continue
            with _open(Path(item)) as fh:
                for line in fh:
                    lines += 1
                    yield line.rstrip("\r\n")
        except (ReportError, EOFError, OSError, lzma.LZMAError) as exc:
            reason = _problem(exc, lines)
            if isinstance(exc, ReportError):  # already names the file
                reason = reason.removeprefix(f"{name}: ")
            if unreadable is None:
                raise ReportError(f"{name}: {reason}") from None
            unreadable.append((name, reason))


def add_parser(subparsers: Any) -> None:
    """Add ``report`` to the ``jailsyncd`` sub-command parsers (``cli.build_parser``)."""
    p = subparsers.add_parser(
        "report",
        help="summarise drift per jail from jailsyncd's JSON logs",
        description="Read jailsyncd's JSON log lines (files, rotated .gz/.bz2/.xz files, or stdin) and report, "
        "per jail, each kind of drift (how often, first and last seen) and what jailsyncd did about it.",
    )
    p.add_argument("logfiles", nargs="*", metavar="LOGFILE", help="log files in any order ('-' or none: stdin)")
    # Parsed by ``run``, not by argparse, so that a bad value is one line (no usage
    # text) like every other jailsyncd error, with argparse's exit status 2.
    p.add_argument("--since", metavar="WHEN", help="only events since an ISO date/time (UTC unless a zone is given) or an age: 30m, 2h, 7d")
    p.add_argument("--jail", action="append", dest="jails", metavar="NAME", help="only this jail (repeatable)")
    p.add_argument("--json", action="store_true", help="print one JSON object {jails, totals}")
    p.add_argument("--html", type=Path, metavar="FILE", help="also write a self-contained web page with drift timelines to FILE (replaces the text output)")


def run(args: argparse.Namespace, stdin: IO[str] | None = None, stdout: IO[str] | None = None) -> int:
    """Run ``report`` for parsed ``args``; returns ``ExitCode.OK``.

    Raises ``ReportUsageError`` (nothing read or printed) for a bad ``--since``, and
    ``ReportError`` naming every unreadable file *after* printing the report of the
    rest (which lists them too).

    ``stdin``/``stdout`` None mean ``sys.stdin``/``sys.stdout`` at call time (not at
    import time, so pytest's ``capsys`` and redirections see the output).
    """
    stdout = sys.stdout if stdout is None else stdout
    since = getattr(args, "since", None)
    if isinstance(since, str):
        try:
            since = parse_since(since)
        except ValueError as exc:
            raise ReportUsageError(f"report: {exc}") from None
    unreadable: list[tuple[str, str]] = []
    lines: Iterable[str] = read_lines(getattr(args, "logfiles", None) or [], stdin, unreadable)
    html_path = getattr(args, "html", None)
    collector = None
    if html_path is not None:
        from jailsyncd import reporthtml  # imports this module: loaded on demand

        collector = reporthtml.Collector(since, getattr(args, "jails", None))
        lines = collector.watch(lines)
    report = aggregate(lines, since=since, jails=getattr(args, "jails", None))
    report = replace(report, unreadable=tuple(unreadable))
    if collector is not None:
        _write_html(Path(html_path), collector, stdout, report.unreadable)
    if getattr(args, "json", False):
        stdout.write(json.dumps(report_as_json(report), indent=2) + "\n")
    elif collector is None:
        stdout.write(report_as_text(report) + "\n")
    if unreadable:
        stdout.flush()
        names = "; ".join(_safe(f"{name}: {reason}") for name, reason in unreadable)
        raise ReportError(f"report incomplete, {len(unreadable)} log file(s) could not be read completely: {names}")
    return ExitCode.OK


def _write_html(path: Path, collector: Any, stdout: IO[str], unreadable: tuple[tuple[str, str], ...]) -> None:
    """``--html``: the page for the collected events, written whole or not at all."""
    from jailsyncd import reporthtml

    timeline = collector.timeline()
    page = reporthtml.render(timeline, generated=datetime.now(timezone.utc), unreadable=unreadable)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(page, encoding="utf-8")
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ReportError(f"{path}: cannot write the HTML report: {exc.strerror or exc}") from None
    stdout.write(f"wrote {path}: {len(timeline.events)} drift events for {len(timeline.jails)} jails\n")
