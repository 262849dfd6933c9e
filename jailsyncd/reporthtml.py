"""``jailsyncd report --html FILE``: the drift in jailsyncd's logs as one self-contained web page.

Called by ``report.run``, which feeds it the same log lines as the text report
(``Collector.watch`` passes them through while it keeps the events it needs). The
page has no external assets (inline CSS and SVG, no script, no fonts, no images), so
it opens anywhere, also offline and from a mail attachment.

What it shows, over time buckets sized so that the whole period fits in at most
``MAX_BUCKETS`` columns (1 min, 5 min, 15 min, 1 h, 6 h, 1 day or 1 week each):

- per kind, how many drift events each bucket holds (a stacked bar chart and a
  table);
- per jail, a timeline: one mark per bucket and kind in which that jail drifted,
  its count and time range in the mark's tooltip.

Events, per jail (the same classification as the text report): ``drift_detected``
(its ``kind``: missing, changed, orphan), ``jail_skipped`` (its ``reason``: conflict,
unaddressable, source_error, opted_out), ``health_changed`` (``health``),
``deregistrations_refused`` (``refused``, once per jail it lists) and
``action_failed`` (``failed``). ``--since`` and ``--jail`` apply as in the text
report. Log content is untrusted: every string is HTML-escaped.

Pure: ``Collector.add`` (one line), ``Collector.timeline`` and ``render``.
"""

from __future__ import annotations

import html
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Iterable, Iterator

from jailsyncd import events
from jailsyncd.report import DRIFT_KINDS, INFO_KINDS, parse_line, parse_timestamp

#: At most this many time buckets (columns) on the page.
MAX_BUCKETS = 72
BUCKET_SIZES = (60, 300, 900, 3600, 6 * 3600, 86400, 7 * 86400)
#: Kinds in display order; unknown ones follow, alphabetically.
KINDS = (*DRIFT_KINDS, "refused", "failed", *INFO_KINDS)
COLOURS = {
    "missing": "#2b8cbe",
    "changed": "#e6a100",
    "orphan": "#d7301f",
    "conflict": "#7b3294",
    "unaddressable": "#8c8c8c",
    "source_error": "#67001f",
    "health": "#1a9850",
    "refused": "#000000",
    "failed": "#e7298a",
    "opted_out": "#c7c7c7",
}
OTHER_COLOUR = "#4d4d4d"


@dataclass(frozen=True)
class Event:
    ts: datetime
    jail: str
    kind: str


@dataclass(frozen=True)
class Timeline:
    """The events of the selected log lines, in the order they were read."""

    events: tuple[Event, ...]

    @property
    def kinds(self) -> tuple[str, ...]:
        seen = {e.kind for e in self.events}
        return tuple(k for k in KINDS if k in seen) + tuple(sorted(seen - set(KINDS)))

    @property
    def jails(self) -> tuple[str, ...]:
        return tuple(sorted({e.jail for e in self.events}))


class Collector:
    """Keeps the events of the log lines it is given; ``since`` (aware or naive UTC)
    and ``jails`` select them like the text report's ``--since`` and ``--jail``."""

    def __init__(self, since: datetime | None = None, jails: Iterable[str] | None = None) -> None:
        self.since = since.replace(tzinfo=timezone.utc) if since is not None and since.tzinfo is None else since
        self.wanted = None if jails is None else frozenset(jails)
        self._events: list[Event] = []

    def watch(self, lines: Iterable[str]) -> Iterator[str]:
        """Pass ``lines`` through, keeping their events on the way."""
        for line in lines:
            self.add(line)
            yield line

    def add(self, line: str) -> None:
        _, obj = parse_line(line)
        if obj is None:
            return
        ts = parse_timestamp(obj.get("timestamp"))
        if ts is None or (self.since is not None and ts < self.since):
            return
        event, name = obj["event"], obj.get("jail")
        if event == events.DEREGISTRATIONS_REFUSED:
            listed = obj.get("jails")
            for jail in dict.fromkeys(j for j in (listed if isinstance(listed, list) else []) if isinstance(j, str) and j):
                self._keep(ts, jail, "refused")
            return
        if not isinstance(name, str) or not name:
            return
        if event == events.DRIFT_DETECTED:
            kind = obj.get("kind")
        elif event == events.JAIL_SKIPPED:
            kind = obj.get("reason")
        elif event == events.HEALTH_CHANGED:
            kind = "health"
        elif event == events.ACTION_FAILED:
            kind = "failed"
        else:
            return
        self._keep(ts, name, kind if isinstance(kind, str) and kind else "unknown")

    def _keep(self, ts: datetime, jail: str, kind: str) -> None:
        if self.wanted is None or jail in self.wanted:
            self._events.append(Event(ts, jail, kind))

    def timeline(self) -> Timeline:
        return Timeline(tuple(self._events))


def bucket_size(first: datetime, last: datetime) -> int:
    """Seconds per bucket: the smallest size that fits the period in ``MAX_BUCKETS``."""
    span = (last - first).total_seconds()
    return next((size for size in BUCKET_SIZES if span / size < MAX_BUCKETS), BUCKET_SIZES[-1])


def _start(ts: datetime, size: int) -> datetime:
    epoch = int(ts.timestamp())
    return datetime.fromtimestamp(epoch - epoch % size, timezone.utc)


def _label(ts: datetime, size: int) -> str:
    return ts.strftime("%Y-%m-%d" if size >= 86400 else "%Y-%m-%d %H:%M")


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


_CSS = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px;color:#222;background:#fff}
h1{font-size:20px;margin:0 0 4px} h2{font-size:16px;margin:28px 0 8px}
p.meta{color:#555;margin:0 0 12px}
.legend span{display:inline-block;margin:0 14px 4px 0}
.legend i{display:inline-block;width:11px;height:11px;margin-right:5px;vertical-align:-1px}
table{border-collapse:collapse;font-size:12px} th,td{border:1px solid #ddd;padding:2px 6px;text-align:right}
th:first-child,td:first-child{text-align:left} thead th{background:#f4f4f4}
svg text{font:11px system-ui,sans-serif;fill:#333}
.scroll{overflow-x:auto}
"""


def render(
    timeline: Timeline, *, title: str = "jailsyncd drift report", generated: datetime | None = None, unreadable: Iterable[tuple[str, str]] = ()
) -> str:
    """The page: a complete HTML document with everything inline. ``unreadable``:
    ``(file, reason)`` for each log file that could not be read completely; the page
    says it lacks them (it travels without the error line ``report`` printed)."""
    events = timeline.events
    kinds = timeline.kinds
    head = f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{_e(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n<h1>{_e(title)}</h1>\n'
    missing = list(unreadable)
    if missing:
        items = "".join(f"<li>{_e(name)}: {_e(reason)}</li>" for name, reason in missing)
        head += f'<div class="meta" id="unreadable"><p>Incomplete: {len(missing)} log file(s) could not be read completely; this page shows the rest.</p><ul>{items}</ul></div>\n'
    when = f" Generated {generated.strftime('%Y-%m-%d %H:%M:%S')} UTC." if generated else ""
    if not events:
        return head + f'<p class="meta" id="summary">No drift in the selected log lines.{when}</p>\n</body>\n</html>\n'
    first, last = min(e.ts for e in events), max(e.ts for e in events)
    size = bucket_size(first, last)
    start = _start(first, size)
    count = int((_start(last, size) - start).total_seconds() // size) + 1
    starts = [start + timedelta(seconds=i * size) for i in range(count)]

    def index(ts: datetime) -> int:
        return int((ts - start).total_seconds() // size)

    per_kind: Counter[tuple[int, str]] = Counter((index(e.ts), e.kind) for e in events)
    out = [head]
    out.append(
        f'<p class="meta" id="summary">{len(events)} drift events for {len(timeline.jails)} jails, '
        f"{first.strftime('%Y-%m-%d %H:%M:%S')} to {last.strftime('%Y-%m-%d %H:%M:%S')} UTC, "
        f"in buckets of {_e(_span(size))}.{when}</p>\n"
    )
    out.append('<div class="legend">' + "".join(f'<span><i style="background:{COLOURS.get(k, OTHER_COLOUR)}"></i>{_e(k)}</span>' for k in kinds) + "</div>\n")

    # -- per kind over time: stacked bars --------------------------------------------
    width, height, left, bottom = 900, 220, 44, 36
    col = (width - left - 10) / count
    peak = max(sum(per_kind[(i, k)] for k in kinds) for i in range(count))
    scale = (height - bottom - 10) / peak
    svg = [f'<svg id="kinds-chart" width="{width}" height="{height}" role="img" aria-label="drift events per kind over time">']
    svg.append(f'<text x="{left - 6}" y="14" text-anchor="end">{peak}</text><text x="{left - 6}" y="{height - bottom}" text-anchor="end">0</text>')
    svg.append(f'<line x1="{left}" y1="{height - bottom}" x2="{width - 10}" y2="{height - bottom}" stroke="#999"/>')
    for i in range(count):
        y = height - bottom
        for k in kinds:
            n = per_kind[(i, k)]
            if not n:
                continue
            h = n * scale
            y -= h
            svg.append(
                f'<rect class="bar" data-kind="{_e(k)}" data-count="{n}" x="{left + i * col + 1:.1f}" y="{y:.1f}" width="{max(col - 2, 1):.1f}" height="{h:.1f}" '
                f'fill="{COLOURS.get(k, OTHER_COLOUR)}"><title>{_e(_label(starts[i], size))}: {n} {_e(k)}</title></rect>'
            )
    for i in _ticks(count):
        if left + i * col + 100 <= width:  # a label must fit
            svg.append(f'<text x="{left + i * col:.1f}" y="{height - bottom + 14}">{_e(_label(starts[i], size))}</text>')
    svg.append("</svg>")
    out.append('<h2>Drift per kind over time</h2>\n<div class="scroll">' + "".join(svg) + "</div>\n")

    # -- the same as a table ---------------------------------------------------------------
    rows = ['<table id="kinds-table"><thead><tr><th>from (UTC)</th>' + "".join(f"<th>{_e(k)}</th>" for k in kinds) + "<th>all</th></tr></thead><tbody>"]
    for i in range(count):
        cells = [per_kind[(i, k)] for k in kinds]
        if any(cells):
            rows.append(f"<tr><td>{_e(_label(starts[i], size))}</td>" + "".join(f"<td>{n or ''}</td>" for n in cells) + f"<td>{sum(cells)}</td></tr>")
    totals = [sum(per_kind[(i, k)] for i in range(count)) for k in kinds]
    rows.append("<tr><th>total</th>" + "".join(f"<th>{n}</th>" for n in totals) + f"<th>{sum(totals)}</th></tr></tbody></table>")
    out.append("<details><summary>As a table</summary>\n" + "".join(rows) + "\n</details>\n")

    # -- per jail: a timeline row each ------------------------------------------------------
    jails = timeline.jails
    row, label = 18, 170
    t_width = 900
    cell = (t_width - label - 10) / count
    marks: dict[tuple[str, int, str], list[datetime]] = {}
    for e in events:
        marks.setdefault((e.jail, index(e.ts), e.kind), []).append(e.ts)
    # Looked up per jail and per cell below: grouped once, not rescanned per mark.
    by_jail: dict[str, list[tuple[str, int, str]]] = {}
    for key in marks:
        by_jail.setdefault(key[0], []).append(key)
    per_cell = Counter((key[0], key[1]) for key in marks)
    svg = [f'<svg id="jail-timeline" width="{t_width}" height="{len(jails) * row + 30}" role="img" aria-label="drift per jail over time">']
    for r, jail in enumerate(jails):
        y = r * row
        svg.append(f'<g class="jail" data-jail="{_e(jail)}"><text x="{label - 8}" y="{y + 13}" text-anchor="end">{_e(_short(jail))}</text>')
        svg.append(f'<line x1="{label}" y1="{y + 9}" x2="{label + count * cell}" y2="{y + 9}" stroke="#eee"/>')
        here = sorted(by_jail.get(jail, ()), key=lambda k: (k[1], kinds.index(k[2])))
        stack: Counter[int] = Counter()
        for _, i, kind in here:
            times = marks[(jail, i, kind)]
            h = (row - 4) / max(1, per_cell[(jail, i)])
            y0 = y + 1 + stack[i] * h
            stack[i] += 1
            tip = f"{jail}: {len(times)} {kind}, {min(times).strftime('%Y-%m-%d %H:%M:%S')} to {max(times).strftime('%H:%M:%S')} UTC"
            svg.append(
                f'<rect class="mark" data-kind="{_e(kind)}" data-count="{len(times)}" x="{label + i * cell + 1:.1f}" y="{y0:.1f}" width="{max(cell - 2, 1):.1f}" height="{max(h - 1, 1):.1f}" '
                f'fill="{COLOURS.get(kind, OTHER_COLOUR)}"><title>{_e(tip)}</title></rect>'
            )
        svg.append("</g>")
    base = len(jails) * row + 14
    for i in _ticks(count, 6):
        if label + i * cell + 100 <= t_width:
            svg.append(f'<text x="{label + i * cell:.1f}" y="{base}">{_e(_label(starts[i], size))}</text>')
    svg.append("</svg>")
    out.append("<h2>Drift per jail</h2>\n<p class=\"meta\">One mark per jail, kind and bucket; hover for counts and times.</p>\n")
    out.append('<div class="scroll">' + "".join(svg) + "</div>\n")

    # -- per jail totals ---------------------------------------------------------------------
    per_jail: Counter[tuple[str, str]] = Counter((e.jail, e.kind) for e in events)
    rows = ['<table id="jails-table"><thead><tr><th>jail</th>' + "".join(f"<th>{_e(k)}</th>" for k in kinds) + "</tr></thead><tbody>"]
    for jail in jails:
        rows.append(f'<tr data-jail="{_e(jail)}"><td>{_e(jail)}</td>' + "".join(f"<td>{per_jail[(jail, k)] or ''}</td>" for k in kinds) + "</tr>")
    rows.append("</tbody></table>")
    out.append("<h2>Per jail, whole period</h2>\n" + "".join(rows) + "\n</body>\n</html>\n")
    return "".join(out)


def _short(name: str, limit: int = 26) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "\u2026"


def _span(size: int) -> str:
    return {60: "1 minute", 300: "5 minutes", 900: "15 minutes", 3600: "1 hour", 21600: "6 hours", 86400: "1 day", 604800: "1 week"}[size]


def _ticks(count: int, most: int = 8) -> range:
    return range(0, count, max(1, -(-count // most)))
