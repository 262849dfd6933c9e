"""Per-jail instructions from CBSD's ``tags`` column and config rules (pure).

An admin already sets per-jail text with ``cbsd jset jname=www1 tags="..."``; CBSD
never parses it. jailsyncd reads it as comma-separated items:

- ``consul.name=www`` sets the service name, ``consul.port=80`` the port (directive
  names and the ``on``/``off`` values are read without regard to case),
  ``consul=off`` (or ``false``/``no``/``0``... see ``_OFF``) opts the jail out;
- ``consul.check=tcp`` or ``consul.check=http:/path`` adds a TCP or HTTP probe of
  the service port (besides the ping every jail gets); may be given more than once;
- any other ``key=value`` becomes service meta (the key must be a valid Consul meta
  key: ``[A-Za-z0-9_-]{1,128}``, not starting with ``consul-``);
- a plain item becomes a Consul tag.

``[[rule]]`` tables in the config can set the same things for jnames matching a glob.
Called by ``desired``.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass

_META_KEY = re.compile(r"[A-Za-z0-9_-]{1,128}")
MAX_META_VALUE = 512
_OFF = {"off", "false", "no", "0", "disabled"}
_ON = {"on", "true", "yes", "1", "enabled"}


@dataclass(frozen=True)
class Rule:
    """A ``[[rule]]`` table: applies to every jname matching the glob ``match``."""

    match: str
    name: str | None = None
    port: int | None = None
    tags: tuple[str, ...] = ()
    meta: tuple[tuple[str, str], ...] = ()
    enabled: bool | None = None
    checks: tuple[str, ...] = ()

    def matches(self, jname: str) -> bool:
        return fnmatch.fnmatchcase(jname, self.match)


@dataclass(frozen=True)
class Directives:
    """The merged instructions for one jail. ``ignored`` explains dropped items."""

    name: str | None = None
    port: int | None = None
    enabled: bool = True
    tags: tuple[str, ...] = ()
    meta: tuple[tuple[str, str], ...] = ()
    ignored: tuple[str, ...] = ()
    checks: tuple[str, ...] = ()


_HTTP_PATH = re.compile(r"/[!-~]*")


def valid_check(value: str) -> bool:
    """``tcp``, or ``http:`` followed by an absolute path an HTTP request line can carry:
    printable ASCII without spaces (anything else percent-encoded), else every probe
    of it would fail inside the prober, not at the jail."""
    return value == "tcp" or (value.startswith("http:") and len(value) <= 512 and bool(_HTTP_PATH.fullmatch(value[5:])))


def valid_meta_key(key: str) -> bool:
    return bool(_META_KEY.fullmatch(key)) and not key.startswith("consul-")


def directives_for(jname: str, tags_column: str | None, rules: tuple[Rule, ...]) -> Directives:
    """Apply matching rules in file order, then the jail's own ``tags`` column; later
    settings win, so the per-jail column overrides a glob rule."""
    name: str | None = None
    port: int | None = None
    enabled = True
    tags: list[str] = []
    meta: dict[str, str] = {}
    ignored: list[str] = []
    checks: list[str] = []
    for rule in rules:
        if not rule.matches(jname):
            continue
        name = rule.name if rule.name is not None else name
        port = rule.port if rule.port is not None else port
        enabled = rule.enabled if rule.enabled is not None else enabled
        tags.extend(t for t in rule.tags if t not in tags)
        meta.update(rule.meta)
        checks.extend(c for c in rule.checks if c not in checks)
    for item in _items(tags_column):
        key, eq, value = item.partition("=")
        key, value = key.strip(), value.strip()
        # Directive names are read without regard to case, like their values: else
        # CONSUL=OFF would become a meta pair and leave the jail registered.
        if key.lower() == "consul" or key.lower().startswith("consul."):
            key = key.lower()
        if not eq:
            if item not in tags:
                tags.append(item)
        elif key == "consul.name":
            name = value or name
        elif key == "consul.port":
            parsed = _port(value)
            if parsed is None:
                ignored.append(f"{item}: port must be 1-65535")
            else:
                port = parsed
        elif key == "consul":
            if value.lower() in _OFF:
                enabled = False
            elif value.lower() in _ON:
                enabled = True
            else:
                ignored.append(f"{item}: expected consul=on or consul=off")
        elif key == "consul.check":
            if not valid_check(value):
                ignored.append(f"{item}: expected consul.check=tcp or consul.check=http:/path (the path in printable ASCII without spaces, the rest percent-encoded)")
            elif value not in checks:
                checks.append(value)
        elif key.startswith("consul."):
            ignored.append(f"{item}: unknown jailsyncd directive")
        elif not valid_meta_key(key):
            ignored.append(f"{item}: meta key must match [A-Za-z0-9_-]{{1,128}} and not start with consul-")
        elif len(value.encode()) > MAX_META_VALUE:
            ignored.append(f"{key}=...: meta value longer than {MAX_META_VALUE} bytes")
        else:
            meta[key] = value
    return Directives(name, port, enabled, tuple(tags), tuple(meta.items()), tuple(ignored), tuple(checks))


def _items(value: str | None) -> list[str]:
    if value is None:
        return []
    return [item.strip() for item in value.split(",") if item.strip() not in ("", "0")]


def _port(value: str) -> int | None:
    if value.isascii() and value.isdigit() and len(value) <= 5 and 1 <= int(value) <= 65535:
        return int(value)
    return None
