"""A small run of the benchmark (``bench/run.py``, N = 50), so that it does not rot.

CI does not run the real benchmark (minutes long); this runs every phase once at a
tiny size, both modes, and checks the table is there and says what it must:
jailsyncd converged, a no-op cycle wrote nothing, CBSD changes reached Consul, hand
edits in Consul were repaired by the running daemon, its idle cost was read from its
own log and /proc, and the baselines ran on the same payloads. The daemon runs with
a 1 s ``sync.interval`` here (``--sync``) so that the drift rows are bounded in time
whatever reacts first; the benchmark proper uses jailsyncd's defaults.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from harness import REPO

from testing.devnet import available

pytestmark = pytest.mark.integration


def test_bench_smoke_n50(consul_bin: str, tmp_path: Path) -> None:
    out, raw = tmp_path / "RESULTS.md", tmp_path / "rows.json"
    out.write_text("old\n<!-- cluster.py:start -->\ncluster rows\n<!-- cluster.py:end -->\n")
    argv = [
        sys.executable, str(REPO / "bench" / "run.py"),
        "--sizes", "50", "--modes", "agent,catalog,nosuchmode", "--health", "off",
        "--cold-repeat", "1", "--noops", "3", "--changes", "1", "--drift-trials", "1", "--idle-other", "2.5",
        "--spacing", "0.1,0.2", "--sync", 'interval = "1s"', "--sync", 'jitter = "0s"', "--rounds", "1",
        "--budget", "150", "--out", str(out), "--json", str(raw),
    ]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=240, cwd=str(REPO), env={**os.environ, "CONSUL_BIN": consul_bin})
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

    for mode in ("agent", "catalog"):
        mine = [r for r in rows if r["mode"] == mode]
        latency = [r for r in mine if r["measure"].startswith("CBSD change -> Consul")]
        assert len(latency) == 3 and all(r["data"]["worst"] < 10 for r in latency), latency
        drift = [r for r in mine if r["measure"].startswith("Consul drift repaired")]
        assert len(drift) == 2 and all(r["data"]["worst"] < 10 for r in drift), drift
        assert next(r for r in mine if r["measure"].startswith("daemon peak RSS"))["data"]["kb"] > 0
        assert next(r for r in mine if r["measure"].endswith("catalog writes"))["data"]["idle_ok"]
        cpu = next(r for r in mine if r["measure"].endswith("% of one core"))["data"]
        assert 0 <= cpu["percent"] < 100 and cpu["window"] == 2.5
        # A 1 s interval: the idle window holds at least one no-op cycle (or skip).
        noop = next(r for r in mine if r["measure"].startswith("no-op cycle in `run`, nothing changed ("))
        assert noop["data"]["count"] >= 1 and noop["data"]["worst"] < 5
        cost = next(r for r in mine if r["measure"].startswith("no-op cycle in `run`: Consul requests"))["data"]
        assert cost["requests"] >= 0 and cost["bytes_read"] >= 0

    hooks = next(r for r in rows if r["measure"].startswith("naive hooks"))
    assert "curl" in hooks["baseline"]  # ran, or says curl is missing
    assert by[("nosuchmode", "cold converge")]["value"] == "n/a (nosuchmode mode not built yet)"
    if available() is None:
        assert [r for r in rows if r["measure"].startswith("health round")]

    text = out.read_text()
    assert "| N | mode | health | measurement | jailsyncd |" in text
    assert "bench/run.py --sizes 50" in text and "cores" in text
    assert "| 50 | agent | off | cold converge" in text
    # The cluster benchmark's section (bench/cluster.py --write) survives a rewrite.
    assert text.startswith("# Benchmark results") and text.endswith("<!-- cluster.py:start -->\ncluster rows\n<!-- cluster.py:end -->\n")


def test_discovery_bench_smoke_n20() -> None:
    """``bench/discovery.py`` at N = 20: every scenario finds what it built, a no-op
    cycle parses no lease file, and the neighbor table runs once per cycle only
    where the lease files left targets without an address."""
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "discovery.py"), "20", "--rounds", "2"],
        capture_output=True, text=True, timeout=120, cwd=str(REPO),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in proc.stdout.splitlines() if line.startswith("| ") and "scenario" not in line}
    assert rows["workload (10% DHCP, no MAC)"][:2] == ["2", "0"]
    leases = rows["leases (N/2 dhclient, N/2 dnsmasq)"]
    assert leases[:2] == ["20", "20"] and leases[6:] == ["11/0", "0/0"] and float(leases[5]) > 0
    neighbor = rows["neighbor (N VMs, ip -json neigh)"]
    if available() is None:
        assert neighbor[:2] == ["20", "20"] and neighbor[6:] == ["0/0", "1/1"] and float(neighbor[5]) > 0
