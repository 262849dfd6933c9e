"""Address discovery against real parts: CBSD-shaped SQLite files with ``bhyvenic`` /
``jailnic`` rows, lease files written by the test in dhclient, dnsmasq and ISC dhcpd
formats, the neighbor table of a network namespace the test creates (a dummy
interface with permanent entries carrying the VM's MAC, listed by the real ``ip
-json neigh``), and a real Consul.

FreeBSD's side of the neighbor table (``arp -an --libxo json``, ``ndp -an``) is
parsed from recorded samples in tests/unit/test_leases.py; here the Linux kernel
plays the table, as FreeBSD's would be read: by listing it, never by sending.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from harness import REPO, ConsulServer, log_events, run_cli, wait_for, write_config

from jailsyncd.adapters.cbsd import CbsdSource
from jailsyncd.adapters.discovery import AddressDiscovery
from testing.devnet import NetNS, available
from jailsyncd.leases import Target, targets
from jailsyncd.platform import Platform, _run
from testing.sample import Workdir, dhclient_lease

pytestmark = pytest.mark.integration

VM_MAC = "58:9c:fc:00:00:01"
JAIL_MAC = "58:9c:fc:00:00:0a"
STRANGER = "58:9c:fc:00:00:99"


def test_cbsd_source_reads_the_macs_of_running_vms_and_vnet_jails(workdir: Workdir) -> None:
    workdir.add("vm1", jid=4242, status=0, emulator="bhyve", ip4_addr="DHCP")
    workdir.add_nic("vm1", "58:9C:FC:0:0:2", order=1)
    workdir.add_nic("vm1", VM_MAC, order=0)
    workdir.add_nic("vm1", "0", order=2)  # unset: CBSD's '0'
    workdir.add("vnet1", jid=7, status=1, ip4_addr="REALDHCP", vnet=1)
    workdir.add_nic("vnet1", JAIL_MAC)
    workdir.add("vnet2", jid=8, status=1, ip4_addr="10.0.0.8", vnet=1)  # has an address: its DB is not needed
    workdir.add_nic("vnet2", "58:9c:fc:00:00:0b")
    workdir.add("vnet3", jid=9, status=1, ip4_addr="REALDHCP", vnet=1)  # no jails-system DB at all
    state = CbsdSource(workdir.root, read_macs=True).read()
    macs = {e.jname: e.macs for e in state.environments}
    assert macs == {"vm1": (VM_MAC, "58:9c:fc:00:00:02"), "vnet1": (JAIL_MAC,), "vnet2": (), "vnet3": ()}
    assert state.unreadable == ()
    assert {e.jname: e.macs for e in CbsdSource(workdir.root).read().environments}["vm1"] == ()  # discovery off: not read
    assert [t.jname for t in targets(state.environments)] == ["vm1", "vnet1", "vnet3"]


def test_lease_files_dhclient_dnsmasq_isc_expired_renewed_and_cached(workdir: Workdir, tmp_path: Path) -> None:
    now = time.time()
    lease_path = workdir.write_dhclient_lease("vnet1", "eth0", dhclient_lease("10.0.0.5", now - 3600) + dhclient_lease("10.0.0.6", now + 3600))
    dnsmasq = tmp_path / "dnsmasq.leases"
    dnsmasq.write_text(f"{int(now) - 5} {VM_MAC} 10.0.0.60 vm1 *\n{int(now) + 600} {STRANGER} 10.0.0.66 x *\n")
    isc = tmp_path / "dhcpd.leases"
    isc.write_text(
        "lease 10.0.0.70 {\n  ends epoch %d;\n  binding state active;\n  hardware ethernet 58:9c:fc:00:00:02;\n}\n" % (now + 600)
    )
    wanted = (Target("vnet1", (JAIL_MAC,), True), Target("vm1", (VM_MAC,), False), Target("vm2", ("58:9c:fc:00:00:02",), False))
    # An empty neighbor table: the command answers, nothing matches.
    discovery = AddressDiscovery(workdir.root, (dnsmasq, isc), Platform("linux", run=lambda argv: "[]"))
    found = discovery.discover(wanted, now)
    assert (found["vnet1"].addresses, found["vnet1"].source) == (("10.0.0.6",), "dhclient")
    assert found["vm1"].addresses == () and not found["vm1"].unknown  # its dnsmasq lease expired; the stranger's is ignored
    assert (found["vm2"].addresses, found["vm2"].source) == (("10.0.0.70",), "dhcp-server")
    assert discovery.neighbor_runs == 1  # vm1 was left without an address
    # dnsmasq renews vm1's lease.
    dnsmasq.write_text(f"{int(now) + 900} {VM_MAC} 10.0.0.61 vm1 *\n")
    found = discovery.discover(wanted, now)
    assert (found["vm1"].addresses, found["vm1"].source) == (("10.0.0.61",), "dhcp-server")
    assert discovery.neighbor_runs == 0  # every target found in lease files: no command
    assert discovery.parsed == 3  # just written: too fresh to trust a cache entry
    # Read once more than RACY_WINDOW after their last change, they are cached; then
    # a no-op cycle parses nothing, and a change is seen at once.
    discovery.clock = lambda: time.time() + 10
    discovery.discover(wanted, now)
    discovery.discover(wanted, now)
    assert discovery.parsed == 0
    lease_path.write_text(dhclient_lease("10.0.0.7", now + 3600))
    assert discovery.discover(wanted, now)["vnet1"].addresses == ("10.0.0.7",) and discovery.parsed == 1
    assert discovery.discover(wanted, now + 7200)["vnet1"].addresses == ()  # the lease expired; "now" is the caller's


def test_a_session_asked_in_parts_finds_what_one_discover_finds(workdir: Workdir, tmp_path: Path) -> None:
    """What a cycle reading CBSD in parts asks (``AddressDiscovery.session``): each
    part's targets alone, the server lease files read once and the neighbor table
    run at most once per session, and the parts together find exactly what one
    ``discover`` over every target finds; the files no target used are forgotten
    only when the session finishes."""
    now = time.time()
    workdir.write_dhclient_lease("vnet1", "eth0", dhclient_lease("10.0.0.6", now + 3600))
    dnsmasq = tmp_path / "dnsmasq.leases"
    dnsmasq.write_text(f"{int(now) + 600} 58:9c:fc:00:00:02 10.0.0.62 vm2 *\n")
    runs: list[list[str]] = []

    def neighbors(argv: list[str]) -> str:
        runs.append(argv)
        return json.dumps([{"dst": "10.0.0.71", "lladdr": VM_MAC, "state": ["PERMANENT"]}])

    wanted = (
        Target("vm1", (VM_MAC,), False),  # only the neighbor table knows it
        Target("vm2", ("58:9c:fc:00:00:02",), False),  # a server lease
        Target("vnet1", (JAIL_MAC,), True),  # its own dhclient lease
        Target("vnet9", (STRANGER,), True),  # nowhere
    )
    whole = AddressDiscovery(workdir.root, (dnsmasq,), Platform("linux", run=neighbors)).discover(wanted, now)
    assert len(runs) == 1
    discovery = AddressDiscovery(workdir.root, (dnsmasq,), Platform("linux", run=neighbors))
    session = discovery.session(now)
    found: dict = {}
    for part in (wanted[:1], wanted[1:3], (), wanted[3:]):
        found.update(session.discover(part))
    session.finish()
    assert found == whole
    assert (found["vm1"].addresses, found["vm2"].addresses, found["vnet1"].addresses, found["vnet9"].addresses) == (("10.0.0.71",), ("10.0.0.62",), ("10.0.0.6",), ())
    assert len(runs) == 2 and discovery.neighbor_runs == 1  # once for the whole session
    assert discovery.parsed == 2  # the dnsmasq file and vnet1's lease, once each


def test_a_missing_server_lease_file_makes_the_state_unknown_not_empty(workdir: Workdir, tmp_path: Path) -> None:
    discovery = AddressDiscovery(workdir.root, (tmp_path / "absent.leases",), Platform("linux", run=lambda argv: "[]"))
    found = discovery.discover((Target("vm1", (VM_MAC,), False),), time.time())["vm1"]
    assert found.unknown and "absent.leases" in found.detail
    failing = AddressDiscovery(workdir.root, (), Platform("linux", run=lambda argv: None))
    assert failing.discover((Target("vm1", (VM_MAC,), False),), time.time())["vm1"].unknown


def test_a_jail_cannot_point_discovery_at_host_files(workdir: Workdir, tmp_path: Path) -> None:
    """A jail's root writes its own var/db: links there are never followed, and a FIFO
    is never opened (it would block the cycle)."""
    host_db = tmp_path / "host-db"
    host_db.mkdir()
    (host_db / "dhclient.leases.em0").write_text(dhclient_lease("192.0.2.1", None))
    linked = workdir.root / "jails-data" / "evil1-data" / "var"
    linked.mkdir(parents=True)
    (linked / "db").symlink_to(host_db)  # var/db -> a host folder
    leases = workdir.root / "jails-data" / "evil2-data" / "var" / "db"
    leases.mkdir(parents=True)
    (leases / "dhclient.leases.eth0").symlink_to(host_db / "dhclient.leases.em0")
    os.mkfifo(leases / "dhclient.leases.eth1")
    discovery = AddressDiscovery(workdir.root, (), Platform("linux", run=lambda argv: "[]"))
    found = discovery.discover((Target("evil1", (), True), Target("evil2", (), True)), time.time())
    assert found["evil1"].addresses == () and found["evil2"].addresses == ()
    assert not found["evil1"].unknown and not found["evil2"].unknown


# -- the neighbor table for real, in a namespace -------------------------------------------

needs_netns = pytest.mark.skipif(available() is not None, reason=str(available()))


@pytest.fixture
def netns():
    with NetNS() as ns:
        # A veth pair with both ends inside (the dummy driver is not in every kernel);
        # d0's neighbors are what the test adds, and nothing leaves the namespace.
        ns.ip("link", "add", "d0", "type", "veth", "peer", "name", "d1")
        ns.ip("link", "set", "d1", "up")
        ns.ip("link", "set", "d0", "up")
        ns.ip("addr", "add", "10.78.0.1/24", "dev", "d0")
        yield ns


def in_ns(ns: NetNS) -> Platform:
    """Linux, with every command run inside ``ns`` (its own neighbor table)."""
    return Platform("linux", run=lambda argv: _run([*ns.prefix(), *argv]))


@needs_netns
def test_neighbor_table_of_a_namespace_complete_entries_only(netns: NetNS, workdir: Workdir) -> None:
    netns.ip("neigh", "add", "10.78.0.20", "lladdr", VM_MAC, "dev", "d0", "nud", "permanent")
    netns.ip("neigh", "add", "2001:db8:78::20", "lladdr", VM_MAC, "dev", "d0", "nud", "permanent")
    netns.ip("neigh", "add", "10.78.0.30", "lladdr", JAIL_MAC, "dev", "d0", "nud", "noarp")  # no resolution: not complete
    netns.ip("neigh", "add", "10.78.0.40", "lladdr", STRANGER, "dev", "d0", "nud", "permanent")
    platform = in_ns(netns)
    table = platform.neighbor_table()
    assert table is not None and {n.address for n in table} >= {"10.78.0.20", "2001:db8:78::20", "10.78.0.40"}
    discovery = AddressDiscovery(workdir.root, (), platform)
    found = discovery.discover((Target("vm1", (VM_MAC,), False), Target("vnet1", (JAIL_MAC,), True)), time.time())
    assert (found["vm1"].addresses, found["vm1"].source) == (("10.78.0.20", "2001:db8:78::20"), "neighbor")
    assert found["vnet1"].addresses == ()
    assert discovery.neighbor_runs == 1


@needs_netns
def test_a_dhcp_vm_is_registered_with_its_source_and_goes_when_its_entry_does(netns: NetNS, consul_bin: str, tmp_path: Path) -> None:
    """End to end: ``jailsyncd plan``/``once`` inside the namespace (whose kernel holds
    the neighbor table) against a real Consul in the same namespace."""
    workdir = Workdir.create(tmp_path / "cbsd")
    workdir.add("win10", jid=48377, status=0, emulator="bhyve", ip4_addr="DHCP", tags="consul.port=3389")
    workdir.add_nic("win10", VM_MAC)
    workdir.add("web1", jid=3, status=1, ip4_addr="10.78.0.10")
    server = ConsulServer(consul_bin, netns=netns).start()
    try:
        config = write_config(tmp_path / "jailsyncd.toml", workdir=workdir.root, consul=server)

        env = {k: v for k, v in os.environ.items() if not k.startswith("CONSUL_")}

        def cli(*args: str) -> subprocess.CompletedProcess:
            argv = [*netns.prefix(), sys.executable, "-m", "jailsyncd", "--config", str(config), *args]
            return subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=str(REPO), env=env)

        done = cli("once")
        assert done.returncode == 0, done.stderr
        skipped = [e for e in log_events(done.stderr) if e["event"] == "jail_skipped"]
        assert [(e["jail"], e["reason"]) for e in skipped] == [("win10", "unaddressable")]
        assert VM_MAC in skipped[0]["detail"]
        netns.ip("neigh", "add", "10.78.0.20", "lladdr", VM_MAC, "dev", "d0", "nud", "permanent")
        plan = cli("plan")
        assert "+ win10" in plan.stdout and "address-source=neighbor" in plan.stdout, plan.stdout
        planned = json.loads(cli("plan", "--json").stdout)
        assert planned["register"][0]["meta"]["cbsd-address-source"] == "neighbor"
        assert cli("once").returncode == 0
        services = server.get("/v1/agent/services")
        win10 = services["jailsyncd-win10"]
        assert (win10["Address"], win10["Port"], win10["Meta"]["cbsd-address-source"]) == ("10.78.0.20", 3389, "neighbor")
        assert "cbsd-address-source" not in services["jailsyncd-web1"]["Meta"]
        # The address changes: updated; the entry goes: back to unaddressable, deregistered.
        netns.ip("neigh", "replace", "10.78.0.21", "lladdr", VM_MAC, "dev", "d0", "nud", "permanent")
        netns.ip("neigh", "del", "10.78.0.20", "dev", "d0")
        assert cli("once").returncode == 0
        assert server.get("/v1/agent/services")["jailsyncd-win10"]["Address"] == "10.78.0.21"
        netns.ip("neigh", "del", "10.78.0.21", "dev", "d0")
        done = cli("once")
        assert done.returncode == 0, done.stderr
        assert "jailsyncd-win10" not in server.get("/v1/agent/services")
        assert any(e["event"] == "service_deregistered" and e["jail"] == "win10" for e in log_events(done.stderr))
    finally:
        server.stop()


def test_a_dnsmasq_lease_registers_a_vm_and_a_jails_own_lease_a_vnet_jail(consul: ConsulServer, tmp_path: Path, workdir: Workdir) -> None:
    now = time.time()
    workdir.add("win10", jid=48377, status=0, emulator="bhyve", ip4_addr="DHCP")
    workdir.add_nic("win10", VM_MAC)
    workdir.add("vnet1", jid=7, status=1, ip4_addr="REALDHCP", vnet=1)
    workdir.add_nic("vnet1", JAIL_MAC)
    workdir.write_dhclient_lease("vnet1", "eth0", dhclient_lease("127.0.78.5", now + 3600))
    leases = tmp_path / "dnsmasq.leases"
    leases.write_text(f"{int(now) + 3600} {VM_MAC} 127.0.78.50 win10 *\n{int(now) + 3600} {STRANGER} 127.0.78.99 other *\n")
    config = write_config(tmp_path / "jailsyncd.toml", workdir=workdir.root, consul=consul, extra=f'[sync]\ndhcp_leases = ["{leases}"]\n')
    done = run_cli("once", config=config)
    assert done.returncode == 0, done.stderr
    services = consul.get("/v1/agent/services")
    assert {sid: (s["Address"], s["Meta"]["cbsd-address-source"]) for sid, s in services.items()} == {
        "jailsyncd-win10": ("127.0.78.50", "dhcp-server"),
        "jailsyncd-vnet1": ("127.0.78.5", "dhclient"),
    }
    again = run_cli("--log-level", "debug", "once", config=config)
    assert again.returncode == 0 and [e for e in log_events(again.stderr) if e["event"] == "cycle_finished"][0]["writes"] == 0
    [seen] = [e for e in log_events(again.stderr) if e["event"] == "address_discovery"]
    assert (seen["targets"], seen["found"]) == (2, {"dhclient": 1, "dhcp-server": 1})
    off = write_config(tmp_path / "off.toml", workdir=workdir.root, consul=consul, extra="[sync]\ndiscover_addresses = false\nmax_deregistrations = 5\n")
    plan = run_cli("plan", config=off)
    assert "- win10" in plan.stdout and "- vnet1" in plan.stdout, plan.stdout



def test_a_lease_file_that_goes_missing_freezes_the_vm(consul: ConsulServer, tmp_path: Path, workdir: Workdir) -> None:
    """A failed read of a discovery source is never "no address": the VM's service
    stays as it is until the file is back (docs/reliability.md)."""
    now = time.time()
    workdir.add("win10", jid=48377, status=0, emulator="bhyve", ip4_addr="DHCP")
    workdir.add_nic("win10", VM_MAC)
    leases = tmp_path / "dnsmasq.leases"
    leases.write_text(f"{int(now) + 3600} {VM_MAC} 127.0.78.50 win10 *\n")
    config = write_config(tmp_path / "jailsyncd.toml", workdir=workdir.root, consul=consul, extra=f'[sync]\ndhcp_leases = ["{leases}"]\n')
    assert run_cli("once", config=config).returncode == 0
    leases.rename(tmp_path / "moved")
    done = run_cli("once", config=config)
    assert done.returncode == 0, done.stderr
    skips = [e for e in log_events(done.stderr) if e["event"] == "jail_skipped"]
    assert [(e["jail"], e["reason"]) for e in skips] == [("win10", "source_error")] and "dnsmasq.leases" in skips[0]["detail"]
    assert consul.services()["jailsyncd-win10"]["Address"] == "127.0.78.50"
    (tmp_path / "moved").rename(leases)
    leases.write_text("")  # back, and empty: now the VM really has no address
    done = run_cli("once", config=config)
    assert done.returncode == 0 and "jailsyncd-win10" not in consul.services()


def test_run_sees_a_new_lease_and_an_expired_one_without_a_cbsd_write(consul: ConsulServer, tmp_path: Path, workdir: Workdir, start_daemon) -> None:
    """``jailsyncd run`` skips a periodic cycle when CBSD's files and Consul (the
    watch) are unchanged (docs/architecture.md, "Work in proportion to what
    changed"), but a lease is neither: no file event asks for a cycle when a lease
    file changes or a lease runs out. The skip asks discovery again, so a lease that
    appears after CBSD wrote the VM's row (the guest's DHCP comes after its start) is
    registered by the next periodic cycle, and one that expires, with no write to any
    file, is deregistered by a later one; cycles in between are skipped."""
    workdir.add("win10", jid=48377, status=0, emulator="bhyve", ip4_addr="DHCP")
    workdir.add_nic("win10", VM_MAC)
    workdir.add("web1", jid=3, status=1, ip4_addr="127.0.78.10")
    leases = tmp_path / "dnsmasq.leases"
    leases.write_text("")
    config = write_config(
        tmp_path / "jailsyncd.toml", workdir=workdir.root, consul=consul,
        extra=f'[sync]\ninterval = "1s"\njitter = "0s"\ndhcp_leases = ["{leases}"]\n',
    )
    daemon = start_daemon(config)
    wait_for(lambda: len(daemon.events("cycle_skipped")) >= 2, timeout=20, what="periodic cycles skipped with nothing changed")
    assert "jailsyncd-win10" not in consul.services()
    expires = int(time.time()) + 8
    leases.write_text(f"{expires} {VM_MAC} 127.0.78.50 win10 *\n")
    wait_for(lambda: "jailsyncd-win10" in consul.services(), timeout=10, what="the new lease registered")
    service = consul.services()["jailsyncd-win10"]
    assert (service["Address"], service["Meta"]["cbsd-address-source"]) == ("127.0.78.50", "dhcp-server")
    registered = len(daemon.events("cycle_skipped"))
    wait_for(lambda: "jailsyncd-win10" not in consul.services(), timeout=max(expires - time.time(), 0) + 10, what="the expired lease deregistered")
    assert time.time() >= expires
    assert len(daemon.events("cycle_skipped")) > registered, "cycles between the two changes were not skipped"
    gone = [e for e in daemon.events("jail_skipped") if e["jail"] == "win10"]
    assert gone and gone[-1]["reason"] == "unaddressable"
    assert not [e for e in daemon.events() if e["event"] in ("cycle_started",) and "change" in e.get("reasons", [])], "a CBSD file change was seen"
