"""The alert rules in etc/prometheus/ load and behave as their unit tests say.

Runs Prometheus's own ``promtool`` (Debian package ``prometheus``, installed by
``scripts/system-deps``): ``check rules`` for syntax and ``test rules`` for the
``jailsyncd.rules.test.yml`` cases (each alert fires on its condition and stays
quiet on a healthy host). A missing promtool is a failure, never a skip: CI must
not pass without having run the rules' tests. The metric names the rules use are
checked against a live ``jailsyncd run`` in tests/integration/test_prometheus.py.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "etc" / "prometheus" / "jailsyncd.rules.yml"
TESTS = ROOT / "etc" / "prometheus" / "jailsyncd.rules.test.yml"


def promtool() -> str:
    path = shutil.which("promtool")
    assert path is not None, "promtool is missing: install Debian's prometheus package (scripts/system-deps does)"
    return path


def test_rules_pass_promtool_check() -> None:
    proc = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_rules_unit_tests_pass() -> None:
    proc = subprocess.run([promtool(), "test", "rules", str(TESTS)], capture_output=True, text=True, timeout=120, cwd=TESTS.parent)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_alert_has_a_firing_case_in_the_unit_tests() -> None:
    alerts = re.findall(r"^\s*- alert: (\w+)$", RULES.read_text(), re.M)
    tests = TESTS.read_text()
    assert len(alerts) >= 9
    for name in alerts:
        # A case that expects the alert (exp_alerts with an entry) right after its name.
        firing = re.search(rf"alertname: {name}\n\s*exp_alerts:\n\s*- exp_labels:", tests)
        quiet = re.search(rf"alertname: {name}\n\s*exp_alerts: \[\]", tests)
        assert firing, f"{name}: no test case where it fires"
        assert quiet, f"{name}: no test case where it stays quiet"
