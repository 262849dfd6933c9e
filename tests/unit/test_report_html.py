"""Unit tests for jailsyncd.reporthtml: log lines -> drift events -> one self-contained page."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from datetime import datetime, timezone

from jailsyncd.reporthtml import MAX_BUCKETS, Collector, Event, Timeline, bucket_size, render


def line(event: str, ts: str, **kw) -> str:
    return "Nov 28 06:00:00 node1 jailsyncd[1]: " + json.dumps({"event": event, "timestamp": ts, **kw})


LINES = [
    line("drift_detected", "2026-11-28T06:00:05Z", kind="missing", jail="www1"),
    line("service_registered", "2026-11-28T06:00:05Z", jail="www1"),
    line("drift_detected", "2026-11-28T06:10:00Z", kind="changed", jail="www1", fields={"address": {}}),
    line("jail_skipped", "2026-11-28T06:20:00Z", reason="conflict", jail="db1"),
    line("health_changed", "2026-11-28T07:00:00Z", jail="db1", check="ping", **{"from": "passing", "to": "critical"}),
    line("deregistrations_refused", "2026-11-28T08:00:00Z", count=2, jails=["a", "b", "a"]),
    line("action_failed", "2026-11-28T08:30:00Z", action="register", jail="www1", error="400"),
    line("drift_detected", "2026-11-28T09:00:00Z", kind="wobble", jail="x"),
    "garbage",
    line("drift_detected", "not a time", kind="missing", jail="www1"),
    line("drift_detected", "2026-11-28T09:00:00Z", kind="missing"),
]


def collect(lines=LINES, **kw) -> Timeline:
    c = Collector(**kw)
    assert list(c.watch(lines)) == list(lines), "lines pass through unchanged"
    return c.timeline()


def test_events_are_classified_like_the_text_report() -> None:
    t = collect()
    assert [(e.jail, e.kind) for e in t.events] == [
        ("www1", "missing"), ("www1", "changed"), ("db1", "conflict"), ("db1", "health"),
        ("a", "refused"), ("b", "refused"), ("www1", "failed"), ("x", "wobble"),
    ]
    assert t.kinds == ("missing", "changed", "conflict", "health", "refused", "failed", "wobble")
    assert t.jails == ("a", "b", "db1", "www1", "x")


def test_since_and_jail_select() -> None:
    t = collect(since=datetime(2026, 11, 28, 6, 15), jails=["www1", "b"])
    assert [(e.jail, e.kind) for e in t.events] == [("b", "refused"), ("www1", "failed")]


def test_bucket_size_fits_the_period() -> None:
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    for hours, size in ((0, 60), (1, 60), (2, 300), (24, 3600), (24 * 30, 86400), (24 * 3650, 604800)):
        got = bucket_size(t0, t0.replace(year=t0.year + hours // 8760) if hours >= 8760 else datetime.fromtimestamp(t0.timestamp() + hours * 3600, timezone.utc))
        assert got == size, (hours, got)
    assert 23 * 3600 / bucket_size(t0, datetime(2026, 1, 1, 23, tzinfo=timezone.utc)) < MAX_BUCKETS


def test_page_counts_and_marks() -> None:
    page = render(collect())
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    bars = re.findall(r'<rect class="bar" data-kind="(\w+)" data-count="(\d+)"', page)
    assert sum(int(n) for _, n in bars) == 8
    marks = re.findall(r'<g class="jail" data-jail="([^"]+)">(.*?)</g>', page, re.S)
    per_jail = {jail: re.findall(r'class="mark" data-kind="(\w+)" data-count="(\d+)"', body) for jail, body in marks}
    assert per_jail["www1"] == [("missing", "1"), ("changed", "1"), ("failed", "1")]
    assert per_jail["a"] == [("refused", "1")]
    assert "8 drift events for 5 jails" in page


def test_page_is_self_contained_and_escapes_log_content() -> None:
    evil = '<script src="http://evil.example/x.js"></script>'
    t = Timeline((Event(datetime(2026, 11, 28, tzinfo=timezone.utc), evil, "missing"), Event(datetime(2026, 11, 28, 1, tzinfo=timezone.utc), "ok", f"k{evil}")))
    page = render(t)
    assert "<script" not in page.lower()
    assert "&lt;script src=&quot;http://evil.example/x.js&quot;&gt;" in page
    # No external asset of any kind: no element or attribute that loads one, no CSS url() or @import.
    tags, attrs, styles = elements(page)
    assert not tags & {"script", "link", "img", "iframe", "object", "embed", "image", "use", "base"}
    assert not attrs & {"src", "href", "xlink:href", "srcset", "background"}
    styles.append(page.split("<style>", 1)[1].split("</style>", 1)[0])
    assert not any("url(" in style or "@import" in style for style in styles)


def elements(page: str) -> tuple[set[str], set[str], list[str]]:
    """Tag and attribute names of a page, and its style attributes, as an HTML parser sees them."""
    tags: set[str] = set()
    attrs: set[str] = set()
    styles: list[str] = []

    class Parser(HTMLParser):
        def handle_starttag(self, tag, attributes):
            tags.add(tag)
            attrs.update(name for name, _ in attributes)
            styles.extend(value or "" for name, value in attributes if name == "style")

    Parser().feed(page)
    return tags, attrs, styles


def test_empty_selection() -> None:
    page = render(Timeline(()))
    assert "No drift in the selected log lines." in page and "<svg" not in page
