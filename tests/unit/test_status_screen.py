"""Unit tests for jailsyncd.status: samples of a daemon's metrics -> one screen / JSON."""

from __future__ import annotations

import os
from pathlib import Path

from jailsyncd.metrics import scrape_url
from jailsyncd import __version__
from jailsyncd.platform import Platform, current
from jailsyncd.status import as_text, not_running, pid_state, process_only, summarise

NOW = 1_800_000_000.0


def samples(**over):
    base = [
        ("jailsyncd_build_info", {"version": "9.9"}, 1.0),
        ("jailsyncd_start_time_seconds", {}, NOW - 7260),
        ("jailsyncd_last_cycle_timestamp_seconds", {}, NOW - 12),
        ("jailsyncd_last_cycle_duration_seconds", {}, 0.045),
        ("jailsyncd_last_cycle_actions", {"action": "register"}, 2.0),
        ("jailsyncd_last_cycle_actions", {"action": "update"}, 0.0),
        ("jailsyncd_last_cycle_actions", {"action": "deregister"}, 1.0),
        ("jailsyncd_last_cycle_errors", {"kind": "ConsulRejected"}, 1.0),
        ("jailsyncd_last_success_timestamp_seconds", {}, 0.0),
        ("jailsyncd_cycles_total", {"result": "ok"}, 40.0),
        ("jailsyncd_cycles_total", {"result": "failed"}, 2.0),
        ("jailsyncd_services", {"kind": "jail"}, 3.0),
        ("jailsyncd_skipped", {"kind": "jail", "reason": "conflict"}, 1.0),
        ("jailsyncd_skipped", {"kind": "bhyve", "reason": "unaddressable"}, 2.0),
        ("jailsyncd_managed_services", {}, 3.0),
        ("jailsyncd_deregistrations_refused", {}, 0.0),
        ("jailsyncd_drift_repeated_cycles", {}, 4.0),
        ("jailsyncd_consul_up", {}, float("nan")),
    ]
    return base + list(over.get("extra", []))


def test_summary_of_samples() -> None:
    s = summarise(samples(), now=NOW, pid=42, pid_file="/p", url="http://x/metrics")
    assert s["version"] == "9.9" and s["uptime_s"] == 7260 and s["started_at"] == "2027-01-15T05:59:00Z"
    assert s["last_cycle"]["age_s"] == 12 and s["last_cycle"]["last_success_at"] is None
    assert s["last_cycle"]["errors"] == {"ConsulRejected": 1}
    assert s["managed"] == {"bhyve": {"registered": 0, "skipped": {"unaddressable": 2}}, "jail": {"registered": 3, "skipped": {"conflict": 1}}}
    assert s["conflicts"] == 1 and s["consul_reachable"] is None and s["health"] is None
    text = as_text(s)
    assert "jailsyncd 9.9: running, pid 42, up 2h01m" in text
    assert "last cycle   12s ago, took 45ms; errors: ConsulRejected x1" in text
    assert "changed: 2 registered, 0 updated, 1 deregistered" in text
    assert "last success: never" in text
    assert "cycles       42 since start: 40 ok, 2 failed, 0 crashed" in text
    assert "the same drift was found in 4 cycles in a row" in text
    assert "consul       not reached yet" in text


def test_health_part() -> None:
    extra = [
        ("jailsyncd_health_interval_seconds", {}, 10.0),
        ("jailsyncd_health_checks", {"status": "passing"}, 7.0),
        ("jailsyncd_health_checks", {"status": "critical"}, 1.0),
        ("jailsyncd_health_last_round_timestamp_seconds", {}, NOW - 3),
        ("jailsyncd_health_last_round_duration_seconds", {}, 0.2),
    ]
    s = summarise(samples(extra=extra), now=NOW, pid=None, pid_file="/p", url="u")
    assert s["health"]["passing"] == 7 and s["health"]["last_round_age_s"] == 3
    assert "health       7 passing, 1 critical; last round 3s ago, took 200ms (every 10s)" in as_text(s)
    assert "running, pid ? (no live process in /p)" in as_text(s)


def test_not_running_text() -> None:
    text = as_text(not_running(pid_file="/run/j.pid", why="/run/j.pid: process 9 is not running (a stale pidfile)", url="u", problem="u: Connection refused"))
    assert text == "jailsyncd is not running: /run/j.pid: process 9 is not running (a stale pidfile)\n  and u: Connection refused"


def test_process_only_text() -> None:
    """Metrics off or unreachable: the process's age from the platform (here FreeBSD's
    ps answering 2 h 3 min), the installed version, and why nothing more is shown."""
    freebsd = Platform("freebsd", run=lambda argv: "7380\n")
    status = process_only(812, Path("/var/run/jailsyncd.pid"), freebsd, now=NOW, url=None, problem="[metrics] listen is not set")
    assert as_text(status) == (
        f"jailsyncd {__version__} (installed): running, pid 812, up 2h03m (since 2027-01-15 05:57:00 UTC)\n  [metrics] listen is not set"
    )
    gone = process_only(812, Path("/p"), Platform("freebsd", run=lambda argv: None), now=NOW, url="u", problem="metrics unreachable: u")
    assert (gone["uptime_s"], gone["started_at"]) == (None, None)
    assert as_text(gone) == f"jailsyncd {__version__} (installed): running, pid 812\n  metrics unreachable: u"


def test_pid_state(tmp_path: Path) -> None:
    f = tmp_path / "p"
    platform = current()
    assert pid_state(f, platform) == (None, f"{f}: no pidfile; is jailsyncd run active, started with --pidfile {f} (rc.d/jailsyncd passes it)?")
    # This process is alive but is not a jailsyncd run: the same rule as kick.
    f.write_text(f"{os.getpid()}\n")
    pid, why = pid_state(f, platform)
    assert pid is None and "is not jailsyncd" in why


def test_scrape_url() -> None:
    assert scrape_url("127.0.0.1:9311") == "http://127.0.0.1:9311/metrics"
    assert scrape_url("0.0.0.0:9311") == "http://127.0.0.1:9311/metrics"
    assert scrape_url("[::1]:9311") == "http://[::1]:9311/metrics"


def test_the_cycle_counts_add_up_with_skipped_cycles() -> None:
    """``run`` skips the periodic and change-feed cycles that have nothing to do
    (``jailsyncd_cycles_total{result="skipped"}``). The screen counted them in the
    total but not in its parts ("71 since start: 31 ok, 3 failed, 0 crashed"), so the
    numbers did not add up; each kind is named now."""
    extra = [("jailsyncd_cycles_total", {"result": "skipped"}, 37.0), ("jailsyncd_cycles_total", {"result": "crashed"}, 1.0)]
    text = as_text(summarise(samples(extra=extra), now=NOW, pid=42, pid_file="/p", url="u"))
    assert "cycles       80 since start: 40 ok, 37 skipped (nothing changed), 2 failed, 1 crashed" in text
