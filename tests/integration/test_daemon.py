"""``jailsyncd run`` as a real subprocess against a real Consul and a CBSD workdir."""

from __future__ import annotations

import json
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from harness import REPO, ConsulServer, free_port, wait_for, write_config

from testing.sample import Workdir

pytestmark = pytest.mark.integration


#: No periodic cycle, and no Consul watch: these tests count the cycles that CBSD
#: changes, kicks and retries start (the Consul watch's own cycles, e.g. when the
#: agent syncs a registration, are tests/integration/test_consul_watch.py's).
QUIET = '[sync]\ninterval = "1h"\njitter = "0s"\nwatch_consul = false\n'


def test_db_changes_reach_consul_within_3s(consul: ConsulServer, tmp_path: Path, workdir: Workdir, start_daemon) -> None:
    workdir.add("web1", jid=0, status=0, ip4_addr="127.0.30.1")
    workdir.add("db1", jid=5, status=1, ip4_addr="127.0.30.2")
    daemon = start_daemon(write_config(tmp_path / "c.toml", workdir=workdir.root, consul=consul, extra=QUIET))
    assert set(consul.services()) == {"jailsyncd-db1"}
    started = time.monotonic()
    workdir.start("web1", jid=7)
    wait_for(lambda: "jailsyncd-web1" in consul.services(), timeout=3, what="web1 registered")
    appeared = time.monotonic() - started
    started = time.monotonic()
    workdir.stop("db1")
    wait_for(lambda: "jailsyncd-db1" not in consul.services(), timeout=3, what="db1 deregistered")
    gone = time.monotonic() - started
    assert appeared < 3 and gone < 3
    reasons = [e["reasons"] for e in daemon.events("cycle_started")]
    assert reasons[0] == ["startup"] and ["change"] in reasons


def test_a_cbsd_change_reaches_consul_through_file_events(consul: ConsulServer, tmp_path: Path, workdir: Workdir, start_daemon) -> None:
    """With the stat an hour apart, only the file events (inotify here) can tell the
    daemon in time; one CBSD write is one cycle, and our own reads are none."""
    workdir.add("web1", jid=0, status=0, ip4_addr="127.0.30.1")
    extra = QUIET.replace('jitter = "0s"', 'jitter = "0s"\nwatch_interval = "1h"')
    daemon = start_daemon(write_config(tmp_path / "c.toml", workdir=workdir.root, consul=consul, extra=extra))
    [started] = daemon.events("db_watch_started")
    assert started["backend"] == "inotify" and started["fallback"] is None
    workdir.start("web1", jid=7)
    wait_for(lambda: "jailsyncd-web1" in consul.services(), timeout=3, what="web1 registered")
    wait_for(lambda: daemon.finished_cycles() >= 2, timeout=3, what="the change's cycle to finish")
    daemon.kick()  # a marker: every request before it has been served once it is
    signals = lambda: [e for e in daemon.events("cycle_started") if e["reasons"] == ["signal"]]  # noqa: E731
    wait_for(lambda: len(signals()) == 1, timeout=5, what="the kicked cycle")
    reasons = [e["reasons"] for e in daemon.events("cycle_started")]
    # One write: its commit and, when the writer closes, its checkpoint (which changes
    # the files again). Within the watcher's settle time that is one request; on a
    # loaded machine the checkpoint may come later and be a second one, never more.
    assert reasons[0] == ["startup"] and reasons[-1] == ["signal"], reasons
    assert 1 <= len(reasons[1:-1]) <= 2 and all(r == ["change"] for r in reasons[1:-1]), reasons
    # Our own reads are no change: nothing between the kicked cycle and a second kick.
    wait_for(lambda: daemon.finished_cycles() == len(reasons), timeout=5, what="the kicked cycle to finish")
    daemon.kick()
    wait_for(lambda: len(signals()) == 2, timeout=5, what="the second kicked cycle")
    after = [e["reasons"] for e in daemon.events("cycle_started")][len(reasons):]
    assert after == [["signal"]], after


def test_kick_and_sigusr1_during_a_slow_cycle_are_served_after_it(consul: ConsulServer, tmp_path: Path, workdir: Workdir, start_daemon) -> None:
    workdir.add("web1", jid=3, status=1, ip4_addr="127.0.30.1")
    extra = QUIET.replace('jitter = "0s"', 'jitter = "0s"\nwatch = "poll"\nwatch_interval = "1h"')
    daemon = start_daemon(write_config(tmp_path / "c.toml", workdir=workdir.root, consul=consul, extra=extra))
    # A CBSD writer holding an exclusive lock makes the next cycle wait (busy timeout 5 s).
    writer = sqlite3.connect(workdir.node_db, isolation_level=None)
    writer.execute("PRAGMA locking_mode=EXCLUSIVE")
    writer.execute("BEGIN EXCLUSIVE")
    writer.execute("UPDATE jails SET ip4_addr = '127.0.30.9' WHERE jname = 'web1'")
    try:
        daemon.kick()
        wait_for(lambda: len(daemon.events("cycle_started")) == 2, timeout=5, what="the kicked cycle to start")
        # That cycle cannot finish while the lock is held: ask twice more during it.
        daemon.kick()
        daemon.proc.send_signal(signal.SIGUSR1)
    finally:
        writer.execute("COMMIT")
        writer.close()
    wait_for(lambda: daemon.finished_cycles() >= 3, timeout=10, what="the cycle asked for during the slow one")
    started = daemon.events("cycle_started")
    assert [e["reasons"] for e in started[1:3]] == [["signal"], ["signal"]]  # kick sends SIGUSR1
    assert not daemon.events("cycle_failed")
    assert len(started) == 3, "requests during a cycle coalesce into exactly one more cycle"
    assert consul.services()["jailsyncd-web1"]["Address"] == "127.0.30.9"


def test_sighup_reload_keeps_old_settings_on_a_broken_file(consul: ConsulServer, tmp_path: Path, workdir: Workdir, start_daemon) -> None:
    workdir.add("www1", jid=3, status=1, ip4_addr="127.0.30.1")
    config = write_config(tmp_path / "c.toml", workdir=workdir.root, consul=consul, extra=QUIET)
    good = config.read_text()
    daemon = start_daemon(config)
    config.write_text(good + "[bogus]\nx = 1\n")
    daemon.proc.send_signal(signal.SIGHUP)
    [failed] = wait_for(lambda: daemon.events("config_reload_failed"), timeout=5, what="config_reload_failed")
    assert "bogus" in failed["error"]
    assert daemon.proc.poll() is None
    config.write_text(good + '\n[[rule]]\nmatch = "www*"\nname = "www"\n')
    daemon.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: daemon.events("config_reloaded"), timeout=5, what="config_reloaded")
    wait_for(lambda: consul.services().get("jailsyncd-www1", {}).get("Service") == "www", timeout=5, what="renamed by the new rule")
    # Settings built once at start are refused as a whole, never half applied.
    config.write_text(config.read_text().replace('timeout = "5s"', 'timeout = "7s"') + '[[rule]]\nmatch = "www*"\nname = "w3"\n')
    daemon.proc.send_signal(signal.SIGHUP)
    refused = wait_for(lambda: [e for e in daemon.events("config_reload_failed") if "restart" in e["error"]], timeout=5, what="restart-only refusal")
    assert refused[0]["error"].startswith("consul changed")
    assert consul.services()["jailsyncd-www1"]["Service"] == "www"


def test_sighup_keeps_the_cycle_count_and_the_deregistration_window(consul: ConsulServer, tmp_path: Path, workdir: Workdir, start_daemon) -> None:
    """``service jailsyncd reload`` (SIGHUP) applies new settings; it is not a new
    daemon. The deregistrations applied within the last ``sync.interval`` still count
    towards ``sync.max_deregistrations`` after it (a reload used to forget them, so
    two stops of two jails each, a reload between them, removed four jails at a limit
    of two without the confirming read), and cycle numbers go on from where they were
    (they started again at 1, so one log held several cycles 1, 2, 3...)."""
    for n in range(1, 5):
        workdir.add(f"j{n}", jid=n, status=1, ip4_addr=f"127.0.31.{n}")
    rails = '[sync]\ninterval = "1h"\njitter = "0s"\nwatch_consul = false\nmax_deregistrations = 2\nconfirm_after = "1h"\n'
    config = write_config(tmp_path / "c.toml", workdir=workdir.root, consul=consul, extra=rails)
    daemon = start_daemon(config)
    wait_for(lambda: {f"jailsyncd-j{n}" for n in range(1, 5)} <= set(consul.services()), timeout=10, what="four jails registered")
    workdir.stop("j1")
    workdir.stop("j2")
    wait_for(lambda: not {"jailsyncd-j1", "jailsyncd-j2"} & set(consul.services()), timeout=10, what="two jails deregistered")
    last = max(e["cycle"] for e in daemon.events("cycle_finished"))

    config.write_text(config.read_text() + '\n[[rule]]\nmatch = "none*"\nname = "none"\n')
    daemon.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: daemon.events("config_reloaded"), timeout=5, what="config_reloaded")
    seen = len(daemon.events("cycle_finished"))
    workdir.stop("j3")
    workdir.stop("j4")
    gone = lambda: not {"jailsyncd-j3", "jailsyncd-j4"} & set(consul.services())  # noqa: E731
    wait_for(lambda: daemon.events("deregistrations_awaiting_confirmation") or gone(), timeout=10, what="the second stop planned")
    assert {"jailsyncd-j3", "jailsyncd-j4"} <= set(consul.services()), "four deregistrations within sync.interval at a limit of two"
    after = [e["cycle"] for e in daemon.events("cycle_finished")][seen:]
    assert min(after) > last, f"cycle numbers started again after the reload: {last} then {after}"
    assert daemon.stop() == 0
    [stopped] = daemon.events("daemon_stopped")
    assert stopped["cycles"] >= max(after)


def test_sigterm_exits_0_within_5s_and_registrations_stay(consul: ConsulServer, tmp_path: Path, workdir: Workdir, start_daemon) -> None:
    workdir.add("web1", jid=3, status=1, ip4_addr="127.0.30.1")
    daemon = start_daemon(write_config(tmp_path / "c.toml", workdir=workdir.root, consul=consul, extra=QUIET))
    started = time.monotonic()
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.proc.wait(timeout=5) == 0
    assert time.monotonic() - started < 5
    assert "jailsyncd-web1" in consul.services()
    assert not daemon.pidfile.exists()


def test_deregister_on_stop(consul: ConsulServer, tmp_path: Path, workdir: Workdir, start_daemon) -> None:
    workdir.add("web1", jid=3, status=1, ip4_addr="127.0.30.1")
    extra = QUIET + "deregister_on_stop = true\n"
    daemon = start_daemon(write_config(tmp_path / "c.toml", workdir=workdir.root, consul=consul, extra=extra))
    assert "jailsyncd-web1" in consul.services()
    assert daemon.stop() == 0
    assert consul.services() == {}


def test_consul_outage_backoff_and_convergence(consul_bin: str, tmp_path: Path, workdir: Workdir, start_daemon) -> None:
    server = ConsulServer(consul_bin).start()
    try:
        workdir.add("web1", jid=3, status=1, ip4_addr="127.0.30.1")
        extra = '[sync]\ninterval = "1h"\njitter = "0s"\nbackoff_max = "2s"\n'
        daemon = start_daemon(write_config(tmp_path / "c.toml", workdir=workdir.root, consul=server, extra=extra))
        assert "jailsyncd-web1" in server.services()
        server.stop()
        workdir.add("web2", jid=4, status=1, ip4_addr="127.0.30.2")  # a change while Consul is down
        wait_for(lambda: len(daemon.events("backoff")) >= 3, timeout=15, what="three backoffs")
        delays = [e["delay_s"] for e in daemon.events("backoff")]
        assert delays[:3] == [1.0, 2.0, 2.0]  # grows, capped by backoff_max
        assert daemon.proc.poll() is None
        server.start()  # a fresh dev agent on the same HTTP port, empty
        wait_for(lambda: set(server.services()) == {"jailsyncd-web1", "jailsyncd-web2"}, timeout=15, what="convergence after the outage")
        assert daemon.events("cycle_failed")[0]["error_kind"] == "ConsulError"
        # Recovery is visible at info level: how many cycles failed, for how long.
        [recovered] = wait_for(lambda: daemon.events("cycle_recovered"), timeout=5, what="cycle_recovered")
        failed = daemon.events("cycle_failed")
        assert recovered["level"] == "info"
        assert recovered["failed_cycles"] == len(failed) >= 3
        assert recovered["last_error_kind"] == "ConsulError"
        assert 3.0 <= recovered["failing_for_s"] < 60
        assert recovered["cycle"] == failed[-1]["cycle"] + 1
    finally:
        server.stop()


def settle_changes(daemon, quiet: float = 2.5, timeout: float = 15) -> None:
    """Wait until no cycle asked for by the watcher ("change") started for ``quiet`` s."""
    deadline = time.monotonic() + timeout
    seen, since = -1, time.monotonic()
    while True:
        count = sum("change" in e["reasons"] for e in daemon.events("cycle_started"))
        if count != seen:
            seen, since = count, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return
        assert time.monotonic() < deadline, "the watcher keeps seeing changes"
        time.sleep(0.1)


def drive_backoff_up(daemon, to: float = 16.0) -> None:
    """Make the failing daemon's backoff wait reach ``to`` seconds quickly: each SIGUSR1
    cuts the current wait, and the cycle it starts fails again, doubling the next."""
    deadline = time.monotonic() + 30
    while not daemon.events("backoff") or daemon.events("backoff")[-1]["delay_s"] < to:
        assert time.monotonic() < deadline, "the backoff did not grow"
        seen = len(daemon.events("backoff"))
        daemon.proc.send_signal(signal.SIGUSR1)
        wait_for(lambda: len(daemon.events("backoff")) > seen, timeout=10, what="one more failed cycle")


def test_consul_answering_again_ends_a_long_backoff_wait(consul_bin: str, tmp_path: Path, workdir: Workdir, start_daemon) -> None:
    """Issue 14, item 2: the local agent restarts while the backoff wait has grown to
    16 s or more; the wait probes the agent (GET /v1/status/leader, twice a second at
    most) and the host converges within 2 s of the agent answering again, not when
    the wait runs out (it used to: one change landed 6.3 s late)."""
    server = ConsulServer(consul_bin).start()
    try:
        workdir.add("web1", jid=3, status=1, ip4_addr="127.0.30.1")
        extra = '[sync]\ninterval = "1h"\njitter = "0s"\nbackoff_max = "60s"\nwatch_consul = false\n'  # the probe, not the watch, ends the wait
        daemon = start_daemon(write_config(tmp_path / "c.toml", workdir=workdir.root, consul=server, extra=extra))
        assert "jailsyncd-web1" in server.services()
        # Reading the DB can checkpoint its WAL, which the watcher sees as a change:
        # let that settle, so that no watcher kick ends the wait measured below.
        settle_changes(daemon)
        server.stop()
        drive_backoff_up(daemon)
        server.start()  # returns once the agent answers with a leader
        back = time.monotonic()
        # The dev agent comes back empty: web1 must be registered again.
        wait_for(lambda: set(server.services()) == {"jailsyncd-web1"}, timeout=10, what="convergence after the restart")
        took = time.monotonic() - back
        assert took <= 2.0, f"converged {took:.1f}s after Consul answered"
        assert daemon.events("consul_answers"), "the probe ended the wait"
        assert daemon.events("cycle_started")[-1]["reasons"] == ["retry"]
    finally:
        server.stop()


def test_a_db_change_ends_a_backoff_wait(consul: ConsulServer, tmp_path: Path, workdir: Workdir, start_daemon) -> None:
    """CBSD's DB goes away (a workdir unmounted, a restore in progress): cycles fail and
    the waits between them grow. The DB coming back is a change the watcher sees, and
    like a kick it ends the wait: the next cycle runs within about a watch interval,
    not up to ``sync.backoff_max`` later."""
    workdir.add("web1", jid=3, status=1, ip4_addr="127.0.30.1")
    extra = '[sync]\ninterval = "1h"\njitter = "0s"\nbackoff_max = "60s"\n'
    daemon = start_daemon(write_config(tmp_path / "c.toml", workdir=workdir.root, consul=consul, extra=extra))
    real = workdir.node_db.resolve()
    away = real.with_name(real.name + ".away")
    real.rename(away)
    drive_backoff_up(daemon)
    assert daemon.events("cycle_failed")[-1]["error_kind"] == "SourceMissing"
    finished = len(daemon.events("cycle_finished"))
    started = len(daemon.events("cycle_started"))
    away.rename(real)
    restored = time.monotonic()
    wait_for(lambda: len(daemon.events("cycle_finished")) > finished, timeout=10, what="a cycle after the DB came back")
    assert time.monotonic() - restored < 4, "the DB change did not end the backoff wait"
    # The Consul watch may ask for cycles too (reason "consul"): look at every cycle
    # started since the DB came back, not only the last.
    assert any("change" in e["reasons"] for e in daemon.events("cycle_started")[started:]), daemon.events("cycle_started")[started:]
    assert "jailsyncd-web1" in consul.services()
    # Recovery from CBSD's side is visible too (item 18), naming what had failed.
    [recovered] = wait_for(lambda: daemon.events("cycle_recovered"), timeout=5, what="cycle_recovered")
    assert recovered["level"] == "info" and recovered["last_error_kind"] == "SourceMissing"
    assert recovered["failed_cycles"] == len(daemon.events("cycle_failed"))


def test_the_node_name_file_appearing_ends_a_backoff_wait(consul: ConsulServer, tmp_path: Path, workdir: Workdir, start_daemon) -> None:
    """The same for the other file a cycle needs: with ``host.name`` unset, while
    ``$workdir/nodename`` cannot be read (CBSD not initialised yet, a restore in
    progress) nothing is written and the waits grow (item 5). The file coming back
    ends the wait like the DB does: registered within seconds, not up to
    ``sync.backoff_max`` later."""
    workdir.add("web1", jid=3, status=1, ip4_addr="127.0.30.5")
    nodename = workdir.root / "nodename"
    nodename.unlink()
    extra = '[sync]\ninterval = "1h"\njitter = "0s"\nbackoff_max = "60s"\n'
    daemon = start_daemon(write_config(tmp_path / "c.toml", workdir=workdir.root, consul=consul, host="", extra=extra))
    drive_backoff_up(daemon)
    assert daemon.events("cycle_failed")[-1]["error_kind"] == "SourceMissing"
    assert consul.services() == {}
    nodename.write_text("node1\n")
    restored = time.monotonic()
    wait_for(lambda: "jailsyncd-web1" in consul.services(), timeout=30, what="registration after the node name came back")
    assert time.monotonic() - restored < 4, "the node name file did not end the backoff wait"
    assert consul.services()["jailsyncd-web1"]["Meta"]["jailsyncd-owner"] == "node1"


def test_metrics_match_what_happened(consul: ConsulServer, tmp_path: Path, workdir: Workdir, start_daemon) -> None:
    port = free_port()
    workdir.add("web1", jid=3, status=1, ip4_addr="127.0.30.1")
    workdir.add("web2", jid=4, status=1, ip4_addr="127.0.30.2")
    workdir.add("dhcp", jid=5, status=1, ip4_addr="DHCP")
    extra = QUIET + f'\n[metrics]\nlisten = "127.0.0.1:{port}"\n'
    daemon = start_daemon(write_config(tmp_path / "c.toml", workdir=workdir.root, consul=consul, extra=extra))
    workdir.stop("web2")
    wait_for(lambda: "jailsyncd-web2" not in consul.services(), timeout=5, what="web2 gone")
    wait_for(lambda: daemon.finished_cycles() >= 2, timeout=5, what="second cycle logged")

    def scrape() -> dict[str, float]:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("jailsyncd_")}

    m = scrape()
    cycles = len(daemon.events("cycle_started"))
    assert m['jailsyncd_cycles_total{result="ok"}'] == cycles
    assert m['jailsyncd_actions_total{action="register"}'] == 2
    assert m['jailsyncd_actions_total{action="deregister"}'] == 1
    assert m['jailsyncd_drift_total{kind="missing"}'] == 2
    assert m['jailsyncd_drift_total{kind="orphan"}'] == 1
    assert m["jailsyncd_managed_services"] == 1
    assert m["jailsyncd_cycle_duration_seconds_count"] == cycles
    assert time.time() - m["jailsyncd_last_success_timestamp_seconds"] < 30
    health = urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5)
    assert health.status == 200 and health.read() == b"ok\n"


def _scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("jailsyncd_")}


def test_drift_counts_transitions_not_states(consul: ConsulServer, tmp_path: Path, workdir: Workdir, start_daemon) -> None:
    """``jailsyncd_drift_total`` counts drift when it appears, not in every cycle that
    still sees it: a DHCP jail, a conflict, a refused deregistration... stay put
    through steady cycles at 1 each. Drift that goes away and comes back counts again."""
    port = free_port()
    workdir.add("web1", jid=3, status=1, ip4_addr="127.0.30.1")
    workdir.add("dhcp", jid=4, status=1, ip4_addr="DHCP")
    workdir.add("smtp", jid=5, status=1, ip4_addr="127.0.30.3")
    squatter = {"ID": "jailsyncd-smtp", "Name": "smtp", "Address": "192.0.2.2", "Meta": {"jailsyncd-owner": "othernode"}}
    consul.put("/v1/agent/service/register", squatter)
    extra = QUIET.replace('jitter = "0s"', 'jitter = "0s"\nwatch = "poll"\nwatch_interval = "1h"') + f'\n[metrics]\nlisten = "127.0.0.1:{port}"\n'
    daemon = start_daemon(write_config(tmp_path / "c.toml", workdir=workdir.root, consul=consul, extra=extra))

    def cycles(n: int) -> None:
        for _ in range(n):
            done = daemon.finished_cycles()
            daemon.proc.send_signal(signal.SIGUSR1)
            wait_for(lambda: daemon.finished_cycles() > done, timeout=10, what="a kicked cycle")

    cycles(4)  # steady: nothing changes
    m = _scrape(port)
    assert m['jailsyncd_cycles_total{result="ok"}'] == 5
    assert m['jailsyncd_drift_total{kind="missing"}'] == 1  # web1, once
    assert m['jailsyncd_drift_total{kind="unaddressable"}'] == 1
    assert m['jailsyncd_drift_total{kind="conflict"}'] == 1
    # Drift that goes away and comes back is a new transition.
    consul.put("/v1/agent/service/deregister/jailsyncd-web1")  # removed by hand
    workdir.set("dhcp", ip4_addr="127.0.30.2")  # addressable now: registered
    cycles(2)
    workdir.set("dhcp", ip4_addr="DHCP")  # and back: unaddressable again, deregistered
    cycles(3)
    m = _scrape(port)
    assert m['jailsyncd_drift_total{kind="missing"}'] == 3  # web1 twice, dhcp once
    assert m['jailsyncd_drift_total{kind="unaddressable"}'] == 2
    assert m['jailsyncd_drift_total{kind="orphan"}'] == 1  # dhcp's service
    assert m['jailsyncd_drift_total{kind="conflict"}'] == 1


def test_report_counts_what_a_real_daemon_logged(consul: ConsulServer, tmp_path: Path, workdir: Workdir, start_daemon) -> None:
    workdir.add("web1", jid=3, status=1, ip4_addr="127.0.30.1")
    workdir.add("vnet1", jid=4, status=1, ip4_addr="REALDHCP")
    daemon = start_daemon(write_config(tmp_path / "c.toml", workdir=workdir.root, consul=consul, extra=QUIET))
    workdir.set("web1", ip4_addr="127.0.30.5")
    wait_for(lambda: consul.services()["jailsyncd-web1"]["Address"] == "127.0.30.5", timeout=5, what="address change")
    workdir.stop("web1")
    wait_for(lambda: "jailsyncd-web1" not in consul.services(), timeout=5, what="web1 gone")
    wait_for(lambda: daemon.finished_cycles() >= 3, timeout=5, what="three cycles logged")
    assert daemon.stop() == 0
    log = daemon.log_path
    with open(log, "ab") as fh:
        fh.write(b"garbage line\n\xff\xfe binary\n[1, 2]\n{\"no\": \"event\"}\n")
    proc = subprocess.run([sys.executable, "-m", "jailsyncd", "report", "--json", str(log)], capture_output=True, text=True, cwd=str(REPO))
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    web1 = report["jails"]["web1"]
    assert web1["drift"]["missing"]["count"] == 1
    assert web1["drift"]["changed"]["count"] == 1
    assert web1["drift"]["changed"]["fields"] == {"address": 1, "tagged_addresses": 1}
    assert web1["drift"]["orphan"]["count"] == 1
    assert web1["actions"] == {"registered": 1, "updated": 1, "deregistered": 1, "failed": 0, "refused": 0}
    assert report["jails"]["vnet1"]["drift"]["unaddressable"]["count"] == 1
    assert report["totals"]["lines_skipped"] >= 4


def _get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_idle_connections_never_block_healthz_or_metrics(consul: ConsulServer, tmp_path: Path, workdir: Workdir, start_daemon) -> None:
    """One client that connects and says nothing (or half a request) must not stall
    ``/healthz`` for the supervisor: requests are served concurrently, every connection
    has a deadline, and when all slots are taken an extra client gets a quick 503
    instead of a hang. Unknown paths answer 404."""
    from jailsyncd.metrics import CONNECTION_DEADLINE, MAX_CONNECTIONS

    port = free_port()
    workdir.add("web1", jid=3, status=1, ip4_addr="127.0.30.1")
    extra = QUIET + f'\n[metrics]\nlisten = "127.0.0.1:{port}"\n'
    daemon = start_daemon(write_config(tmp_path / "c.toml", workdir=workdir.root, consul=consul, extra=extra))
    base = f"http://127.0.0.1:{port}"
    idle = socket.create_connection(("127.0.0.1", port), timeout=10)
    half = socket.create_connection(("127.0.0.1", port), timeout=10)
    half.sendall(b"GET /metr")
    try:
        started = time.monotonic()
        assert _get(base + "/healthz") == (200, b"ok\n")
        status, body = _get(base + "/metrics")
        assert status == 200 and b"jailsyncd_cycles_total" in body
        assert time.monotonic() - started < 2
        assert _get(base + "/nope")[0] == 404
        assert _get(base + "/")[0] == 404
        assert _get(base + "/metrics/x")[0] == 404
        # The server ends connections that outlive their deadline.
        idle.settimeout(CONNECTION_DEADLINE + 5)
        half.settimeout(CONNECTION_DEADLINE + 5)
        started = time.monotonic()
        assert idle.recv(100) == b""
        half.recv(100)
        assert time.monotonic() - started < CONNECTION_DEADLINE + 2
    finally:
        idle.close()
        half.close()
    # Every slot taken by an idle client: the next one gets 503 at once, not a hang.
    hogs = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(MAX_CONNECTIONS)]
    try:
        wait_for(lambda: _get(base + "/healthz")[0] == 503, timeout=5, what="503 when every slot is taken")
    finally:
        for hog in hogs:
            hog.close()
    wait_for(lambda: _get(base + "/healthz") == (200, b"ok\n"), timeout=5, what="slots free again")
    assert daemon.proc.poll() is None
    assert daemon.stop() == 0
    lines = daemon.log_path.read_text().splitlines()
    assert lines and all(json.loads(line).get("event") for line in lines), "cut connections leave no traceback in the log"


def test_a_bulk_stop_converges_with_default_settings(consul: ConsulServer, tmp_path: Path, workdir: Workdir, start_daemon) -> None:
    """Issue 14, item 3: stopping 20 of 30 jails (rows kept) is more than
    sync.max_deregistrations (10). With default settings run holds the burst, reads
    again sync.confirm_after (10 s) later, and applies it when that read agrees: well
    within two sync.intervals (60 s). It used to be refused on every cycle, forever.
    The stops are written one by one, as CBSD does: read in steps, they still make
    one burst (the deregistrations of the last sync.interval count together)."""
    for i in range(30):
        workdir.add(f"bulk{i:02}", jid=i + 1, status=1, ip4_addr=f"127.0.31.{i + 1}")
    daemon = start_daemon(write_config(tmp_path / "c.toml", workdir=workdir.root, consul=consul))
    wait_for(lambda: len([s for s in consul.services() if s.startswith("jailsyncd-bulk")]) == 30, timeout=15, what="30 registered")
    stopped = time.monotonic()
    for i in range(20):
        workdir.stop(f"bulk{i:02}")
    wait_for(lambda: daemon.events("deregistrations_awaiting_confirmation"), timeout=10, what="the burst held")
    wait_for(lambda: len([s for s in consul.services() if s.startswith("jailsyncd-bulk")]) == 10, timeout=40, what="the burst applied")
    took = time.monotonic() - stopped
    assert took < 2 * 30, took
    assert sorted(s for s in consul.services() if s.startswith("jailsyncd-bulk")) == [f"jailsyncd-bulk{i:02}" for i in range(20, 30)]
    # The rail's promise: at most max_deregistrations (10) went without a confirming
    # read. The watcher may read the 20 stops in steps (4, 6, 10...): the steps count
    # together within one sync.interval, so the rest waited for its confirmation.
    events = [e for e in daemon.events() if e["event"] in ("service_deregistered", "deregistrations_awaiting_confirmation")]
    first_hold = next(i for i, e in enumerate(events) if e["event"] == "deregistrations_awaiting_confirmation")
    unconfirmed = sum(1 for e in events[:first_hold] if e["event"] == "service_deregistered")
    assert unconfirmed <= 10, unconfirmed
    assert daemon.events("deregistrations_confirmed")[0]["count"] == 20 - unconfirmed
    assert not daemon.events("deregistrations_refused")
