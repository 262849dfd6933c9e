"""``jailsyncd report --html`` on the logs of a real ``jailsyncd run``, opened in a real
headless Chromium (Debian's ``chromium``, installed by ``scripts/system-deps``): the
page the browser builds holds the drift the daemon logged, per jail and per kind.

Chromium runs with a fresh profile, no sandbox (the suite runs as root), no GPU and
no background networking or updates; every host name resolves to nothing, so a page
that tried to load anything from outside would show it missing rather than fetch it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from harness import REPO, ConsulServer, wait_for, write_config

from testing.sample import Workdir

pytestmark = pytest.mark.integration

QUIET = '[sync]\ninterval = "1h"\njitter = "0s"\n'
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--host-resolver-rules=MAP * ~NOTFOUND",
]


def chromium_dom(page: Path, profile: Path) -> str:
    """The DOM Chromium builds from ``page``, serialised (``--dump-dom``)."""
    browser = shutil.which("chromium")
    assert browser is not None, "chromium is missing: install Debian's chromium package (scripts/system-deps does)"
    proc = subprocess.run(
        [browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


class Dom(HTMLParser):
    """Marks per jail, bars, the summary text and the per-jail table, from the DOM."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.jail: str | None = None
        self.marks: dict[str, list[tuple[str, int]]] = {}
        self.bars: list[tuple[str, int]] = []
        self.summary = ""
        self._in_summary = False
        self.rows: dict[str, list[str]] = {}
        self._row: str | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "g" and a.get("class") == "jail":
            self.jail = a["data-jail"]
            self.marks[self.jail] = []
        elif tag == "rect" and a.get("class") == "mark":
            self.marks[self.jail].append((a["data-kind"], int(a["data-count"])))
        elif tag == "rect" and a.get("class") == "bar":
            self.bars.append((a["data-kind"], int(a["data-count"])))
        elif tag == "p" and a.get("id") == "summary":
            self._in_summary = True
        elif tag == "tr" and "data-jail" in a:
            self._row = a["data-jail"]
            self.rows[self._row] = []

    def handle_endtag(self, tag):
        if tag == "p":
            self._in_summary = False
        elif tag == "tr":
            self._row = None

    def handle_data(self, data):
        if self._in_summary:
            self.summary += data
        elif self._row is not None:
            self.rows[self._row].append(data)


def test_html_report_of_a_real_daemon_in_chromium(consul: ConsulServer, tmp_path: Path, workdir: Workdir, start_daemon) -> None:
    workdir.add("web1", jid=3, status=1, ip4_addr="127.0.34.1")
    workdir.add("vnet1", jid=4, status=1, ip4_addr="REALDHCP")
    daemon = start_daemon(write_config(tmp_path / "c.toml", workdir=workdir.root, consul=consul, extra=QUIET))
    workdir.set("web1", ip4_addr="127.0.34.5")
    wait_for(lambda: consul.services()["jailsyncd-web1"]["Address"] == "127.0.34.5", timeout=5, what="address change")
    workdir.stop("web1")
    wait_for(lambda: "jailsyncd-web1" not in consul.services(), timeout=5, what="web1 gone")
    wait_for(lambda: daemon.finished_cycles() >= 3, timeout=5, what="three cycles logged")
    assert daemon.stop() == 0

    page = tmp_path / "drift report.html"
    proc = subprocess.run([sys.executable, "-m", "jailsyncd", "report", "--html", str(page), str(daemon.log_path)], capture_output=True, text=True, cwd=str(REPO))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"wrote {page}: 4 drift events for 2 jails\n"
    as_json = json.loads(subprocess.run([sys.executable, "-m", "jailsyncd", "report", "--json", str(daemon.log_path)], capture_output=True, text=True, cwd=str(REPO)).stdout)

    dom = Dom(chromium_dom(page, tmp_path / "chromium-profile"))
    assert re.fullmatch(r"4 drift events for 2 jails, .* UTC, in buckets of 1 minute\. Generated .* UTC\.", dom.summary), dom.summary
    # The browser's DOM has one mark per kind for each jail, with the counts of the log.
    assert sorted(dom.marks["web1"]) == [("changed", 1), ("missing", 1), ("orphan", 1)]
    assert dom.marks["vnet1"] == [("unaddressable", 1)]
    assert sum(n for _, n in dom.bars) == 4
    # The per-jail table agrees with the text report's numbers.
    web1 = as_json["jails"]["web1"]["drift"]
    cells = [c for c in dom.rows["web1"] if c.strip()]
    assert cells[0] == "web1"
    assert sorted(int(c) for c in cells[1:]) == sorted(k["count"] for k in web1.values())
