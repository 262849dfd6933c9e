"""``jailsyncd status``: one screen about the running daemon, for a person or (``--json``) a script.

Called by ``cli``. It reads the running daemon only: its pidfile (is the process
alive) and its metrics endpoint (``[metrics] listen``: version, uptime, the last
cycle, what it manages per CBSD kind, health, whether the last cycle reached
Consul). It never talks to Consul or CBSD itself, so it cannot disturb either, and
what it shows is the daemon's own view (same address, token and network as the
daemon, which a second client might not share).

Pure part: ``summarise`` (samples in, a JSON-ready dict out) and ``as_text``. The
I/O (pidfile, HTTP) is in ``gather``; the HTTP client and the metrics parser are in
``metrics`` (the one module that imports prometheus_client).
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from jailsyncd import __version__
from jailsyncd.errors import DaemonUnreachable, NotRunning
from jailsyncd.metrics import read_endpoint, scrape_url
from jailsyncd.pidfile import running_jailsyncd
from jailsyncd.platform import Platform

Sample = tuple[str, dict[str, str], float]


def pid_state(pidfile: Path, platform: Platform) -> tuple[int | None, str | None]:
    """``(pid, None)`` when the pidfile names a live ``jailsyncd run`` (the same test
    as ``kick``: a stale file whose PID now belongs to another program does not
    count), else ``(None, why not)``."""
    try:
        return running_jailsyncd(pidfile, platform), None
    except NotRunning as exc:
        return None, str(exc)


def _value(samples: Iterable[Sample], name: str, **labels: str) -> float | None:
    for sample_name, sample_labels, value in samples:
        if sample_name == name and all(sample_labels.get(k) == v for k, v in labels.items()):
            return value
    return None


def _labelled(samples: Iterable[Sample], name: str, key: str) -> dict[str, float]:
    return {sample_labels[key]: value for sample_name, sample_labels, value in samples if sample_name == name and key in sample_labels}


def _iso(ts: float | None) -> str | None:
    if ts is None or ts <= 0 or ts != ts:  # 0: never; NaN: unknown
        return None
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _age(ts: float | None, now: float) -> float | None:
    return None if _iso(ts) is None else round(max(now - ts, 0.0), 1)


def summarise(samples: list[Sample], *, now: float, pid: int | None, pid_file: str, url: str | None) -> dict[str, Any]:
    """The status of a daemon whose metrics answered with ``samples``."""
    version = next((labels.get("version") for name, labels, _ in samples if name == "jailsyncd_build_info"), None)
    started = _value(samples, "jailsyncd_start_time_seconds")
    ended = _value(samples, "jailsyncd_last_cycle_timestamp_seconds")
    success = _value(samples, "jailsyncd_last_success_timestamp_seconds")
    kinds: dict[str, dict[str, Any]] = {}
    for kind, count in _labelled(samples, "jailsyncd_services", "kind").items():
        kinds.setdefault(kind, {"registered": 0, "skipped": {}})["registered"] = int(count)
    for name, labels, value in samples:
        if name == "jailsyncd_skipped" and value:
            kinds.setdefault(labels["kind"], {"registered": 0, "skipped": {}})["skipped"][labels["reason"]] = int(value)
    conflicts = sum(k["skipped"].get("conflict", 0) for k in kinds.values())
    up = _value(samples, "jailsyncd_consul_up")
    interval = _value(samples, "jailsyncd_health_interval_seconds")
    health = None
    if interval is not None:
        last_round = _value(samples, "jailsyncd_health_last_round_timestamp_seconds")
        health = {
            "passing": int(_value(samples, "jailsyncd_health_checks", status="passing") or 0),
            "critical": int(_value(samples, "jailsyncd_health_checks", status="critical") or 0),
            "interval_s": interval,
            "last_round_at": _iso(last_round),
            "last_round_age_s": _age(last_round, now),
            "last_round_duration_s": _value(samples, "jailsyncd_health_last_round_duration_seconds"),
        }
    cycles = {result: int(v) for result, v in _labelled(samples, "jailsyncd_cycles_total", "result").items()}
    return {
        "running": True,
        "pid": pid,
        "pidfile": pid_file,
        "metrics_url": url,
        "version": version,
        "started_at": _iso(started),
        "uptime_s": _age(started, now),
        "last_cycle": None if _iso(ended) is None else {
            "at": _iso(ended),
            "age_s": _age(ended, now),
            "duration_s": _value(samples, "jailsyncd_last_cycle_duration_seconds"),
            "actions": {a: int(v) for a, v in sorted(_labelled(samples, "jailsyncd_last_cycle_actions", "action").items())},
            "errors": {k: int(v) for k, v in sorted(_labelled(samples, "jailsyncd_last_cycle_errors", "kind").items())},
            "last_success_at": _iso(success),
            "last_success_age_s": _age(success, now),
        },
        "managed": dict(sorted(kinds.items())),
        "managed_services": int(_value(samples, "jailsyncd_managed_services") or 0),
        "conflicts": conflicts,
        "refused_deregistrations": int(_value(samples, "jailsyncd_deregistrations_refused") or 0),
        "drift_repeated_cycles": int(_value(samples, "jailsyncd_drift_repeated_cycles") or 0),
        "health": health,
        "consul_reachable": None if up is None or up != up else up == 1,
        "cycles": cycles,
    }


def not_running(*, pid_file: str, why: str | None, url: str | None, problem: str | None) -> dict[str, Any]:
    return {"running": False, "pid": None, "pidfile": pid_file, "pidfile_problem": why, "metrics_url": url, "problem": problem}


def process_only(pid: int, pidfile: Path, platform: Platform, *, now: float, url: str | None, problem: str) -> dict[str, Any]:
    """What is known of a running daemon whose metrics cannot be read: its process
    (pid, and its age from the process table) and the version installed here, which
    is the running one unless the package was upgraded since it started."""
    age = platform.process_age(pid)
    started = None if age is None else now - age
    return {"running": True, "pid": pid, "pidfile": str(pidfile), "metrics_url": url, "problem": problem,
            "installed_version": __version__, "started_at": _iso(started), "uptime_s": _age(started, now)}


def gather(listen: str, pidfile: Path, platform: Platform, *, now: float, timeout: float = 3.0, source: Path | str = "the settings") -> dict[str, Any]:
    """Ask the running daemon. Returns the status dict; ``running`` False when
    neither its pidfile names a live ``jailsyncd run`` nor its metrics answer.
    ``listen`` comes from the settings file ``status`` read (``source``), which
    need not be the one the daemon was started with."""
    pid, why = pid_state(pidfile, platform)
    url = scrape_url(listen) if listen else None
    if url is None:
        if pid is None:
            return not_running(pid_file=str(pidfile), why=why, url=None, problem=None)
        return process_only(pid, pidfile, platform, now=now, url=None,
                            problem=f"[metrics] listen is not set in {source}: only the process is known; set it to see cycles, "
                            "jails and health (or, if jailsyncd run uses another file, pass it: jailsyncd --config FILE status)")
    try:
        samples = read_endpoint(url, timeout)
    except DaemonUnreachable as exc:
        if pid is None:
            return not_running(pid_file=str(pidfile), why=why, url=url, problem=str(exc))
        return process_only(pid, pidfile, platform, now=now, url=url, problem=f"metrics unreachable: {exc}")
    if _value(samples, "jailsyncd_start_time_seconds") is None:
        return not_running(pid_file=str(pidfile), why=why, url=url, problem=f"{url}: answers, but not with jailsyncd's metrics")
    return summarise(samples, now=now, pid=pid, pid_file=str(pidfile), url=url)


# -- text ------------------------------------------------------------------------------


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    s = int(seconds)
    if s < 60:
        return f"{seconds:.0f}s" if seconds >= 1 else f"{seconds * 1000:.0f}ms"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _when(iso: str | None) -> str:
    return "never" if iso is None else iso.replace("T", " ").replace("Z", " UTC")


def as_text(status: dict[str, Any]) -> str:
    """One screen for a person (an 80-column terminal)."""
    if not status["running"]:
        lines = [f"jailsyncd is not running: {status['pidfile_problem']}"]
        if status.get("problem"):
            lines.append(f"  and {status['problem']}")
        return "\n".join(lines)
    pid = status["pid"] if status["pid"] is not None else f"? (no live process in {status['pidfile']})"
    if "version" not in status:
        up = "" if status.get("uptime_s") is None else f", up {_duration(status['uptime_s'])} (since {_when(status['started_at'])})"
        return f"jailsyncd {status['installed_version']} (installed): running, pid {pid}{up}\n  {status['problem']}"
    lines = [f"jailsyncd {status['version'] or '?'}: running, pid {pid}, up {_duration(status['uptime_s'])} (since {_when(status['started_at'])})"]
    last = status["last_cycle"]
    if last is None:
        lines.append("last cycle   none yet")
    else:
        a = last["actions"]
        errors = ", ".join(f"{k} x{v}" for k, v in last["errors"].items()) or "none"
        lines.append(f"last cycle   {_duration(last['age_s'])} ago, took {_duration(last['duration_s'])}; errors: {errors}")
        lines.append(f"             changed: {a.get('register', 0)} registered, {a.get('update', 0)} updated, {a.get('deregister', 0)} deregistered")
        lines.append(f"             last success: {_when(last['last_success_at'])}" + (f" ({_duration(last['last_success_age_s'])} ago)" if last["last_success_at"] else ""))
    c = status["cycles"]
    # Every result the counter has, so that the parts add up to the total.
    skipped = f"{c['skipped']} skipped (nothing changed), " if c.get("skipped") else ""
    lines.append(
        f"cycles       {sum(c.values())} since start: {c.get('ok', 0)} ok, {skipped}{c.get('failed', 0)} failed, {c.get('crashed', 0)} crashed"
    )
    lines.append(f"managed      {status['managed_services']} services in Consul owned by this host")
    if status["managed"]:
        lines.append(f"             {'kind':<10} {'registered':>10}  skipped")
        for kind, m in status["managed"].items():
            skipped = ", ".join(f"{reason} {n}" for reason, n in sorted(m["skipped"].items())) or "-"
            lines.append(f"             {kind:<10} {m['registered']:>10}  {skipped}")
    lines.append(f"             conflicts {status['conflicts']}, refused deregistrations {status['refused_deregistrations']}")
    if status["drift_repeated_cycles"] >= 3:
        lines.append(f"             the same drift was found in {status['drift_repeated_cycles']} cycles in a row")
    h = status["health"]
    if h is None:
        lines.append("health       off")
    else:
        round_text = "no round yet" if h["last_round_at"] is None else f"last round {_duration(h['last_round_age_s'])} ago, took {_duration(h['last_round_duration_s'])}"
        lines.append(f"health       {h['passing']} passing, {h['critical']} critical; {round_text} (every {_duration(h['interval_s'])})")
    reach = {True: "reachable at the last cycle", False: "UNREACHABLE at the last cycle", None: "not reached yet"}[status["consul_reachable"]]
    lines.append(f"consul       {reach}")
    return "\n".join(lines)
