"""structlog set-up: JSON lines (default) or a console format, to stderr.

Called by ``cli`` once per process (and again on reload). Event names are stable
snake_case words and keys are stable (``jail``, ``service_id``, ``action``, ``cycle``,
``kind``, ``fields``...), because admins grep them and ``report`` parses them.

As a last line of defence, every value equal to a registered secret (the Consul
token) is replaced by ``***`` before rendering; jailsyncd never logs the token on
purpose, this catches mistakes.

The level, the timestamp and the JSON rendering are done by processors of this
module, not structlog's stock ones: a line costs about 5.5 µs instead of 9 and a
cold start logs two lines per jail; the bytes written are the same
(``tests/unit/test_logs.py`` compares them with the stock processors').
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from typing import Any, Callable, TextIO

import structlog

_SECRETS: set[str] = set()


def register_secret(value: str | None) -> None:
    if value:
        _SECRETS.add(value)


def _redact(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    if not _SECRETS:
        return event
    secrets = tuple(_SECRETS)
    for key, value in event.items():
        if isinstance(value, str) and any(secret in value for secret in secrets):
            text = value
            for secret in secrets:
                text = text.replace(secret, "***")
            event[key] = text
    return event


#: The second ``utc_timestamp`` formatted last, and its text: every line of a burst
#: (a cold start logs thousands) falls in the same second as the one before.
_LAST_SECOND: tuple[int, str] = (-1, "")


def utc_timestamp(ns: int | None = None) -> str:
    """``ns`` (nanoseconds since the epoch; default now) as structlog's
    ``TimeStamper(fmt="iso", utc=True)`` writes it: ``datetime.isoformat()`` of the
    UTC time, floored to the microsecond like ``datetime.now``, with ``Z`` for
    ``+00:00`` (no fraction when the microseconds are 0). The date and time of day
    are formatted once per second, not once per line."""
    global _LAST_SECOND
    micros = (time.time_ns() if ns is None else ns) // 1000
    second, fraction = divmod(micros, 1_000_000)
    last, text = _LAST_SECOND
    if second != last:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _LAST_SECOND = (second, text)  # one assignment: a thread reads either pair whole
    return f"{text}.{fraction:06d}Z" if fraction else f"{text}Z"


def _level_and_time(_: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
    """structlog's ``add_log_level`` and ``TimeStamper(fmt="iso", utc=True)`` in one."""
    event["level"] = "warning" if method == "warn" else "error" if method == "exception" else method
    event["timestamp"] = utc_timestamp()
    return event


def _fallback(value: Any) -> Any:
    """What structlog's ``JSONRenderer`` writes for a value JSON has no type for."""
    try:
        return value.__structlog__()
    except AttributeError:
        return repr(value)


def _encoder() -> Callable[[dict[str, Any]], str]:
    """``json.JSONEncoder(default=_fallback).encode`` for a dict, the same text: the
    standard library's C encoder made once (``encode`` makes one per call, half the
    cost of a line), without the check for circular values (a log line holds none;
    one would fail with ``RecursionError`` instead of ``ValueError``). Python's own
    encoder where the C one is missing."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return json.JSONEncoder(default=_fallback).encode
    encode = make(None, _fallback, json.encoder.encode_basestring_ascii, None, ": ", ", ", False, False, True)

    def one_shot(event: dict[str, Any]) -> str:
        return "".join(encode(event, 0))

    return one_shot


_ENCODE = _encoder()


def _render_json(logger: Any, method: str, event: dict[str, Any]) -> str:
    """The JSON line: level and time added, secrets redacted, encoded as structlog's
    ``JSONRenderer(sort_keys=False)`` encodes it, in one step (one call per line
    instead of four: a cold start of 5,000 jails logs some 10,000 lines)."""
    return _ENCODE(_redact(logger, method, _level_and_time(logger, method, event)))


class _LineWriter:
    """structlog's ``PrintLogger`` with one ``write`` per line: the line and its
    newline, then a flush (each line is out when logged, as with ``print(...,
    flush=True)``). One lock for every writer: lines never interleave."""

    _lock = threading.Lock()

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def msg(self, message: str) -> None:
        with self._lock:
            self._stream.write(message + "\n")
            self._stream.flush()

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg


def configure(fmt: str = "json", level: str = "info", stream: TextIO | None = None) -> None:
    processors: list[Any] = (
        [_render_json] if fmt == "json" else [_level_and_time, _redact, structlog.dev.ConsoleRenderer(colors=False)]
    )
    writer = _LineWriter(stream or sys.stderr)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=lambda *args: writer,
        cache_logger_on_first_use=False,
    )


def get_logger(**bound: Any) -> Any:
    return structlog.get_logger("jailsyncd").bind(**bound)


class _LibraryHandler(logging.Handler):
    """Routes the standard-library logging of libraries (APScheduler) into structlog,
    so that every line jailsyncd writes is in the one configured format."""

    def emit(self, record: logging.LogRecord) -> None:
        get_logger().log(record.levelno, "library_log", logger=record.name, message=record.getMessage())


def route_library_logs() -> None:
    root = logging.getLogger()
    if not any(isinstance(h, _LibraryHandler) for h in root.handlers):
        root.addHandler(_LibraryHandler())
    root.setLevel(logging.WARNING)
