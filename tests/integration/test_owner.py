"""The owner identity is never guessed (issue 10, item 5), against a real Consul and
CBSD workdirs shaped like CBSD's.

With ``host.name`` unset the owner is CBSD's node name, read from
``$workdir/nodename`` on every cycle. At boot the workdir may not be mounted yet
when ``jailsyncd run`` starts: jailsyncd used to take this machine's host name then,
register every jail under it, and later report its own entries as conflicts. Now
nothing is written until the file can be read, and ``run`` retries with its backoff.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from harness import ConsulServer, log_events, run_cli, wait_for, write_config

from jailsyncd.errors import ExitCode
from testing.sample import Workdir

pytestmark = pytest.mark.integration

QUIET = '[sync]\ninterval = "1h"\njitter = "0s"\nbackoff_max = "1s"\n'


def owners(consul: ConsulServer) -> set[str]:
    return {s["Meta"].get("jailsyncd-owner", "") for s in consul.services().values()}


def test_unset_host_name_is_the_cbsd_node_name_and_never_a_guess(consul: ConsulServer, tmp_path: Path) -> None:
    workdir = Workdir.create(tmp_path / "cbsd", nodename="cbsd-node-7")
    workdir.add("web1", jid=3, status=1, ip4_addr="127.0.32.1")
    config = write_config(tmp_path / "c.toml", workdir=workdir.root, consul=consul, host="")
    proc = run_cli("once", config=config)
    assert proc.returncode == 0, proc.stderr
    assert owners(consul) == {"cbsd-node-7"}
    # Without the file: a retryable source error naming it (exit 66); nothing written.
    (workdir.root / "nodename").unlink()
    workdir.add("web2", jid=4, status=1, ip4_addr="127.0.32.2")
    proc = run_cli("once", config=config)
    assert proc.returncode == ExitCode.SOURCE_UNAVAILABLE
    assert proc.stderr.strip().splitlines()[-1] == f"jailsyncd: {workdir.root / 'nodename'}: CBSD's node name file not found (is cbsd.workdir mounted and CBSD initialised?)"
    assert set(consul.services()) == {"jailsyncd-web1"}
    proc = run_cli("purge", "--yes", config=config)
    assert proc.returncode == ExitCode.SOURCE_UNAVAILABLE  # purge needs the owner too
    assert set(consul.services()) == {"jailsyncd-web1"}
    (workdir.root / "nodename").write_text("cbsd-node-7\n")
    proc = run_cli("purge", "--yes", config=config)
    assert proc.returncode == 0, proc.stderr
    assert consul.services() == {}


def test_run_waits_for_the_workdir_at_boot(consul: ConsulServer, tmp_path: Path, start_daemon) -> None:
    """The daemon starts before the workdir is mounted (the path does not exist), keeps
    failing with backoff, and registers under the node name once it appears."""
    assert socket.gethostname() != "cbsd-node-8"
    mounted = tmp_path / "cbsd"
    staging = Workdir.create(tmp_path / "staging", nodename="cbsd-node-8")
    staging.add("web1", jid=3, status=1, ip4_addr="127.0.32.3")
    config = write_config(tmp_path / "c.toml", workdir=mounted, consul=consul, host="", extra=QUIET)
    daemon = start_daemon(config)
    wait_for(lambda: len(daemon.events("backoff")) >= 2, timeout=10, what="two backoffs before the mount")
    [first, *_] = daemon.events("cycle_failed")
    assert first["retryable"] and str(mounted) in first["error"]
    assert consul.services() == {}
    os.rename(staging.root, mounted)  # the mount appears
    wait_for(lambda: "jailsyncd-web1" in consul.services(), timeout=10, what="registration after the mount")
    assert owners(consul) == {"cbsd-node-8"}
    assert daemon.proc.poll() is None
    assert not [e for e in log_events(daemon.log_path.read_text()) if e.get("reason") == "conflict"]
