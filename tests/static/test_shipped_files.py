"""The files jailsyncd ships, checked by the programs that judge them: each check runs
a tool over a file of the repository (none starts jailsyncd, opens a network
connection or waits on time), which is why they are here and not in tests/unit.

- ``rc.d/jailsyncd``: executable, ``sh -n`` and ``shellcheck -s sh`` clean (its static
  checks are in tests/unit/test_ops_files.py, runs of it under ``/bin/sh`` in
  tests/integration/test_rc_script.py);
- both man pages ``mandoc -Tlint`` clean;
- the alert rules in etc/prometheus/ pass Prometheus's own ``promtool`` (Debian
  package ``prometheus``, installed by ``scripts/system-deps``): ``check rules`` for
  syntax and ``test rules`` for the ``jailsyncd.rules.test.yml`` cases (each alert
  fires on its condition and stays quiet on a healthy host). A missing promtool is a
  failure, never a skip: CI must not pass without having run the rules' tests;
  tests/unit/test_prometheus_rules.py checks that every alert has both cases;
- every file the FreeBSD port installs is in the sdist (built with setuptools), so
  the port's post-install finds it in WRKSRC (tests/unit/test_freebsd_port.py checks
  the rest of the port skeleton).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from freebsd_port import ROOT, installed_files, variables

RC = ROOT / "rc.d" / "jailsyncd"
MAN8 = ROOT / "docs" / "man" / "jailsyncd.8"
MAN5 = ROOT / "docs" / "man" / "jailsyncd.toml.5"
RULES = ROOT / "etc" / "prometheus" / "jailsyncd.rules.yml"
TESTS = ROOT / "etc" / "prometheus" / "jailsyncd.rules.test.yml"


def test_rc_script_is_executable_and_parses() -> None:
    assert os.access(RC, os.X_OK), f"{RC} must be executable (installed with mode 555)"
    proc = subprocess.run(["sh", "-n", str(RC)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_rc_script_passes_shellcheck() -> None:
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (scripts/system-deps installs it)")
    proc = subprocess.run(["shellcheck", "-s", "sh", str(RC)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("page", [MAN8, MAN5], ids=lambda p: p.name)
def test_man_page_is_mandoc_lint_clean(page: Path) -> None:
    if shutil.which("mandoc") is None:
        pytest.skip("mandoc is not installed (scripts/system-deps installs it)")
    proc = subprocess.run(["mandoc", "-Tlint", "-W", "warning", str(page)], capture_output=True, text=True)
    assert proc.stdout + proc.stderr == ""
    assert proc.returncode == 0


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


def test_every_installed_file_is_in_the_sdist(tmp_path: Path) -> None:
    sources = [src for src, _ in installed_files()] + ["rc.d/jailsyncd"]
    assert variables()["PORTEXAMPLES"].split() == ["acl", "prometheus"]
    sources += [str(p.relative_to(ROOT)) for p in sorted((ROOT / "docs" / "acl").glob("*.hcl"))]
    sources += [str(p.relative_to(ROOT)) for p in sorted((ROOT / "etc" / "prometheus").glob("*.yml"))]
    assert len(sources) >= 11
    for src in sources:
        assert (ROOT / src).is_file(), src
    proc = subprocess.run(
        [sys.executable, "-c",
         "import sys; from setuptools import build_meta; print(build_meta.build_sdist(sys.argv[1]))", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    name = proc.stdout.strip().splitlines()[-1]
    with tarfile.open(tmp_path / name) as sdist:
        members = {m.split("/", 1)[1] for m in sdist.getnames() if "/" in m}
    missing = [src for src in sources if src not in members]
    assert not missing, f"not in the sdist (MANIFEST.in): {missing}"
