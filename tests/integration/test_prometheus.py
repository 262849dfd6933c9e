"""The metrics of a live ``jailsyncd run`` pass ``promtool check metrics``, carry the
numbers the alert rules and ``jailsyncd status`` rely on, and are all documented
(docs/operations.md, "Metrics and alerts": name, type and labels).

A real daemon against a real Consul dev agent and the sample CBSD workdir (one
environment of every kind, including a running bhyve VM, an opted-out jail and
DHCP jails with no address), plus a squatter entry that makes ``smtp`` a conflict.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest
from harness import REPO, ConsulServer, free_port, wait_for, write_config

from testing.sample import Workdir

pytestmark = pytest.mark.integration

RULES = REPO / "etc" / "prometheus" / "jailsyncd.rules.yml"
OPERATIONS = REPO / "docs" / "operations.md"
#: No Consul watch either: its cycle after the agent syncs our writes would replace the
#: last cycle's numbers these tests read.
QUIET = '[sync]\ninterval = "1h"\njitter = "0s"\nwatch_consul = false\n'


def scrape(port: int) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()


def samples(text: str) -> dict[str, float]:
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("jailsyncd_")}


def families(text: str) -> dict[str, str]:
    """``{name: type}`` from the ``# TYPE`` lines."""
    return dict(re.findall(r"^# TYPE (jailsyncd_\w+) (\w+)$", text, re.M))


@pytest.fixture
def live(consul: ConsulServer, tmp_path: Path, sample: Workdir, start_daemon):
    consul.put("/v1/agent/service/register", {"ID": "jailsyncd-smtp", "Name": "smtp", "Address": "192.0.2.2", "Meta": {"jailsyncd-owner": "othernode"}})
    port = free_port()
    config = write_config(tmp_path / "c.toml", workdir=sample.root, consul=consul, extra=QUIET + f'\n[metrics]\nlisten = "127.0.0.1:{port}"\n')
    daemon = start_daemon(config)
    return daemon, port


@pytest.fixture
def live_health(consul: ConsulServer, tmp_path: Path, workdir: Workdir, start_daemon):
    """Health on: two jails on loopback addresses (pings never leave the machine)."""
    workdir.add("web1", jid=3, status=1, ip4_addr="127.0.31.1")
    workdir.add("web2", jid=4, status=1, ip4_addr="127.0.31.2")
    port = free_port()
    config = write_config(
        tmp_path / "c.toml", workdir=workdir.root, consul=consul, health='interval = "2s"\ntimeout = "0.5s"',
        extra=QUIET + f'\n[metrics]\nlisten = "127.0.0.1:{port}"\n',
    )
    daemon = start_daemon(config)
    wait_for(lambda: samples(scrape(port)).get("jailsyncd_health_last_round_timestamp_seconds", 0) > 0, timeout=10, what="a health round")
    return daemon, port


@pytest.mark.parametrize("which", ["live", "live_health"])
def test_live_metrics_pass_promtool_check_metrics(which: str, request) -> None:
    _, port = request.getfixturevalue(which)
    promtool = shutil.which("promtool")
    assert promtool is not None, "promtool is missing: install Debian's prometheus package (scripts/system-deps does)"
    text = scrape(port)
    proc = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == "" and proc.stderr.strip() == "", "promtool reported lint problems:\n" + proc.stdout + proc.stderr


def test_live_gauges_describe_the_last_cycle(live, consul: ConsulServer, sample: Workdir) -> None:
    daemon, port = live
    m = samples(scrape(port))
    assert m['jailsyncd_build_info{version="0.1.0"}'] == 1
    assert m["jailsyncd_sync_interval_seconds"] == 3600
    assert m["jailsyncd_consul_up"] == 1
    # Running and addressable: web1, db1, smtp (conflict), www1, www2, Build_Box, vnet1
    # (its own dhclient lease) (jails), freebsd1 (bhyve).
    assert m['jailsyncd_services{kind="jail"}'] == 6
    assert m['jailsyncd_services{kind="bhyve"}'] == 1
    assert m['jailsyncd_skipped{kind="jail",reason="conflict"}'] == 1
    assert m['jailsyncd_skipped{kind="jail",reason="opted_out"}'] == 1
    assert m['jailsyncd_skipped{kind="jail",reason="unaddressable"}'] == 1  # dhcp1 (DHCP, no MAC, no lease)
    assert m['jailsyncd_skipped{kind="bhyve",reason="unaddressable"}'] == 1  # win10 (its lease file is not configured here)
    assert m["jailsyncd_deregistrations_refused"] == 0
    assert m['jailsyncd_last_cycle_actions{action="register"}'] == 7
    assert m["jailsyncd_drift_pending"] == 7 and m["jailsyncd_drift_repeated_cycles"] == 1
    assert m["jailsyncd_last_cycle_timestamp_seconds"] >= m["jailsyncd_start_time_seconds"] > 0
    # A second cycle finds nothing: the drift is repaired, the gauges follow.
    sample.stop("web1")
    wait_for(lambda: "jailsyncd-web1" not in consul.services(), timeout=5, what="web1 deregistered")
    wait_for(lambda: daemon.finished_cycles() >= 2, timeout=5, what="the second cycle logged")
    m = samples(scrape(port))
    assert m['jailsyncd_services{kind="jail"}'] == 5
    assert m['jailsyncd_last_cycle_actions{action="register"}'] == 0
    assert m['jailsyncd_last_cycle_actions{action="deregister"}'] == 1
    assert m["jailsyncd_drift_pending"] == 1 and m["jailsyncd_drift_repeated_cycles"] == 1
    assert not any(k.startswith("jailsyncd_last_cycle_errors") for k in m)


def test_health_gauges(live_health) -> None:
    _, port = live_health
    m = samples(scrape(port))
    assert m['jailsyncd_health_checks{status="passing"}'] == 2
    assert m['jailsyncd_health_checks{status="critical"}'] == 0
    assert m["jailsyncd_health_interval_seconds"] == 2
    assert 0 < m["jailsyncd_health_last_round_duration_seconds"] < 2
    # Linux sets no echo limit and the setting is unset: no pacing, rounds fit, no prober failure.
    assert (m["jailsyncd_health_rate_limit"], m["jailsyncd_health_round_over_interval"], m["jailsyncd_health_probe_errors"]) == (0, 0, 0)


def test_rules_use_only_metrics_a_live_daemon_exposes(live_health) -> None:
    _, port = live_health
    exposed = set(families(scrape(port)))
    # Counters are exposed as <name>_total, histograms as <name>_count/_sum/_bucket.
    names = set(exposed)
    for name in exposed:
        names |= {name + "_total", name + "_count", name + "_sum", name + "_bucket"}
    used = set(re.findall(r"\b(jailsyncd_\w+)", RULES.read_text()))
    assert used, "the rules use no jailsyncd metric"
    missing = sorted(used - names)
    assert not missing, f"alert rules use metrics jailsyncd does not expose: {missing}"


def test_every_live_metric_is_documented_with_its_type(live_health) -> None:
    _, port = live_health
    doc = OPERATIONS.read_text()
    rows = dict(re.findall(r"^\| `(jailsyncd_\w+)` \| (\w+) \|", doc, re.M))
    exposed = families(scrape(port))
    for name, kind in exposed.items():
        if name.endswith("_created") and name.removesuffix("_created") in {n.removesuffix("_total") for n in exposed}:
            continue  # prometheus_client's creation time of a counter or histogram
        shown = name + "_total" if kind == "counter" and not name.endswith("_total") else name
        assert shown in rows, f"{shown} is not in docs/operations.md's metrics table"
        assert rows[shown] == kind, f"{shown}: documented as {rows[shown]}, exposed as {kind}"


def documented_labels(doc: str) -> dict[str, set[str]]:
    """``{metric: label names}`` from the labels column of docs/operations.md's metrics
    table: the backquoted names before the first colon (after it come their values)."""
    out = {}
    for name, labels in re.findall(r"^\| `(jailsyncd_\w+)` \| (?:gauge|counter|histogram|summary) \|([^|]*)\|", doc, re.M):
        out[name] = set(re.findall(r"`(\w+)`", labels.split(":", 1)[0]))
    return out


def live_labels(text: str) -> dict[str, set[str]]:
    """``{family: label names}`` of every sample (a histogram's ``le`` is its own)."""
    kinds = families(text)
    out: dict[str, set[str]] = {}
    for line in text.splitlines():
        m = re.match(r"^(jailsyncd_\w+?)(?:\{(.*)\})? \S+$", line)
        if not m:
            continue
        family = next((f for f in (m[1], m[1].removesuffix("_total"), m[1].removesuffix("_bucket"), m[1].removesuffix("_count"), m[1].removesuffix("_sum")) if f in kinds), None)
        if family is None or family.endswith("_created") or m[1].endswith("_created"):
            continue
        shown = family + "_total" if kinds[family] == "counter" and not family.endswith("_total") else family
        out.setdefault(shown, set()).update(set(re.findall(r'(\w+)="', m[2] or "")) - {"le"})
    return out


@pytest.mark.parametrize("which", ["live", "live_health"])
def test_every_live_metric_is_documented_with_its_labels(which: str, request) -> None:
    """The labels column of the metrics table names exactly the labels a live daemon
    puts on each metric (between them the two daemons expose every labelled metric
    with at least one series: skips and a conflict, health checks)."""
    _, port = request.getfixturevalue(which)
    seen = live_labels(scrape(port))
    documented = documented_labels(OPERATIONS.read_text())
    assert any(seen.values()), "no labelled metric seen"
    for name, labels in sorted(seen.items()):
        assert name in documented, f"{name} is not in docs/operations.md's metrics table"
        assert documented[name] == labels, f"{name}: documented labels {sorted(documented[name])}, exposed {sorted(labels)}"
