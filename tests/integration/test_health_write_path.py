"""Health writes never leave Consul wrong (issue 10, items 2 and 3), with real ICMP and
a real Consul 1.8.7 inside a network namespace the test creates (as test_health.py):
one refused check write does not stop the round, a conflict's checks are never
written, and ``once`` keeps the statuses it wrote true with or without a daemon."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from harness import REPO, ConsulServer, log_events, wait_for, write_config

from jailsyncd.adapters.cbsd import CbsdSource
from jailsyncd.adapters.consul import connect
from jailsyncd.adapters.probe import Prober
from testing.devnet import NetNS, available
from jailsyncd.healthloop import HealthLoop
from jailsyncd.metrics import Metrics
from jailsyncd.reconcile import Reconciler
from testing.sample import Workdir
from jailsyncd.settings import load_settings

pytestmark = [pytest.mark.integration, pytest.mark.skipif(available() is not None, reason=str(available()))]

UP, DOWN, OTHER = "10.78.0.1", "10.78.0.2", "10.78.0.3"  # DOWN is never on the namespace's lo
HEALTH = 'interval = "1s"\ntimeout = "300ms"\ncount = 1\nfailures_before_critical = 1\nsuccess_before_passing = 1\nheartbeat_ttl = "3s"\nttl = "1m"'


def checks(consul: ConsulServer) -> dict[str, dict]:
    return consul.get("/v1/agent/checks")


def status(consul: ConsulServer) -> dict[str, str]:
    return {k: c["Status"] for k, c in checks(consul).items()}


def in_process(config: Path) -> tuple[Reconciler, HealthLoop]:
    settings = load_settings(config, env={})
    store = connect(settings.consul)
    health = HealthLoop(settings.health, Prober(), store)
    return Reconciler(settings, CbsdSource(settings.cbsd.workdir), store, health=health), health


def once_in(netns: NetNS, config: Path) -> tuple[int, list[dict], str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONSUL_")}
    argv = [*netns.prefix(), sys.executable, "-m", "jailsyncd", "--config", str(config), "once"]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=str(REPO), timeout=60)
    return proc.returncode, log_events(proc.stderr), proc.stderr


def stays(predicate, seconds: float, what: str) -> None:
    """``predicate`` holds at every poll for ``seconds`` (an observation window: the
    point is that nothing changes)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        assert predicate(), what
        time.sleep(0.1)


# -- item 2 ---------------------------------------------------------------------------------


def test_one_refused_check_write_does_not_stop_the_round(netns: NetNS, ns_consul: ConsulServer, tmp_path: Path, workdir: Workdir) -> None:
    """a1's service is removed by hand after the cycle, so its check write is refused
    (Consul 1.8.7: 500 "CheckID ... does not have associated TTL"); b1's write in the same round still lands.
    Before the fix the first refused write raised and ended the round for every jail."""
    for address in (UP, OTHER):
        netns.add_address(address)
    workdir.add("a1", jid=1, status=1, ip4_addr=UP)
    workdir.add("b1", jid=2, status=1, ip4_addr=OTHER)
    config = write_config(tmp_path / "c.toml", workdir=workdir.root, consul=ns_consul, health=HEALTH)
    settings = load_settings(config, env={})
    reconciler, health = in_process(config)

    def body() -> None:
        assert reconciler.cycle().ok
        health.round()
        assert (status(ns_consul)["jailsyncd-a1:ping"], status(ns_consul)["jailsyncd-b1:ping"]) == ("passing", "passing")
        ns_consul.put("/v1/agent/service/deregister/jailsyncd-a1")
        netns.del_address(UP)
        netns.del_address(OTHER)
        stats = health.round()
        assert (stats.writes, stats.failed) == (1, 1)
        assert status(ns_consul)["jailsyncd-b1:ping"] == "critical"
        assert "jailsyncd-a1:ping" not in status(ns_consul)
        # The daemon's metrics count the refused write (issue 10, item 19: failures)
        # apart from the written ones, in a round that still counts as ok.
        metrics = Metrics()
        metrics.watch(lambda: settings, health)
        netns.add_address(OTHER)  # b1 answers again: its status must be written
        health.safe_round()
        sample = metrics.registry.get_sample_value
        assert sample("jailsyncd_health_rounds_total", {"result": "ok"}) == 1
        assert sample("jailsyncd_health_writes_total") == 1
        assert sample("jailsyncd_health_write_failures_total") == 1

    netns.call(body)


def test_catalog_mode_one_refused_check_write_does_not_stop_the_round(netns: NetNS, ns_consul: ConsulServer, tmp_path: Path, workdir: Workdir) -> None:
    """The same in catalog mode, where a round's check writes go in one transaction:
    a1's node is removed by hand after the cycle, so the operation writing its check
    is refused; the transaction is tried again without it and b1's check lands."""
    for address in (UP, OTHER):
        netns.add_address(address)
    workdir.add("a1", jid=1, status=1, ip4_addr=UP, host_hostname="a1.my.domain")
    workdir.add("b1", jid=2, status=1, ip4_addr=OTHER, host_hostname="b1.my.domain")
    config = write_config(tmp_path / "c.toml", workdir=workdir.root, consul=ns_consul, health=HEALTH, consul_extra='mode = "catalog"')
    reconciler, health = in_process(config)

    def node_checks() -> dict[str, str]:
        return {c["CheckID"]: c["Status"] for c in ns_consul.get("/v1/health/state/any") if c["CheckID"].startswith("jailsyncd-")}

    def body() -> None:
        assert reconciler.cycle().ok
        health.round()
        assert node_checks() == {"jailsyncd-a1:ping": "passing", "jailsyncd-b1:ping": "passing"}
        ns_consul.put("/v1/catalog/deregister", {"Node": "a1.my.domain"})
        netns.del_address(UP)
        netns.del_address(OTHER)
        stats = health.round()
        assert (stats.writes, stats.failed) == (1, 1)
        assert node_checks() == {"jailsyncd-b1:ping": "critical"}

    netns.call(body)


def test_a_conflicts_checks_are_never_written(netns: NetNS, ns_consul: ConsulServer, tmp_path: Path, workdir: Workdir) -> None:
    """``jailsyncd-x`` belongs to another owner and has a TTL check with jailsyncd's
    check ID. CBSD's jail ``x`` (down) is a conflict: no round may write that check.
    Before the fix the round wrote 'critical' into it."""
    foreign = {
        "ID": "jailsyncd-x", "Name": "x", "Meta": {"jailsyncd-owner": "someone-else"},
        "Checks": [{"CheckID": "jailsyncd-x:ping", "Name": "theirs", "TTL": "1h", "Status": "passing"}],
    }
    ns_consul.put("/v1/agent/service/register", foreign)
    ns_consul.put("/v1/agent/check/update/jailsyncd-x:ping", {"Status": "passing", "Output": "written by its owner"})
    netns.add_address(UP)
    workdir.add("x", jid=1, status=1, ip4_addr=DOWN)
    workdir.add("mine", jid=2, status=1, ip4_addr=UP)
    reconciler, health = in_process(write_config(tmp_path / "c.toml", workdir=workdir.root, consul=ns_consul, health=HEALTH))

    def body() -> None:
        result = reconciler.cycle()
        assert [(s.jail, s.reason) for s in result.plan.skipped] == [("x", "conflict")]
        for _ in range(2):
            health.round()
        assert status(ns_consul)["jailsyncd-mine:ping"] == "passing"
        theirs = checks(ns_consul)["jailsyncd-x:ping"]
        assert (theirs["Status"], theirs["Output"]) == ("passing", "written by its owner")

    netns.call(body)


# -- item 3 ---------------------------------------------------------------------------------


def test_once_without_a_daemon_keeps_answering_jails_passing(netns: NetNS, ns_consul: ConsulServer, tmp_path: Path, workdir: Workdir) -> None:
    """No daemon: ``once`` registers the heartbeat with ``health.ttl`` (1 min here,
    marked ``by=once``) and sets it passing, so the alias check of a jail that answered
    stays passing long past ``heartbeat_ttl`` (3 s). Before the fix it turned
    critical ~3 s after ``once`` exited."""
    netns.add_address(UP)
    workdir.add("web1", jid=1, status=1, ip4_addr=UP)
    workdir.add("dead1", jid=2, status=1, ip4_addr=DOWN)
    config = write_config(tmp_path / "c.toml", workdir=workdir.root, consul=ns_consul, health=HEALTH)
    rc, _, stderr = once_in(netns, config)
    assert rc == 0, stderr
    want = {"jailsyncd-web1:ping": "passing", "jailsyncd-web1:alive": "passing", "jailsyncd-dead1:ping": "critical"}
    assert {k: status(ns_consul)[k] for k in want} == want
    stays(lambda: {k: status(ns_consul)[k] for k in want} == want, 2 * 3 + 1.5, "statuses kept after once")
    heartbeat = checks(ns_consul)["jailsyncd.heartbeat:ttl"]
    assert "by=once" in heartbeat["Notes"] and "ttl=60s" in heartbeat["Notes"] and "no daemon" in heartbeat["Output"]


def test_once_leaves_a_running_daemons_health_alone(netns: NetNS, ns_consul: ConsulServer, tmp_path: Path, workdir: Workdir, start_daemon) -> None:
    """With a daemon alive (its heartbeat passing), ``once`` writes no status and
    keeps the daemon's heartbeat definition. Once the daemon is dead and its heartbeat
    expired, ``once`` takes over; a daemon started later puts its own heartbeat back."""
    netns.add_address(UP)
    workdir.add("web1", jid=1, status=1, ip4_addr=UP)
    config = write_config(tmp_path / "c.toml", workdir=workdir.root, consul=ns_consul, health=HEALTH, extra='[sync]\ninterval = "1h"\n')
    daemon = start_daemon(config, netns.prefix())
    wait_for(lambda: status(ns_consul).get("jailsyncd-web1:alive") == "passing", timeout=10, what="the daemon's statuses")
    definition = checks(ns_consul)["jailsyncd.heartbeat:ttl"]["Notes"]
    assert "by=once" not in definition
    rc, evs, stderr = once_in(netns, config)
    assert rc == 0, stderr
    assert [e["event"] for e in evs if e["event"] in ("health_left_to_daemon", "health_round")] == ["health_left_to_daemon"]
    assert not [e for e in evs if e["event"].startswith("heartbeat_service_")]
    assert checks(ns_consul)["jailsyncd.heartbeat:ttl"]["Notes"] == definition

    daemon.proc.send_signal(signal.SIGKILL)
    daemon.proc.wait()
    wait_for(lambda: status(ns_consul)["jailsyncd.heartbeat:ttl"] == "critical", timeout=6, what="the dead daemon's heartbeat expired")
    rc, evs, stderr = once_in(netns, config)
    assert rc == 0, stderr
    assert [e["event"] for e in evs if e["event"].startswith("heartbeat_service_")] == ["heartbeat_service_updated"]
    assert "by=once" in checks(ns_consul)["jailsyncd.heartbeat:ttl"]["Notes"]
    assert status(ns_consul)["jailsyncd-web1:alive"] == "passing"

    start_daemon(config, netns.prefix())
    wait_for(lambda: checks(ns_consul)["jailsyncd.heartbeat:ttl"]["Notes"] == definition, timeout=10, what="the daemon's heartbeat back")
    assert status(ns_consul)["jailsyncd-web1:alive"] == "passing"


def test_once_right_after_a_clean_stop_takes_over_the_health(netns: NetNS, ns_consul: ConsulServer, tmp_path: Path, workdir: Workdir, start_daemon) -> None:
    """``service jailsyncd stop`` (SIGTERM) leaves the heartbeat passing, so that a
    restart does not turn every jail critical. ``once`` run right after it took that
    heartbeat for a live daemon ("health_left_to_daemon"), wrote nothing, and once
    the heartbeat expired every jail's alias check was critical for good, with no
    daemon to refresh it. A stopped daemon says so in its heartbeat's output."""
    netns.add_address(UP)
    workdir.add("web1", jid=1, status=1, ip4_addr=UP)
    config = write_config(tmp_path / "c.toml", workdir=workdir.root, consul=ns_consul, health=HEALTH, extra='[sync]\ninterval = "1h"\n')
    daemon = start_daemon(config, netns.prefix())
    wait_for(lambda: status(ns_consul).get("jailsyncd-web1:alive") == "passing", timeout=10, what="the daemon's statuses")
    assert daemon.stop() == 0
    assert status(ns_consul)["jailsyncd.heartbeat:ttl"] == "passing", "a clean stop keeps the heartbeat passing (a restart must not flap)"
    rc, evs, stderr = once_in(netns, config)
    assert rc == 0, stderr
    assert not [e for e in evs if e["event"] == "health_left_to_daemon"], stderr
    assert "by=once" in checks(ns_consul)["jailsyncd.heartbeat:ttl"]["Notes"]
    stays(lambda: status(ns_consul)["jailsyncd-web1:alive"] == "passing", 3 + 1.5, "web1 passing past the stopped daemon's heartbeat_ttl")


@pytest.mark.parametrize("mode", ["agent", "catalog"])
def test_a_check_removed_by_hand_is_put_back_when_its_status_changes(
    netns: NetNS, ns_consul: ConsulServer, tmp_path: Path, workdir: Workdir, start_daemon, mode: str
) -> None:
    """A jail's ping check deregistered by hand under ``run``, once all is quiet: the
    Consul watch does not see checks (it would wake on every TTL write), so nothing
    notices until the jail's status changes. In agent mode the round's write of it is
    then refused; that refusal now asks for a full cycle, which registers the check
    again with the probed status, so a dead jail shows critical within seconds.
    Before, the write was refused round after round (``health_write_failed``) and the
    dead jail stayed passing until the next full read of Consul (``sync.resync``, 5
    minutes; an hour here). Catalog mode's write (a transaction's ``set``) creates the
    check again by itself."""
    netns.add_address(UP)
    workdir.add("web1", jid=1, status=1, ip4_addr=UP, host_hostname="web1.my.domain")
    extra = '[sync]\ninterval = "1h"\nresync = "1h"\n'
    config = write_config(tmp_path / "c.toml", workdir=workdir.root, consul=ns_consul, health=HEALTH, extra=extra,
                          consul_extra='mode = "catalog"' if mode == "catalog" else "")

    def ping() -> dict | None:
        if mode == "agent":
            return checks(ns_consul).get("jailsyncd-web1:ping")
        return next((c for c in ns_consul.get("/v1/health/node/web1.my.domain") if c["CheckID"] == "jailsyncd-web1:ping"), None)

    daemon = start_daemon(config, netns.prefix())
    wait_for(lambda: (ping() or {}).get("Status") == "passing", timeout=10, what="web1 passing")
    # Quiet: the agent has synced the registration to the catalog, no cycle is due.
    cycles = lambda: len(daemon.events("cycle_started"))  # noqa: E731
    wait_for(lambda: (n := cycles(), time.sleep(2), cycles() == n)[-1], timeout=20, what="no cycle for 2 s")
    if mode == "agent":
        ns_consul.put("/v1/agent/check/deregister/jailsyncd-web1:ping")
    else:
        ns_consul.put("/v1/catalog/deregister", {"Node": "web1.my.domain", "CheckID": "jailsyncd-web1:ping"})
    assert ping() is None
    netns.del_address(UP)  # the jail stops answering
    wait_for(lambda: (ping() or {}).get("Status") == "critical", timeout=10, what="web1's ping check back, critical")
    assert daemon.proc.poll() is None
