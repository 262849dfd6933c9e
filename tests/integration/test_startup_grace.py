"""The start-up grace (``sync.startup_grace``) with a real ``jailsyncd run``, a real
Consul and a CBSD-shaped workdir: a host reboot as CBSD leaves it.

What CBSD does (cbsd: ``rc.d/cbsdd``, ``rc.d/jails-astart``, ``sudoexec/jstart``,
``sudoexec/jstop``, ``bhyvectl/bset``): a clean ``jstop`` at shutdown writes
``jid=0, status=0``; at boot ``cbsdd`` runs ``jails-astart start``, which only queues
one ``jstart``/``bstart`` task with every ``astart=1`` environment for CBSD's task
daemon, and the jails start afterwards, one every second or so (``jstart`` gives the
k-th jail ``delay=k`` unless ``boot_delay`` is set). A VM's ``astart`` is in its own DB
and, through ``bset``, in the node DB's ``bhyve`` table (not in ``jails.astart``).
``Workdir`` reproduces those writes.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest
from harness import ConsulServer, run_cli, wait_for, write_config

from testing.sample import Workdir

pytestmark = pytest.mark.integration

GRACE = 6.0


def _ts(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _reboot_host(workdir: Workdir) -> None:
    """What a clean shutdown leaves: every row stopped."""
    for jname in ("auto1", "auto2", "manual", "vm1"):
        workdir.stop(jname)


@pytest.fixture
def booted(consul: ConsulServer, tmp_path: Path, workdir: Workdir) -> tuple[Workdir, Path]:
    """Four environments registered by a previous life of jailsyncd, then a reboot."""
    workdir.add("auto1", jid=3, status=1, ip4_addr="127.0.40.1", astart=1)
    workdir.add("auto2", jid=4, status=1, ip4_addr="127.0.40.2", astart=1)
    workdir.add("manual", jid=5, status=1, ip4_addr="127.0.40.3", astart=0)
    workdir.add("vm1", jid=4711, status=0, emulator="bhyve", ip4_addr="127.0.40.4")
    # `cbsd bset jname=vm1 astart=1` (Workdir.set_vm appends a full settings row)
    workdir.set_vm("vm1", ip4_addr="127.0.40.4", tags="0", astart=1)
    extra = f'[sync]\ninterval = "1h"\njitter = "0s"\nstartup_grace = "{GRACE:g}s"\n'
    config = write_config(tmp_path / "c.toml", workdir=workdir.root, consul=consul, extra=extra)
    assert run_cli("once", config=config).returncode == 0
    assert set(consul.services()) == {"jailsyncd-auto1", "jailsyncd-auto2", "jailsyncd-manual", "jailsyncd-vm1"}
    _reboot_host(workdir)
    return workdir, config


def test_autostart_jails_keep_their_registration_until_started_or_grace_ends(
    consul: ConsulServer, booted: tuple[Workdir, Path], start_daemon
) -> None:
    workdir, config = booted
    daemon = start_daemon(config)
    # The first cycle: the jail without astart goes at once; the autostart ones stay.
    assert set(consul.services()) == {"jailsyncd-auto1", "jailsyncd-auto2", "jailsyncd-vm1"}
    held = {e["jail"]: e for e in daemon.events("deregistration_held")}
    assert set(held) == {"auto1", "auto2", "vm1"}
    until = _ts(held["auto2"]["until"])
    started = _ts(daemon.events("daemon_started")[0]["timestamp"])
    assert abs((until - started).total_seconds() - GRACE) < 1.5
    assert daemon.events("cycle_finished")[0]["held"] == 3

    # jails-astart starts auto1 (the row is written after its hooks ran), then an
    # admin stops it again: it was seen running, so the normal rules apply at once.
    workdir.start("auto1", jid=21)
    wait_for(lambda: any(e.get("reasons") == ["change"] for e in daemon.events("cycle_started")), timeout=5, what="a cycle for the start")
    workdir.stop("auto1")
    wait_for(lambda: "jailsyncd-auto1" not in consul.services(), timeout=5, what="auto1 deregistered after it was seen running")
    assert "jailsyncd-auto2" in consul.services(), "still inside the grace"

    # auto2 and vm1 never start: deregistered by the cycle the end of the grace asks
    # for (sync.interval is an hour), not before.
    wait_for(lambda: not {"jailsyncd-auto2", "jailsyncd-vm1"} & set(consul.services()), timeout=GRACE + 10, what="grace end")
    gone = {e["jail"]: _ts(e["timestamp"]) for e in daemon.events("service_deregistered")}
    assert gone["auto2"] >= until and gone["vm1"] >= until
    assert ["startup_grace_ended"] in [e["reasons"] for e in daemon.events("cycle_started")]
    assert not daemon.events("deregistrations_refused")


def test_registrations_are_never_delayed(consul: ConsulServer, booted: tuple[Workdir, Path], start_daemon) -> None:
    workdir, config = booted
    workdir.add("fresh", jid=30, status=1, ip4_addr="127.0.40.9", astart=1)
    daemon = start_daemon(config)
    assert "jailsyncd-fresh" in consul.services()
    workdir.start("auto2", jid=31)
    wait_for(lambda: consul.services().get("jailsyncd-auto2", {}).get("Address") == "127.0.40.2", timeout=5, what="auto2 running")
    assert daemon.proc.poll() is None


def test_plan_and_once_hold_nothing_unless_asked(consul: ConsulServer, booted: tuple[Workdir, Path]) -> None:
    _, config = booted
    plain = run_cli("plan", config=config)
    assert "- auto1" in plain.stdout and "held" not in plain.stdout
    asked = run_cli("plan", "--startup-grace", config=config)
    assert asked.returncode == 0, asked.stderr
    held_lines = [line for line in asked.stdout.splitlines() if line.startswith("=")]
    assert [line.split()[1] for line in held_lines] == ["auto1", "auto2", "vm1"]
    assert "- manual" in asked.stdout
    assert run_cli("once", "--startup-grace", config=config).returncode == 0
    assert set(consul.services()) == {"jailsyncd-auto1", "jailsyncd-auto2", "jailsyncd-vm1"}
    assert run_cli("once", config=config).returncode == 0
    assert consul.services() == {}


def test_astart_is_read_where_cbsd_keeps_it(workdir: Workdir) -> None:
    """Jails: ``jails.astart``. VMs: the node DB's ``bhyve`` table, which ``bset``
    updates; ``jails.astart`` keeps the value the VM was created with."""
    from jailsyncd.adapters.cbsd import CbsdSource

    workdir.add("j-on", jid=0, status=0, ip4_addr="127.0.40.1", astart=1)
    workdir.add("j-off", jid=0, status=0, ip4_addr="127.0.40.2")
    workdir.add("vm-now-off", jid=0, status=0, emulator="bhyve", ip4_addr="127.0.40.3", astart=1)
    workdir.set_vm("vm-now-off", ip4_addr="127.0.40.3", tags="0", astart=0)
    workdir.add("vm-now-on", jid=0, status=0, emulator="bhyve", ip4_addr="127.0.40.4")
    workdir.set_vm("vm-now-on", ip4_addr="127.0.40.4", tags="0", astart=1)
    assert workdir.get("vm-now-off", "astart") == 1 and workdir.get("vm-now-on", "astart") == 0
    astart = {e.jname: e.astart for e in CbsdSource(workdir.root).read().environments}
    assert astart == {"j-on": True, "j-off": False, "vm-now-off": False, "vm-now-on": True}
