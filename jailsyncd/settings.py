"""Load, validate and freeze jailsyncd's settings (TOML file plus CONSUL_* variables).

Called once by ``cli`` at start (and again on reload). The pipeline is: defaults,
strict decode of the file (unknown keys are errors naming the key path), fill what
the file leaves unset from the environment, validate. The result is immutable.
Every failure is a ``ConfigError`` whose one line names the file and the key.
The Consul token is never stored in plain text: only the token file's path, or a
``Secret`` that prints as ``***``.
"""

from __future__ import annotations

import difflib
import os
import re
import socket
import tomllib
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Mapping

from jailsyncd.errors import ConfigError
from jailsyncd.tagspec import Rule, valid_check, valid_meta_key

DEFAULT_CONFIG = Path("/usr/local/etc/jailsyncd.toml")


class Secret:
    """A string that never shows itself in ``repr``/``str`` (logs, tracebacks)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class HostSettings:
    #: Owner identity written to ``jailsyncd-owner``; default: the CBSD nodename
    #: (``$workdir/nodename``), else the host name. Must be unique per CBSD host.
    name: str = ""


@dataclass(frozen=True)
class CbsdSettings:
    #: CBSD's ``cbsd_workdir`` (``/usr/jails`` is CBSD's default).
    workdir: Path = Path("/usr/jails")
    #: Seconds to wait for a CBSD writer's lock before the read fails (CBSD's own
    #: writers wait 25 s; a reader only needs to outlast one short write).
    busy_timeout: float = 5.0


@dataclass(frozen=True)
class ConsulSettings:
    #: ``host:port``, or ``http://``/``https://host:port``; Consul's default agent port.
    address: str = "127.0.0.1:8500"
    #: ``agent``: services on the local agent. ``catalog``: one external node per jail
    #: through the catalog API (works with no local agent; see ``[catalog]``).
    mode: str = "agent"
    #: A file holding the ACL token (re-read every cycle); preferred over a variable.
    token_file: Path | None = None
    #: The token from ``CONSUL_HTTP_TOKEN``, when no token file is set.
    token: Secret | None = None
    datacenter: str | None = None
    #: Seconds before any one HTTP request to Consul is abandoned.
    timeout: float = 5.0
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    tls_server_name: str | None = None
    #: Verify the server's TLS certificate (only ever turn off for a test).
    verify: bool = True

    @property
    def scheme(self) -> str:
        return "https" if self.address.startswith("https://") else "http"

    @property
    def host_port(self) -> tuple[str, int]:
        return _split_address(self.address)

    def read_token(self) -> Secret | None:
        """The token to send: the token file's content (read now), else ``token``."""
        if self.token_file is None:
            return self.token
        return Secret(_read_token_file(self.token_file))


@dataclass(frozen=True)
class SyncSettings:
    #: Seconds between reconcile cycles in ``run``.
    interval: float = 30.0
    #: More deregistrations than this in one cycle are refused unless ``--force``.
    max_deregistrations: int = 10
    #: Register a jail's first IPv6 address rather than its first IPv4.
    prefer_ipv6: bool = False
    #: Up to this much random delay is added to each periodic cycle, so that many
    #: hosts started together do not hit Consul in the same second.
    jitter: float = 2.0
    #: How often ``run`` checks the CBSD node DB and its ``-wal`` for changes (a stat
    #: of two files; a change starts a cycle at once).
    watch_interval: float = 1.0
    #: After consecutive failed cycles the retry delay doubles from 1 s up to this.
    backoff_max: float = 120.0
    #: Deregister everything this host owns when ``run`` stops (SIGTERM/SIGINT).
    #: Off by default: registrations stay, and health shows the daemon is gone.
    deregister_on_stop: bool = False


@dataclass(frozen=True)
class CatalogSettings:
    #: Node name template for ``mode = "catalog"``: ``{fqdn}`` (the jail's
    #: host_hostname, or its jname when unset), ``{jname}``, ``{host}`` (the CBSD node
    #: name). Each dot-separated label is made DNS-safe.
    node_name: str = "{fqdn}"
    #: Node meta ``external-probe``: true lets consul-esm ping the jails, and then
    #: jailsyncd writes no node check of its own.
    external_probe: bool = False
    #: ``per-jail``: services named as in agent mode. ``article``: every jail is one
    #: instance of service ``jail`` tagged with the CBSD host's name and ``jail``
    #: (the layout of the usual CBSD hook scripts).
    layout: str = "per-jail"
    #: The CBSD host's own tag in the ``article`` layout; default: this machine's
    #: host name (on FreeBSD usually its FQDN, as set in rc.conf).
    host_tag: str = ""


@dataclass(frozen=True)
class HealthSettings:
    #: Probe every registered jail and publish the result as Consul checks.
    enabled: bool = True
    #: Time between probe rounds (each round probes every jail at once).
    interval: float = 10.0
    #: How long a round waits for replies; must be below ``interval``.
    timeout: float = 1.0
    #: Echo requests per address and round; one reply is enough to count as up.
    count: int = 2
    #: Consecutive successful rounds before a check turns passing.
    success_before_passing: int = 1
    #: Consecutive failed rounds before a check turns critical (anti-flap).
    failures_before_critical: int = 3
    #: TTL of each jail's check. Statuses are written only when they change, plus one
    #: refresh per check at half this TTL; the daemon's death is signalled by the
    #: heartbeat instead, so this can be long.
    ttl: float = 3600.0
    #: TTL of the ``jailsyncd`` self-service heartbeat, refreshed every third of it.
    #: Every jail service has an alias check on it: if the daemon dies, all of them
    #: turn critical within this time, at the cost of one write per refresh.
    heartbeat_ttl: float = 30.0


@dataclass(frozen=True)
class MetricsSettings:
    #: ``host:port`` for Prometheus metrics (``/metrics``) and ``/healthz``; empty: off.
    listen: str = ""


@dataclass(frozen=True)
class LogSettings:
    #: ``json`` (one object per line, for machines and ``report``) or ``console``.
    format: str = "json"
    level: str = "info"


@dataclass(frozen=True)
class Settings:
    host: HostSettings = field(default_factory=HostSettings)
    cbsd: CbsdSettings = field(default_factory=CbsdSettings)
    consul: ConsulSettings = field(default_factory=ConsulSettings)
    sync: SyncSettings = field(default_factory=SyncSettings)
    log: LogSettings = field(default_factory=LogSettings)
    catalog: CatalogSettings = field(default_factory=CatalogSettings)
    health: HealthSettings = field(default_factory=HealthSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    rules: tuple[Rule, ...] = ()
    #: The file these settings came from (None: built-in defaults only).
    source: Path | None = None

    def redacted(self) -> dict[str, Any]:
        """The effective settings as plain data for the start-up log; no secrets."""
        return _plain(self)


_SECTIONS = {
    "host": HostSettings,
    "cbsd": CbsdSettings,
    "consul": ConsulSettings,
    "sync": SyncSettings,
    "log": LogSettings,
    "catalog": CatalogSettings,
    "health": HealthSettings,
    "metrics": MetricsSettings,
}
#: Durations that may be zero (every other duration must be above zero).
_MAY_BE_ZERO = {"sync.jitter"}
#: Keys that only the environment may set (never a file: a token does not belong there).
_ENV_ONLY = {("consul", "token")}
_MODES = ("agent", "catalog")
_LAYOUTS = ("per-jail", "article")
_LOG_FORMATS = ("json", "console")
_LOG_LEVELS = ("debug", "info", "warning", "error")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def load_settings(path: Path | None, env: Mapping[str, str] | None = None, *, required: bool = True) -> Settings:
    """Read ``path`` (if given) and the CONSUL_* variables of ``env`` into ``Settings``.

    ``required=False`` lets a missing file mean "defaults" (the default path on a host
    that has no config yet); an explicitly named file must exist.
    """
    env = os.environ if env is None else env
    data: dict[str, Any] = {}
    where = str(path) if path else "defaults"
    if path is not None:
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            if required:
                raise ConfigError(f"{path}: config file not found") from None
            path = None
        except PermissionError:
            raise ConfigError(f"{path}: config file not readable (permission denied)") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML: {exc}") from None
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from None
    return _build(data, env, where, path)


def _build(data: dict[str, Any], env: Mapping[str, str], where: str, path: Path | None) -> Settings:
    def fail(key: str, message: str) -> ConfigError:
        return ConfigError(f"{where}: {key}: {message}")

    known = set(_SECTIONS) | {"rule"}
    for key in data:
        if key not in known:
            raise fail(key, "unknown key" + _did_you_mean(key, known))
    sections: dict[str, Any] = {}
    for name, cls in _SECTIONS.items():
        raw = data.get(name, {})
        if not isinstance(raw, dict):
            raise fail(name, "must be a table")
        sections[name] = _decode_section(name, cls, raw, fail)
    consul = _fill_from_env(sections["consul"], set(data.get("consul", {})), env)
    cbsd = sections["cbsd"]
    host = sections["host"]
    if not sections["catalog"].host_tag:
        sections["catalog"] = CatalogSettings(**{**sections["catalog"].__dict__, "host_tag": socket.gethostname()})
    if not host.name:
        host = HostSettings(name=_default_host_name(cbsd.workdir))
    settings = Settings(
        host=host,
        cbsd=cbsd,
        consul=consul,
        sync=sections["sync"],
        log=sections["log"],
        catalog=sections["catalog"],
        health=sections["health"],
        metrics=sections["metrics"],
        rules=_decode_rules(data.get("rule", []), fail),
        source=path,
    )
    _validate(settings, fail)
    return settings


def _decode_section(name: str, cls: type, raw: dict[str, Any], fail) -> Any:
    allowed = {f.name: f for f in fields(cls)}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        dotted = f"{name}.{key}"
        if key not in allowed or (name, key) in _ENV_ONLY:
            hint = " (put the token in a file and set consul.token_file)" if (name, key) in _ENV_ONLY else ""
            raise fail(dotted, "unknown key" + (hint or _did_you_mean(key, set(allowed) - {"token"})))
        values[key] = _coerce(dotted, allowed[key], value, fail)
    return cls(**values)


def _coerce(dotted: str, fld: Any, value: Any, fail) -> Any:
    kind = str(fld.type)
    if "Path" in kind:
        if not isinstance(value, str) or not value:
            raise fail(dotted, f"expected a path string, got {value!r}")
        return Path(value)
    if kind == "float":  # every float setting is a duration
        return parse_duration(value, lambda msg: fail(dotted, msg), zero_ok=dotted in _MAY_BE_ZERO)
    if kind == "bool":
        if not isinstance(value, bool):
            raise fail(dotted, f"expected true or false, got {value!r}")
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail(dotted, f"expected an integer, got {value!r}")
        return value
    if not isinstance(value, str):
        raise fail(dotted, f"expected a string, got {value!r}")
    return value


def parse_duration(value: Any, fail, *, zero_ok: bool = False) -> float:
    """``"30s"``, ``"1m30s"``, ``"500ms"``, ``"2h"`` or a plain number of seconds."""
    if isinstance(value, bool):
        raise fail(f"expected a duration like \"30s\", got {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str) and value and _DURATION.sub("", value) == "":
        seconds = sum(float(n) * _UNIT[u] for n, u in _DURATION.findall(value))
    else:
        raise fail(f"expected a duration like \"30s\", \"1m30s\" or \"500ms\", got {value!r}")
    if not (0 <= seconds if zero_ok else 0 < seconds) or seconds >= 86400 * 7:
        raise fail(f"duration must be {'at least 0' if zero_ok else 'above 0'} and below a week, got {value!r}")
    return seconds


def _fill_from_env(consul: ConsulSettings, in_file: set[str], env: Mapping[str, str]) -> ConsulSettings:
    """CONSUL_* variables fill only the keys the file does not set."""
    updates: dict[str, Any] = {}

    def unset(key: str) -> bool:
        return key not in in_file

    def path_from(var: str) -> Path | None:
        return Path(env[var]) if env.get(var) else None

    if unset("address") and env.get("CONSUL_HTTP_ADDR"):
        updates["address"] = env["CONSUL_HTTP_ADDR"]
    if unset("token_file"):
        if env.get("CONSUL_HTTP_TOKEN_FILE"):
            updates["token_file"] = Path(env["CONSUL_HTTP_TOKEN_FILE"])
        elif env.get("CONSUL_HTTP_TOKEN"):
            updates["token"] = Secret(env["CONSUL_HTTP_TOKEN"])
    for key, var in (("ca_file", "CONSUL_CACERT"), ("cert_file", "CONSUL_CLIENT_CERT"), ("key_file", "CONSUL_CLIENT_KEY")):
        if unset(key) and path_from(var):
            updates[key] = path_from(var)
    if unset("tls_server_name") and env.get("CONSUL_TLS_SERVER_NAME"):
        updates["tls_server_name"] = env["CONSUL_TLS_SERVER_NAME"]
    if unset("verify") and env.get("CONSUL_HTTP_SSL_VERIFY", "").lower() in ("false", "0"):
        updates["verify"] = False
    if unset("datacenter") and env.get("CONSUL_DATACENTER"):
        updates["datacenter"] = env["CONSUL_DATACENTER"]
    if updates:
        consul = ConsulSettings(**{**consul.__dict__, **updates})
    return consul


def _decode_rules(raw: Any, fail) -> tuple[Rule, ...]:
    if not isinstance(raw, list):
        raise fail("rule", "must be an array of tables ([[rule]])")
    rules = []
    for index, table in enumerate(raw):
        key = f"rule[{index}]"
        if not isinstance(table, dict):
            raise fail(key, "must be a table")
        allowed = {"match", "name", "port", "tags", "meta", "enabled", "checks"}
        for k in table:
            if k not in allowed:
                raise fail(f"{key}.{k}", "unknown key" + _did_you_mean(k, allowed))
        match = table.get("match")
        if not isinstance(match, str) or not match:
            raise fail(f"{key}.match", "required: a glob on jname, e.g. \"www*\"")
        name = table.get("name")
        if name is not None and (not isinstance(name, str) or not name):
            raise fail(f"{key}.name", f"expected a non-empty string, got {name!r}")
        port = table.get("port")
        if port is not None and (isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535):
            raise fail(f"{key}.port", f"expected a port 1-65535, got {port!r}")
        tags = table.get("tags", [])
        if not isinstance(tags, list) or not all(isinstance(t, str) and t for t in tags):
            raise fail(f"{key}.tags", "expected a list of non-empty strings")
        meta = table.get("meta", {})
        if not isinstance(meta, dict):
            raise fail(f"{key}.meta", "expected a table of strings")
        for mk, mv in meta.items():
            if not valid_meta_key(mk):
                raise fail(f"{key}.meta.{mk}", "meta keys must match [A-Za-z0-9_-]{1,128} and not start with consul-")
            if not isinstance(mv, str) or len(mv.encode()) > 512:
                raise fail(f"{key}.meta.{mk}", "expected a string of at most 512 bytes")
        enabled = table.get("enabled")
        if enabled is not None and not isinstance(enabled, bool):
            raise fail(f"{key}.enabled", f"expected true or false, got {enabled!r}")
        checks = table.get("checks", [])
        if not isinstance(checks, list) or not all(isinstance(c, str) and valid_check(c) for c in checks):
            raise fail(f"{key}.checks", 'expected a list of "tcp" or "http:/path"')
        rules.append(Rule(match, name, port, tuple(tags), tuple(meta.items()), enabled, tuple(checks)))
    return tuple(rules)


def _validate(s: Settings, fail) -> None:
    if s.consul.mode not in _MODES:
        raise fail("consul.mode", f"expected one of {', '.join(_MODES)}, got {s.consul.mode!r}")
    try:
        s.consul.host_port
    except ValueError as exc:
        raise fail("consul.address", str(exc)) from None
    if s.catalog.layout not in _LAYOUTS:
        raise fail("catalog.layout", f"expected one of {', '.join(_LAYOUTS)}, got {s.catalog.layout!r}")
    try:
        s.catalog.node_name.format(fqdn="f", jname="j", host="h")
    except (KeyError, IndexError, ValueError) as exc:
        raise fail("catalog.node_name", f"only {{fqdn}}, {{jname}} and {{host}} may appear ({exc})") from None
    if s.log.format not in _LOG_FORMATS:
        raise fail("log.format", f"expected one of {', '.join(_LOG_FORMATS)}, got {s.log.format!r}")
    if s.log.level not in _LOG_LEVELS:
        raise fail("log.level", f"expected one of {', '.join(_LOG_LEVELS)}, got {s.log.level!r}")
    if s.metrics.listen:
        try:
            split_listen(s.metrics.listen)
        except ValueError as exc:
            raise fail("metrics.listen", str(exc)) from None
    h = s.health
    if h.timeout >= h.interval:
        raise fail("health.timeout", f"must be shorter than health.interval ({h.interval:g}s)")
    for key in ("count", "success_before_passing", "failures_before_critical"):
        if not 1 <= getattr(h, key) <= 100:
            raise fail(f"health.{key}", f"must be between 1 and 100, got {getattr(h, key)}")
    if h.ttl < 60 or h.ttl <= 2 * h.interval:
        raise fail("health.ttl", "must be at least 1m and more than twice health.interval")
    if h.heartbeat_ttl < 3:
        raise fail("health.heartbeat_ttl", "must be at least 3s")
    if s.sync.max_deregistrations < 0:
        raise fail("sync.max_deregistrations", "must be 0 or more")
    if not s.host.name or len(s.host.name) > 512:
        raise fail("host.name", "must be a non-empty string of at most 512 characters")
    if (s.consul.cert_file is None) != (s.consul.key_file is None):
        raise fail("consul.cert_file", "cert_file and key_file must be set together")
    if s.consul.token_file is not None:
        try:
            s.consul.read_token()
        except ValueError as exc:
            raise fail("consul.token_file", str(exc)) from None


def _split_address(address: str) -> tuple[str, int]:
    rest = address.removeprefix("http://").removeprefix("https://").rstrip("/")
    if not rest or "/" in rest:
        raise ValueError(f"expected host:port or http(s)://host:port, got {address!r}")
    default_port = 8501 if address.startswith("https://") else 8500
    if rest.startswith("["):
        host, bracket, tail = rest[1:].partition("]")
        if not bracket or (tail and not tail.startswith(":")):
            raise ValueError(f"expected [ipv6]:port, got {address!r}")
        port = tail.removeprefix(":")
        if tail == ":":
            raise ValueError(f"missing port after ':' in {address!r}")
    elif rest.count(":") == 1:
        host, _, port = rest.partition(":")
        if not port:
            raise ValueError(f"missing port after ':' in {address!r}")
    elif ":" in rest:
        raise ValueError(f"IPv6 addresses need brackets, e.g. [::1]:8500, got {address!r}")
    else:
        host, port = rest, ""
    if not host:
        raise ValueError(f"missing host in {address!r}")
    if not port:
        return host, default_port
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"bad port in {address!r}")
    return host, int(port)


def token_file_problem(path: Path | None) -> str | None:
    """Why a token file is too open (readable or writable by group or others, or owned
    by another user than root or us), or None. jailsyncd warns, it does not refuse:
    see docs/reliability.md."""
    if path is None:
        return None
    try:
        st = path.stat()
    except OSError:
        return None  # a missing file is reported where it is read
    problems = []
    if st.st_mode & 0o077:
        problems.append(f"mode {st.st_mode & 0o777:04o} lets group or others at it")
    if st.st_uid not in (0, os.geteuid()):
        problems.append(f"owned by uid {st.st_uid}")
    return "; ".join(problems) + " (chmod 600 and chown to the user jailsyncd runs as)" if problems else None


def split_listen(listen: str) -> tuple[str, int]:
    """``host:port`` (or ``[v6]:port``) for a listening socket; the port is required."""
    host, port = _split_address(listen)
    if not listen.rstrip("/").rsplit(":", 1)[-1].isdigit():
        raise ValueError(f"expected host:port, e.g. 127.0.0.1:9311, got {listen!r}")
    return host, port


def _read_token_file(path: Path) -> str:
    try:
        token = path.read_text().strip()
    except FileNotFoundError:
        raise ValueError(f"token file {path} does not exist") from None
    except PermissionError:
        raise ValueError(f"token file {path} is not readable (permission denied)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"token file {path} cannot be read: {exc.__class__.__name__}") from None
    if not token:
        raise ValueError(f"token file {path} is empty")
    return token


def _default_host_name(workdir: Path) -> str:
    """CBSD's own node name (``$workdir/nodename``), else this machine's host name."""
    try:
        name = (workdir / "nodename").read_text().strip()
    except (OSError, UnicodeDecodeError):
        name = ""
    return name or socket.gethostname()


def _did_you_mean(key: str, choices: set[str]) -> str:
    close = difflib.get_close_matches(key, sorted(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _plain(value: Any) -> Any:
    if is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, Secret):
        return "***"
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value
