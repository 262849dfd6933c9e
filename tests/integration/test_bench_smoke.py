"""A small run of the benchmark (``bench/run.py``, N = 50), so that it does not rot.

CI does not run the real benchmark (minutes long); this runs every phase once at a
tiny size, agent mode only, and checks the table is there and says what it must:
jailsyncd converged, a no-op cycle wrote nothing, changes reached Consul, and the
baselines ran on the same payloads.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from harness import REPO

from jailsyncd.devnet import available

pytestmark = pytest.mark.integration


def test_bench_smoke_n50(consul_bin: str, tmp_path: Path) -> None:
    out, raw = tmp_path / "RESULTS.md", tmp_path / "rows.json"
    argv = [
        sys.executable, str(REPO / "bench" / "run.py"),
        "--sizes", "50", "--modes", "agent,nosuchmode", "--health", "off",
        "--cold-repeat", "1", "--noops", "3", "--changes", "1", "--idle", "1", "--rounds", "1",
        "--budget", "120", "--out", str(out), "--json", str(raw),
    ]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=180, cwd=str(REPO), env={**os.environ, "CONSUL_BIN": consul_bin})
    assert proc.returncode == 0, proc.stderr[-3000:]

    rows = json.loads(raw.read_text())
    assert not [r for r in rows if r["measure"] == "error"], proc.stderr[-3000:]
    by = {(r["mode"], r["measure"].split(":")[0]): r for r in rows}

    cold = by[("agent", "cold converge")]
    assert cold["data"]["writes"] == 40  # 80% of the mix is registered: one write each
    assert cold["data"]["limit"] > 0 and "Consul's limit" in cold["ratio"]

    noop = next(r for r in rows if r["measure"].startswith("no-op cycle: wall"))
    assert 0 < noop["data"]["seconds"] < 5
    counts = next(r for r in rows if r["measure"].startswith("no-op cycle: HTTP requests"))
    assert counts["data"]["writes"] == 0 and counts["data"]["requests"] <= 3 and not counts["data"]["index_moved"]

    latency = [r for r in rows if r["measure"].startswith("change latency")]
    assert len(latency) == 2 and all(r["data"]["worst"] < 10 for r in latency)
    assert next(r for r in rows if r["measure"].startswith("daemon peak RSS"))["data"]["kb"] > 0
    assert next(r for r in rows if r["measure"].startswith("daemon idle"))["data"]["idle_ok"]

    hooks = next(r for r in rows if r["measure"].startswith("naive hooks"))
    assert "curl" in hooks["baseline"]  # ran, or says curl is missing
    assert by[("nosuchmode", "cold converge")]["value"] == "n/a (nosuchmode mode not built yet)"
    if available() is None:
        assert [r for r in rows if r["measure"].startswith("health round")]

    text = out.read_text()
    assert "| N | mode | health | measurement | jailsyncd |" in text
    assert "bench/run.py --sizes 50" in text and "cores" in text
    assert "| 50 | agent | off | cold converge" in text
