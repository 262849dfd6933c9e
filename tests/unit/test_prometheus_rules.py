"""Every alert in etc/prometheus/jailsyncd.rules.yml has a unit-test case where it fires
and one where it stays quiet in jailsyncd.rules.test.yml. Running those cases (and
``promtool check rules``) is a program of its own: tests/static/test_shipped_files.py.
The metric names the rules use are checked against a live ``jailsyncd run`` in
tests/integration/test_prometheus.py.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "etc" / "prometheus" / "jailsyncd.rules.yml"
TESTS = ROOT / "etc" / "prometheus" / "jailsyncd.rules.test.yml"


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
