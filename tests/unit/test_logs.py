"""The log pipeline of ``logs.configure`` (its own timestamp, level and JSON steps,
fused for speed) writes exactly what structlog's stock processors wrote before:
same keys, same order, same values, same ISO UTC timestamp format. Pure: lines are
rendered into a StringIO."""

from __future__ import annotations

import io
import json
import logging
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import pytest
import structlog

from jailsyncd import logs

STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?Z")


def _stock(fmt: str, stream: io.StringIO) -> None:
    """The pipeline ``logs.configure`` had before: structlog's own processors."""
    renderer = structlog.processors.JSONRenderer(sort_keys=False) if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[structlog.processors.add_log_level, structlog.processors.TimeStamper(fmt="iso", utc=True), logs._redact, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )


def _lines(configure: Callable[[io.StringIO], None], emit: Callable[[Any], None]) -> list[str]:
    out = io.StringIO()
    configure(out)
    emit(logs.get_logger(cycle=7))
    return [STAMP.sub("<ts>", line) for line in out.getvalue().splitlines()]


EVENTS: list[tuple[str, Callable[[Any], None]]] = [
    ("plain", lambda log: log.info("service_registered", jail="web1", service_id="jailsyncd-web1")),
    ("bound and nested", lambda log: log.bind(run=1).info("drift_detected", kind="changed", fields={"tags": {"from": ["a"], "to": ["b"]}})),
    ("levels", lambda log: (log.debug("a"), log.warning("b", n=1), log.error("c"), log.critical("d"), log.log(logging.WARNING, "e"))),
    ("not JSON types", lambda log: log.info("odd", path=Path("/var/db"), ids=frozenset({"x"}), pair=("a", 1), none=None, ratio=0.5, ok=True)),
    ("unicode", lambda log: log.info("jail_note", detail="caf\u00e9 \u2192 \u00fc", jail="j\u00f6")),
    ("event key order", lambda log: log.info("x", event_extra=1, level_hint="y", cycle=8)),
]


@pytest.mark.parametrize("fmt", ["json", "console"])
@pytest.mark.parametrize("name,emit", EVENTS, ids=[name for name, _ in EVENTS])
def test_lines_are_the_ones_structlogs_stock_processors_wrote(fmt: str, name: str, emit: Callable[[Any], None]) -> None:
    ours = _lines(lambda out: logs.configure(fmt, "debug", stream=out), emit)
    stock = _lines(lambda out: _stock(fmt, out), emit)
    assert ours == stock and ours
    assert all("<ts>" in line for line in ours)


def test_a_registered_secret_is_redacted_as_before(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logs, "_SECRETS", set())
    logs.register_secret("s3cr3t-token")
    def emit(log: Any) -> None:
        return log.info("x", error="denied for s3cr3t-token", other="fine", n=3)
    ours = _lines(lambda out: logs.configure("json", "info", stream=out), emit)
    assert ours == _lines(lambda out: _stock("json", out), emit)
    assert "s3cr3t" not in ours[0] and json.loads(ours[0])["error"] == "denied for ***"


@pytest.mark.parametrize(
    "ns",
    [
        0,
        1_000_000_000,  # a whole second: no fraction, as isoformat writes it
        1_796_000_000_123_456_789,  # floored to the microsecond
        1_796_000_000_000_000_999,  # below a microsecond: still no fraction
        1_796_000_000_999_999_999,
        1_796_000_001_000_001_000,  # the next second, one microsecond in
        951_782_400_000_000_000,  # 2000-02-29
        4_102_444_799_500_000_000,  # 2099-12-31T23:59:59.5
    ],
)
def test_utc_timestamp_is_isoformat_of_the_utc_time(ns: int) -> None:
    seconds, rest = divmod(ns, 1_000_000_000)
    expected = datetime.fromtimestamp(seconds, timezone.utc).replace(microsecond=rest // 1000).isoformat().replace("+00:00", "Z")
    assert logs.utc_timestamp(ns) == expected


def test_utc_timestamp_of_now_is_now() -> None:
    before = datetime.now(timezone.utc)
    stamp = logs.utc_timestamp()
    after = datetime.now(timezone.utc)
    assert STAMP.fullmatch(stamp)
    assert before <= datetime.fromisoformat(stamp.replace("Z", "+00:00")) <= after


@pytest.mark.parametrize(
    "event",
    [
        {"cycle": 1, "jail": "web1", "event": "service_registered", "level": "info", "timestamp": "2026-11-29T23:00:00Z"},
        {"fields": {"tags": {"from": ["a"], "to": ["b"]}}, "n": 1.5, "ok": False, "none": None, "text": "caf\u00e9 \"q\" \\ \n"},
        {"path": Path("/var/db"), "ids": frozenset({"x"}), "pair": ("a", 1)},
    ],
)
def test_the_encoder_writes_what_jsons_own_encoder_writes_with_or_without_its_c_part(event: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    expected = json.dumps(event, default=logs._fallback)
    assert logs._encoder()(event) == expected
    monkeypatch.setattr(json.encoder, "c_make_encoder", None)
    assert logs._encoder()(event) == expected
