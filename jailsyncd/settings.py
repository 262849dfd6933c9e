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
import ipaddress
import os
import re
import socket
import string
import tomllib
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from jailsyncd.errors import ConfigError
from jailsyncd.model import RESERVED_META
from jailsyncd.tagspec import Rule, valid_check, valid_meta_key

#: Builds the error for a settings key: ``fail(key, message)``.
_Fail = Callable[[str, str], ConfigError]

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
    #: Owner identity written to ``jailsyncd-owner``. Empty: CBSD's node name
    #: (``$workdir/nodename``), read by ``adapters.cbsd`` on every cycle; while it
    #: cannot be read nothing is written (never a guess such as the host name).
    #: Must be unique per CBSD host.
    name: str = ""


@dataclass(frozen=True)
class CbsdSettings:
    #: CBSD's ``cbsd_workdir`` (``/usr/jails`` is CBSD's default).
    workdir: Path = Path("/usr/jails")
    #: Seconds to wait for a CBSD writer's lock before the read fails (CBSD's own
    #: writers wait 25 s; a reader only needs to outlast one short write).
    busy_timeout: float = 5.0


#: How long Consul's servers hold an RPC while there is no leader (rpc_hold_timeout,
#: 7 s, agent/consul/rpc.go) before answering "No cluster leader".
CONSUL_RPC_HOLD = 7.0


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
    #: Seconds before any one HTTP request to Consul is abandoned: longer than
    #: ``CONSUL_RPC_HOLD``, so that a write held during a leader election is not
    #: given up while it may still commit (docs/reliability.md, "Timeouts").
    timeout: float = 10.0
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
    #: More deregistrations than this in one cycle (a burst) need a confirming read
    #: under ``run`` (``confirm_after``); ``once``/``plan`` refuse them unless ``--force``.
    max_deregistrations: int = 10
    #: A burst is applied when a read at least this long after the first one that
    #: planned it plans nearly the same deregistrations (``plan.plan``); 0: never
    #: (refused until ``--force``, as before 2026-11).
    confirm_after: float = 10.0
    #: Register a jail's first IPv6 address rather than its first IPv4.
    prefer_ipv6: bool = False
    #: Up to this much random delay is added to each periodic cycle, so that many
    #: hosts started together do not hit Consul in the same second.
    jitter: float = 2.0
    #: How ``run`` learns that the CBSD node DB changed: ``auto`` (the kernel's file
    #: events, inotify or kqueue, plus the stat every ``watch_interval`` as a safety
    #: net; the stat alone where there are none) or ``poll`` (the stat only).
    watch: str = "auto"
    #: How often ``run`` checks the CBSD node DB and its ``-wal`` for changes (a stat
    #: of two files; a change starts a cycle at once).
    watch_interval: float = 1.0
    #: ``run`` watches Consul with a blocking query (one long poll to the servers per
    #: change, or per 5 minutes when nothing changes) and repairs a change made there
    #: by hand within about a second; false: only the periodic cycle notices it.
    watch_consul: bool = True
    #: With the Consul watch running, a periodic cycle reads Consul again only when
    #: the watch saw a change there, or at least this long after the last full read
    #: (the safety net); a periodic cycle with nothing changed on either side reads
    #: nothing at all.
    resync: float = 300.0
    #: After consecutive failed cycles the retry delay doubles from 1 s up to this.
    backoff_max: float = 120.0
    #: Deregister everything this host owns when ``run`` stops (SIGTERM/SIGINT).
    #: Off by default: registrations stay, and health shows the daemon is gone.
    deregister_on_stop: bool = False
    #: After ``run`` starts, services of jails with ``astart=1`` that CBSD has not
    #: started yet are not deregistered for this long (CBSD starts them one by one
    #: after boot); 0 turns it off. Registrations are never delayed.
    startup_grace: float = 300.0
    #: Find addresses for running environments whose ``ip4_addr`` has none (``DHCP``,
    #: ``REALDHCP``): their own dhclient leases, then ``dhcp_leases``, then the host's
    #: neighbor table (ARP/NDP), matched by the MACs CBSD records. Read-only: nothing
    #: is sent to find them.
    discover_addresses: bool = True
    #: Lease files of DHCP servers on this host (dnsmasq, ISC dhcpd, Kea memfile CSV;
    #: the format is recognised from the content), read for address discovery.
    dhcp_leases: tuple[Path, ...] = ()


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
    #: With ``[health]`` on, write ``critical`` to every check of this host's jails when
    #: ``run`` stops: catalog checks have no TTL, so a host that shuts down would
    #: otherwise leave its jails passing. A restart then shows them critical for a
    #: few seconds, until the first probe round.
    critical_on_stop: bool = True


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
    #: Echo requests per second, all jails together; 0: no limit. Unset: from the
    #: platform: on FreeBSD below ``net.inet.icmp.icmplim`` (read at start; the host's
    #: kernel drops echo replies above it, and it answers for every non-VNET jail),
    #: elsewhere no limit.
    rate_limit: int | None = None
    #: TTL of the ``jailsyncd`` self-service heartbeat, refreshed every third of it.
    #: Every jail service has an alias check on it: if the daemon dies, all of them
    #: turn critical within this time, at the cost of one write per refresh.
    heartbeat_ttl: float = 30.0


@dataclass(frozen=True)
class MetricsSettings:
    #: ``host:port`` for Prometheus metrics (``/metrics``) and ``/healthz``; empty: off.
    listen: str = ""


@dataclass(frozen=True)
class DaemonSettings:
    #: User (name or uid) that ``run``, started as root, switches to for good once it
    #: has opened its ICMP sockets and pidfile; empty: stay as started.
    user: str = ""
    #: Primary group (name or gid) for ``user``; empty: the user's own group.
    group: str = ""


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
    daemon: DaemonSettings = field(default_factory=DaemonSettings)
    rules: tuple[Rule, ...] = ()
    #: The file these settings came from (None: built-in defaults only).
    source: Path | None = None

    def redacted(self) -> dict[str, Any]:
        """The effective settings as plain data for the start-up log; no secrets."""
        plain: dict[str, Any] = _plain(self)
        return plain


_SECTIONS = {
    "host": HostSettings,
    "cbsd": CbsdSettings,
    "consul": ConsulSettings,
    "sync": SyncSettings,
    "log": LogSettings,
    "catalog": CatalogSettings,
    "health": HealthSettings,
    "metrics": MetricsSettings,
    "daemon": DaemonSettings,
}
#: Durations that may be zero (every other duration must be above zero).
_MAY_BE_ZERO = {"sync.jitter", "sync.startup_grace", "sync.confirm_after"}
#: Lower bounds of durations below which jailsyncd would spin (a cycle, a stat, a
#: probe round or a retry every few milliseconds) or give up before any answer could
#: arrive. Documented in docs/configuration.md.
MIN_DURATION = {
    "sync.interval": 1.0,
    "sync.backoff_max": 1.0,  # the first retry waits 1 s anyway
    "sync.watch_interval": 0.1,
    "sync.resync": 1.0,
    "health.interval": 1.0,
    "health.timeout": 0.1,
    "consul.timeout": 0.1,
    "cbsd.busy_timeout": 0.1,
}
#: The fields a ``catalog.node_name`` template may use; at least one per-jail one.
_NODE_FIELDS = ("fqdn", "jname", "host")
_PER_JAIL_FIELDS = {"fqdn", "jname"}
#: Values Go's strconv.ParseBool accepts, as the Consul CLI reads its boolean variables.
_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_FALSE = {"0", "f", "F", "FALSE", "false", "False"}
#: A host name in an address: DNS letters, digits, '-', '.', and '_' (some resolvers'
#: names have it); an IP literal is checked by ``ipaddress`` instead.
_HOSTNAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,252})")
#: A datacenter name as Consul accepts it (agent -datacenter: "use only [a-z0-9-_]").
_DATACENTER = re.compile(r"[a-z0-9_-]+")
#: Keys that only the environment may set (never a file: a token does not belong there).
_ENV_ONLY = {("consul", "token")}
_MODES = ("agent", "catalog")
_LAYOUTS = ("per-jail", "article")
_WATCH = ("auto", "poll")
_LOG_FORMATS = ("json", "console")
_LOG_LEVELS = ("debug", "info", "warning", "error")
#: A user or group name as pw(8) accepts it, or a numeric ID.
_ACCOUNT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}\$?")
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
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: not UTF-8 (TOML files must be): bad byte at offset {exc.start}") from None
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read config file: {exc.strerror or exc}") from None
    return _build(data, env, where, path)


def _build(data: dict[str, Any], env: Mapping[str, str], where: str, path: Path | None) -> Settings:
    #: ``section.key`` -> the CONSUL_* variable its value came from: an error in such a
    #: value blames the variable, not the file (which does not set the key).
    origins: dict[str, str] = {}

    def fail(key: str, message: str) -> ConfigError:
        if key in origins:
            return ConfigError(f"{origins[key]} (environment variable for {key}, which {where} leaves unset): {message}")
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
    consul = _fill_from_env(sections["consul"], set(data.get("consul", {})), env, origins, fail)
    cbsd = sections["cbsd"]
    host = sections["host"]
    if not sections["catalog"].host_tag:
        sections["catalog"] = CatalogSettings(**{**sections["catalog"].__dict__, "host_tag": socket.gethostname()})
    settings = Settings(
        host=host,
        cbsd=cbsd,
        consul=consul,
        sync=sections["sync"],
        log=sections["log"],
        catalog=sections["catalog"],
        health=sections["health"],
        metrics=sections["metrics"],
        daemon=sections["daemon"],
        rules=_decode_rules(data.get("rule", []), fail),
        source=path,
    )
    _validate(settings, fail)
    return settings


def _decode_section(name: str, cls: type, raw: dict[str, Any], fail: _Fail) -> Any:
    allowed = {f.name: f for f in fields(cls)}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        dotted = f"{name}.{key}"
        if key not in allowed or (name, key) in _ENV_ONLY:
            hint = " (put the token in a file and set consul.token_file)" if (name, key) in _ENV_ONLY else ""
            raise fail(dotted, "unknown key" + (hint or _did_you_mean(key, set(allowed) - {"token"})))
        values[key] = _coerce(dotted, allowed[key], value, fail)
    return cls(**values)


def _coerce(dotted: str, fld: Any, value: Any, fail: _Fail) -> Any:
    kind = str(fld.type)
    if kind.startswith("tuple[Path"):
        if not isinstance(value, list) or not all(isinstance(v, str) and v and "\0" not in v for v in value):
            raise fail(dotted, f"expected a list of path strings, got {value!r}")
        return tuple(Path(v) for v in value)
    if "Path" in kind:
        if not isinstance(value, str) or not value or "\0" in value:
            raise fail(dotted, f"expected a path string, got {value!r}")
        return Path(value)
    if kind == "float":  # every float setting is a duration
        seconds = parse_duration(value, lambda msg: fail(dotted, msg), zero_ok=dotted in _MAY_BE_ZERO)
        minimum = MIN_DURATION.get(dotted, 0.0)
        if seconds < minimum:
            raise fail(dotted, f"must be at least {minimum:g}s (a shorter one makes jailsyncd spin), got {value!r}")
        return seconds
    if kind == "bool":
        if not isinstance(value, bool):
            raise fail(dotted, f"expected true or false, got {value!r}")
        return value
    if kind in ("int", "int | None"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail(dotted, f"expected an integer, got {value!r}")
        return value
    if not isinstance(value, str):
        raise fail(dotted, f"expected a string, got {value!r}")
    if "\0" in value:
        raise fail(dotted, "must not contain a NUL character")
    return value


def parse_duration(value: Any, fail: Callable[[str], ConfigError], *, zero_ok: bool = False) -> float:
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


def _fill_from_env(consul: ConsulSettings, in_file: set[str], env: Mapping[str, str], origins: dict[str, str], fail: _Fail) -> ConsulSettings:
    """CONSUL_* variables fill only the keys the file does not set, read as the Consul
    CLI reads them (its booleans with Go's ParseBool, ``CONSUL_HTTP_SSL`` turning the
    address's scheme into https, the token trimmed like a token file). ``origins``
    gets, for each key filled, the variable it came from."""
    updates: dict[str, Any] = {}

    def take(key: str, var: str) -> str | None:
        """The variable's value when it is set, non-empty and the file leaves ``key`` unset."""
        if key in in_file or not env.get(var):
            return None
        origins[f"consul.{key}"] = var
        return env[var]

    def boolean(var: str) -> bool | None:
        value = env.get(var, "")
        if value == "":
            return None
        if value in _TRUE or value in _FALSE:
            return value in _TRUE
        raise ConfigError(f"{var} (environment variable): expected true or false (or 1/0, t/f), got {value!r}")

    address = take("address", "CONSUL_HTTP_ADDR")
    if address is not None:
        updates["address"] = address
    ssl = boolean("CONSUL_HTTP_SSL")
    if ssl and "address" not in in_file:
        # As the Consul CLI: https for an address without a scheme, and never back to
        # http once TLS is asked for. The file's consul.address, when set, wins.
        current = updates.get("address", consul.address)
        if not current.startswith(("https://", "unix://")):
            updates["address"] = "https://" + current.removeprefix("http://")
            origins["consul.address"] = f"{origins['consul.address']} with CONSUL_HTTP_SSL" if "consul.address" in origins else "CONSUL_HTTP_SSL"
    if "token_file" not in in_file:
        token_file = take("token_file", "CONSUL_HTTP_TOKEN_FILE")
        if token_file is not None:
            updates["token_file"] = Path(token_file)
        elif env.get("CONSUL_HTTP_TOKEN"):
            origins["consul.token"] = "CONSUL_HTTP_TOKEN"
            try:
                token = clean_token(env["CONSUL_HTTP_TOKEN"])
            except ValueError as exc:
                raise fail("consul.token", str(exc)) from None
            if token:  # only blanks: no token, as the Consul CLI sends none
                updates["token"] = Secret(token)
    for key, var in (("ca_file", "CONSUL_CACERT"), ("cert_file", "CONSUL_CLIENT_CERT"), ("key_file", "CONSUL_CLIENT_KEY")):
        value = take(key, var)
        if value is not None:
            updates[key] = Path(value)
    server_name = take("tls_server_name", "CONSUL_TLS_SERVER_NAME")
    if server_name is not None:
        updates["tls_server_name"] = server_name
    verify = boolean("CONSUL_HTTP_SSL_VERIFY")
    if verify is not None and "verify" not in in_file:
        origins["consul.verify"] = "CONSUL_HTTP_SSL_VERIFY"
        updates["verify"] = verify
    datacenter = take("datacenter", "CONSUL_DATACENTER")
    if datacenter is not None:
        updates["datacenter"] = datacenter
    if updates:
        consul = ConsulSettings(**{**consul.__dict__, **updates})
    if env.get("CONSUL_CAPATH") and consul.address.startswith("https://") and consul.verify and consul.ca_file is None:
        # The Consul CLI trusts every CA file of that folder; requests (OpenSSL's
        # capath) would need hashed file names. Ignoring it would verify against the
        # system's CAs instead of the ones named, so it is refused, as the CLI would
        # use it (CONSUL_CACERT wins over it there too; without TLS it is unused).
        raise ConfigError(
            "CONSUL_CAPATH (environment variable): a folder of CA certificates is not supported;"
            " give the CA bundle as one file in CONSUL_CACERT or consul.ca_file"
        )
    return consul


def clean_token(raw: str) -> str:
    """A token as read from a file or variable: a UTF-8 byte order mark and surrounding
    white space (a trailing newline) removed, as the Consul CLI trims token files.
    Raises ``ValueError`` (never showing the token) when what is left cannot be sent
    in an HTTP header: only visible ASCII can (Consul's tokens are UUIDs)."""
    token = raw.lstrip("\ufeff").strip()
    for index, char in enumerate(token):
        if not "!" <= char <= "~":
            raise ValueError(f"the token has a character that cannot be sent to Consul (position {index + 1}: {unicode_name(char)})")
    return token


def unicode_name(char: str) -> str:
    """``U+0009`` style, so a message shows what is wrong without showing the secret."""
    return f"U+{ord(char):04X}"


def _decode_rules(raw: Any, fail: _Fail) -> tuple[Rule, ...]:
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
            if mk in RESERVED_META:
                # jailsyncd writes these itself: the value would be dropped on every cycle.
                raise fail(f"{key}.meta.{mk}", f"reserved: jailsyncd sets it itself ({', '.join(sorted(RESERVED_META))})")
            if not isinstance(mv, str) or len(mv.encode()) > 512:
                raise fail(f"{key}.meta.{mk}", "expected a string of at most 512 bytes")
        enabled = table.get("enabled")
        if enabled is not None and not isinstance(enabled, bool):
            raise fail(f"{key}.enabled", f"expected true or false, got {enabled!r}")
        checks = table.get("checks", [])
        if not isinstance(checks, list) or not all(isinstance(c, str) and valid_check(c) for c in checks):
            raise fail(f"{key}.checks", 'expected a list of "tcp" or "http:/path" (the path in printable ASCII without spaces, the rest percent-encoded)')
        rules.append(Rule(match, name, port, tuple(tags), tuple(meta.items()), enabled, tuple(checks)))
    return tuple(rules)


def _validate(s: Settings, fail: _Fail) -> None:
    if s.consul.mode not in _MODES:
        raise fail("consul.mode", f"expected one of {', '.join(_MODES)}, got {s.consul.mode!r}")
    try:
        s.consul.host_port
    except ValueError as exc:
        raise fail("consul.address", str(exc)) from None
    if s.sync.watch not in _WATCH:
        raise fail("sync.watch", f"expected one of {', '.join(_WATCH)}, got {s.sync.watch!r}")
    if s.catalog.layout not in _LAYOUTS:
        raise fail("catalog.layout", f"expected one of {', '.join(_LAYOUTS)}, got {s.catalog.layout!r}")
    problem = node_name_problem(s.catalog.node_name)
    if problem is not None:
        raise fail("catalog.node_name", problem)
    if s.log.format not in _LOG_FORMATS:
        raise fail("log.format", f"expected one of {', '.join(_LOG_FORMATS)}, got {s.log.format!r}")
    if s.log.level not in _LOG_LEVELS:
        raise fail("log.level", f"expected one of {', '.join(_LOG_LEVELS)}, got {s.log.level!r}")
    if s.metrics.listen:
        try:
            split_listen(s.metrics.listen)
        except ValueError as exc:
            raise fail("metrics.listen", str(exc)) from None
    for key in ("user", "group"):
        value = getattr(s.daemon, key)
        if value and not _ACCOUNT.fullmatch(value):
            raise fail(f"daemon.{key}", f"expected a {key} name or numeric ID, got {value!r}")
    if s.daemon.group and not s.daemon.user:
        raise fail("daemon.group", "needs daemon.user")
    h = s.health
    if h.timeout >= h.interval:
        raise fail("health.timeout", f"must be shorter than health.interval ({h.interval:g}s)")
    for key in ("count", "success_before_passing", "failures_before_critical"):
        if not 1 <= getattr(h, key) <= 100:
            raise fail(f"health.{key}", f"must be between 1 and 100, got {getattr(h, key)}")
    if h.ttl < 60 or h.ttl <= 2 * h.interval:
        raise fail("health.ttl", "must be at least 1m and more than twice health.interval")
    if h.rate_limit is not None and not 0 <= h.rate_limit <= 1_000_000:
        raise fail("health.rate_limit", f"must be between 0 (no limit) and 1000000 echo requests per second, got {h.rate_limit}")
    if h.heartbeat_ttl < 3:
        raise fail("health.heartbeat_ttl", "must be at least 3s")
    # A relative path names a file in the directory jailsyncd was started in: the
    # admin's shell for check-config, / under rc.d. Every path must be absolute.
    paths = [(f"sync.dhcp_leases[{index}]", path) for index, path in enumerate(s.sync.dhcp_leases)]
    paths += [("cbsd.workdir", s.cbsd.workdir)]
    paths += [(f"consul.{key}", getattr(s.consul, key)) for key in ("token_file", "ca_file", "cert_file", "key_file")]
    for key, path in paths:
        if path is not None and not path.is_absolute():
            raise fail(key, f"must be an absolute path (it would be read from the directory jailsyncd runs in), got {str(path)!r}")
    if s.sync.max_deregistrations < 0:
        raise fail("sync.max_deregistrations", "must be 0 or more")
    # Consul counts a meta value's limit (512) in bytes: a longer owner is refused with
    # every registration (400 Invalid Service Meta), after check-config said it was fine.
    if s.host.name != s.host.name.strip() or len(s.host.name.encode()) > 512:
        raise fail("host.name", "must be at most 512 bytes in UTF-8 (Consul's limit for a meta value), without leading or trailing white space (empty: CBSD's node name)")
    if (s.consul.cert_file is None) != (s.consul.key_file is None):
        raise fail("consul.cert_file", "cert_file and key_file must be set together")
    if s.consul.tls_server_name is not None and not _valid_host(s.consul.tls_server_name):
        raise fail("consul.tls_server_name", f"expected a DNS name like server.dc1.consul, got {s.consul.tls_server_name!r}")
    if s.consul.datacenter is not None and not _DATACENTER.fullmatch(s.consul.datacenter):
        # Consul refuses other names at start and lowercases the rest, and answers
        # ?dc=DC1 with 500 "No path to datacenter" when it is dc1: every catalog-mode
        # request would fail later.
        raise fail("consul.datacenter", f"Consul's datacenter names use only a-z, 0-9, - and _ (in lower case), got {s.consul.datacenter!r}")
    if s.consul.token_file is not None:
        try:
            s.consul.read_token()
        except ValueError as exc:
            raise fail("consul.token_file", str(exc)) from None


def node_name_problem(template: str) -> str | None:
    """Why a ``catalog.node_name`` template cannot name one node per jail, or None.

    Only plain ``{fqdn}``, ``{jname}`` and ``{host}`` fields (no attribute, index,
    conversion or format spec: ``{fqdn.x}`` used to crash at start), and at least one
    per-jail field: with ``"static"`` or ``{host}`` alone every jail would want the
    same node, and all but one would be conflicts."""
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        return f"not a valid template ({exc}; write {{{{ and }}}} for literal braces)"
    used = set()
    for _literal, name, spec, conversion in parts:
        if name is None:
            continue
        if name not in _NODE_FIELDS or spec or conversion:
            shown = "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
            return f"{shown} is not allowed: only {{fqdn}}, {{jname}} and {{host}} may appear, as they are"
        used.add(name)
    if not used & _PER_JAIL_FIELDS:
        return f"{template!r} gives every jail the same node name: use {{fqdn}} or {{jname}} (e.g. \"{{jname}}.{{host}}\")"
    return None


def _valid_host(host: str) -> bool:
    """An IP literal or a plausible DNS host name (no spaces, no punctuation)."""
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return bool(_HOSTNAME.fullmatch(host)) and ".." not in host


def _split_address(address: str) -> tuple[str, int]:
    if "@" in address:
        # user:password@ (basic auth in the URL, as Go's HTTP client would send it):
        # not supported, and the message never repeats the address, so a password in
        # it does not end up on stderr or in syslog.
        raise ValueError(
            "user information (user@ or user:password@) is not supported in the address (not shown here, it may hold a "
            "password): give host:port only; Consul's ACL token goes in consul.token_file"
        )
    if address.startswith("unix://"):
        raise ValueError(
            f"unix sockets are not supported (got {address!r}): give Consul's HTTP API a TCP address "
            "(addresses.http in the agent's config, 127.0.0.1 is enough) and use host:port"
        )
    scheme, sep, _ = address.partition("://")
    if sep and scheme not in ("http", "https"):
        raise ValueError(f"unsupported scheme {scheme}:// in {address!r}: use host:port, http:// or https://")
    if address != address.strip() or any(c.isspace() for c in address):
        raise ValueError(f"white space in {address!r}")
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
    if not _valid_host(host):
        raise ValueError(f"{host!r} is neither an IP address nor a host name, in {address!r}")
    if not port:
        return host, default_port
    if not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535:
        raise ValueError(f"bad port in {address!r}")
    return host, int(port)


def token_file_problem(path: Path | None, owner_ok: int | None = None) -> str | None:
    """Why a token file is too open (readable or writable by group or others, or owned
    by another user than root, us or ``owner_ok``: the uid ``run`` switches to), or
    None. jailsyncd warns, it does not refuse: see docs/reliability.md."""
    if path is None:
        return None
    try:
        st = path.stat()
    except OSError:
        return None  # a missing file is reported where it is read
    problems = []
    if st.st_mode & 0o077:
        problems.append(f"mode {st.st_mode & 0o777:04o} lets group or others at it")
    if st.st_uid not in (0, os.geteuid(), owner_ok):
        problems.append(f"owned by uid {st.st_uid}")
    return "; ".join(problems) + " (chmod 600 and chown to the user jailsyncd runs as)" if problems else None


def split_listen(listen: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` for a listening socket: no scheme, no path, the
    port required (``9311`` alone used to mean host "9311" on port 8500)."""
    example = "e.g. 127.0.0.1:9311 or [::1]:9311"
    if "://" in listen or "/" in listen:
        raise ValueError(f"expected host:port without a scheme or path ({example}), got {listen!r}")
    if listen.startswith("["):
        host, bracket, tail = listen[1:].partition("]")
        port = tail.removeprefix(":") if bracket and tail.startswith(":") else ""
        if not host or ":" not in host:
            raise ValueError(f"brackets are for IPv6 addresses ({example}), got {listen!r}")
    else:
        host, colon, port = listen.rpartition(":")
        if not colon:
            raise ValueError(f"missing port ({example}), got {listen!r}")
        if ":" in host:
            raise ValueError(f"IPv6 addresses need brackets ({example}), got {listen!r}")
    if not port:
        raise ValueError(f"missing port ({example}), got {listen!r}")
    if not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535:
        raise ValueError(f"bad port {port!r}: expected 1-65535 ({example})")
    if not host or not _valid_host(host):
        raise ValueError(f"expected an IP address or host name before the port ({example}), got {listen!r}")
    return host, int(port)


def _read_token_file(path: Path) -> str:
    try:
        token = clean_token(path.read_text(encoding="utf-8"))
    except ValueError as exc:  # not UTF-8, or a character no header can carry
        detail = "not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else str(exc)
        raise ValueError(f"token file {path}: {detail}") from None
    except FileNotFoundError:
        raise ValueError(f"token file {path} does not exist") from None
    except PermissionError:
        raise ValueError(f"token file {path} is not readable (permission denied)") from None
    except OSError as exc:
        raise ValueError(f"token file {path} cannot be read: {exc.__class__.__name__}") from None
    if not token:
        raise ValueError(f"token file {path} is empty")
    return token


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
