"""``bench/pacing.py`` at a tiny size, so that it does not rot: the table is printed and
says what the pacing is for (replies lost without it, none with it)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from harness import REPO

from testing.devnet import available

pytestmark = [pytest.mark.integration, pytest.mark.skipif(available() is not None, reason=str(available()))]


def test_bench_pacing_small() -> None:
    argv = [sys.executable, str(REPO / "bench" / "pacing.py"), "--n", "60", "--limit", "40", "--count", "1", "--timeout", "0.5", "--interval", "2"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=str(REPO))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in proc.stdout.splitlines() if line.startswith("| ") and "---" not in line}
    unpaced, default = rows["no pacing"], rows["FreeBSD default for icmplim=40"]
    assert int(unpaced[-1].split(" / ")[0]) < 60, proc.stdout
    assert default[0] == "21/s" and default[-1] == "60 / 60" and default[2] == default[3] == "no", proc.stdout
