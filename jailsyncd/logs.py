"""structlog set-up: JSON lines (default) or a console format, to stderr.

Called by ``cli`` once per process (and again on reload). Event names are stable
snake_case words and keys are stable (``jail``, ``service_id``, ``action``, ``cycle``,
``kind``, ``fields``...), because admins grep them and ``report`` parses them.

As a last line of defence, every value equal to a registered secret (the Consul
token) is replaced by ``***`` before rendering; jailsyncd never logs the token on
purpose, this catches mistakes.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog

_SECRETS: set[str] = set()


def register_secret(value: str | None) -> None:
    if value:
        _SECRETS.add(value)


def _redact(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    if not _SECRETS:
        return event
    for key, value in event.items():
        if isinstance(value, str) and any(secret in value for secret in _SECRETS):
            text = value
            for secret in _SECRETS:
                text = text.replace(secret, "***")
            event[key] = text
    return event


def configure(fmt: str = "json", level: str = "info", stream: TextIO | None = None) -> None:
    renderer = structlog.processors.JSONRenderer(sort_keys=False) if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stderr),
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
