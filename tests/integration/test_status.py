"""``jailsyncd status`` against a real ``jailsyncd run`` (and against none).

The daemon runs on the sample CBSD workdir (jails, a running bhyve VM, DHCP jails
with no address, an opted-out jail) plus a squatter entry that makes ``smtp`` a
conflict; status reads its pidfile and metrics, and never writes to Consul.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from harness import ConsulServer, free_port, run_cli, wait_for, write_config

from jailsyncd import __version__
from jailsyncd.errors import ExitCode
from testing.sample import Workdir

pytestmark = pytest.mark.integration

# Only the start-up cycle (and kicks): the numbers of the last cycle stay put.
#: No Consul watch either: its cycle after the agent syncs our writes would replace the
#: last cycle's numbers these tests read.
QUIET = '[sync]\ninterval = "1h"\njitter = "0s"\nwatch = "poll"\nwatch_interval = "1h"\nwatch_consul = false\n'


def status(config: Path, pidfile: Path, *extra: str) -> subprocess.CompletedProcess:
    return run_cli("status", "--pidfile", str(pidfile), *extra, config=config, timeout=30)


def metrics_config(path: Path, **kw) -> tuple[Path, int]:
    port = free_port()
    kw["extra"] = kw.get("extra", QUIET) + f'\n[metrics]\nlisten = "127.0.0.1:{port}"\n'
    return write_config(path, **kw), port


def test_status_of_a_running_daemon(consul: ConsulServer, tmp_path: Path, sample: Workdir, start_daemon) -> None:
    consul.put("/v1/agent/service/register", {"ID": "jailsyncd-smtp", "Name": "smtp", "Address": "192.0.2.2", "Meta": {"jailsyncd-owner": "othernode"}})
    config, _ = metrics_config(tmp_path / "c.toml", workdir=sample.root, consul=consul)
    daemon = start_daemon(config)
    index = consul.index()
    proc = status(config, daemon.pidfile, "--json")
    assert proc.returncode == 0, proc.stderr
    s = json.loads(proc.stdout)
    assert s["running"] is True and s["pid"] == daemon.proc.pid and s["version"] == "0.1.0"
    assert 0 <= s["uptime_s"] < 60
    assert s["managed"] == {
        "bhyve": {"registered": 1, "skipped": {"unaddressable": 1}},
        "jail": {"registered": 6, "skipped": {"conflict": 1, "opted_out": 1, "unaddressable": 1}},
    }
    assert s["managed_services"] == 7 and s["conflicts"] == 1 and s["refused_deregistrations"] == 0
    assert s["last_cycle"]["actions"] == {"deregister": 0, "register": 7, "update": 0}
    assert s["last_cycle"]["errors"] == {} and s["last_cycle"]["last_success_at"] is not None
    assert s["consul_reachable"] is True and s["health"] is None
    assert s["cycles"] == {"ok": 1}
    text = status(config, daemon.pidfile)
    assert text.returncode == 0, text.stderr
    out = text.stdout
    assert f"running, pid {daemon.proc.pid}" in out
    assert "changed: 7 registered, 0 updated, 0 deregistered" in out
    assert "jail                6  conflict 1, opted_out 1, unaddressable 1" in out
    assert "bhyve               1  unaddressable 1" in out
    assert "conflicts 1, refused deregistrations 0" in out
    assert "consul       reachable at the last cycle" in out
    assert max(len(line) for line in out.splitlines()) <= 80
    assert consul.index() == index, "status wrote to Consul"


def test_status_shows_health_and_an_unreachable_consul(consul_bin: str, tmp_path: Path, workdir: Workdir, start_daemon) -> None:
    server = ConsulServer(consul_bin).start()
    try:
        workdir.add("web1", jid=3, status=1, ip4_addr="127.0.33.1")
        workdir.add("web2", jid=4, status=1, ip4_addr="127.0.33.2")
        extra = '[sync]\ninterval = "1h"\njitter = "0s"\nbackoff_max = "2s"\n'
        config, _ = metrics_config(tmp_path / "c.toml", workdir=workdir.root, consul=server, extra=extra, health='interval = "2s"\ntimeout = "0.5s"')
        daemon = start_daemon(config)

        def health() -> dict:
            return json.loads(status(config, daemon.pidfile, "--json").stdout)["health"]

        wait_for(lambda: health()["last_round_at"] is not None and health()["passing"] == 2, timeout=10, what="a health round")
        h = health()
        assert h["critical"] == 0 and h["interval_s"] == 2 and h["last_round_duration_s"] < 2
        server.stop()
        workdir.add("web3", jid=5, status=1, ip4_addr="127.0.33.3")  # a change: the next cycle meets the outage
        wait_for(lambda: daemon.events("cycle_failed"), timeout=10, what="a failed cycle")
        proc = status(config, daemon.pidfile, "--json")
        assert proc.returncode == 0
        s = json.loads(proc.stdout)
        assert s["consul_reachable"] is False
        assert s["last_cycle"]["errors"] == {"ConsulError": 1}
        assert s["cycles"]["failed"] >= 1
        text = status(config, daemon.pidfile).stdout
        assert "UNREACHABLE at the last cycle" in text and "errors: ConsulError x1" in text
        assert "health       2 passing, 0 critical" in text
    finally:
        server.stop()


def test_status_without_a_daemon_exits_3(tmp_path: Path, consul: ConsulServer, workdir: Workdir) -> None:
    config, port = metrics_config(tmp_path / "c.toml", workdir=workdir.root, consul=consul)
    proc = status(config, tmp_path / "none.pid")
    assert proc.returncode == ExitCode.NOT_RUNNING == 3
    assert proc.stdout.startswith(f"jailsyncd is not running: {tmp_path / 'none.pid'}: no pidfile")
    assert f"127.0.0.1:{port}" in proc.stdout
    # A stale pidfile: the process it names is gone.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / "stale.pid"
    stale.write_text(f"{dead.pid}\n")
    proc = status(config, stale, "--json")
    assert proc.returncode == 3
    s = json.loads(proc.stdout)
    assert s["running"] is False and s["pid"] is None
    assert s["pidfile_problem"] == f"{stale}: process {dead.pid} is not running (a stale pidfile)"


def test_status_without_metrics_knows_only_the_process(consul: ConsulServer, tmp_path: Path, workdir: Workdir, start_daemon) -> None:
    workdir.add("web1", jid=3, status=1, ip4_addr="127.0.33.1")
    config = write_config(tmp_path / "c.toml", workdir=workdir.root, consul=consul, extra=QUIET)
    daemon = start_daemon(config)
    proc = status(config, daemon.pidfile)
    assert proc.returncode == 0
    assert f"running, pid {daemon.proc.pid}, up " in proc.stdout and "[metrics] listen is not set" in proc.stdout
    # The process's own age (the platform's process table), the version of this install.
    s = json.loads(status(config, daemon.pidfile, "--json").stdout)
    assert s["running"] and s["metrics_url"] is None and 0 <= s["uptime_s"] < 120 and s["started_at"].endswith("Z")
    assert s["installed_version"] == __version__ and "version" not in s
    daemon.stop()
    assert status(config, daemon.pidfile).returncode == 3


def test_status_read_with_another_settings_file_says_which(consul: ConsulServer, tmp_path: Path, workdir: Workdir, start_daemon) -> None:
    """``jailsyncd run`` started with ``--config FILE`` (metrics on), then
    ``jailsyncd status`` typed without it: status reads its own settings file (the
    default one, absent here: no metrics), so it cannot ask the daemon. It said
    "[metrics] listen is not set" beside a daemon whose file sets it; the line names
    the file it read and how to give it the daemon's."""
    workdir.add("web1", jid=3, status=1, ip4_addr="127.0.33.1")
    config, _ = metrics_config(tmp_path / "c.toml", workdir=workdir.root, consul=consul)
    daemon = start_daemon(config)
    other = tmp_path / "other.toml"
    other.write_text("")
    proc = status(other, daemon.pidfile)
    assert proc.returncode == 0, proc.stderr
    [line] = [line for line in proc.stdout.splitlines() if "listen is not set" in line]
    assert str(other) in line and "--config" in line, line
