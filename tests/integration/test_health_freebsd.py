"""Health on FreeBSD's kernel, reproduced at the socket boundary (tests/freebsd_kernel.py
cites the freebsd-src files), with real ICMP inside a network namespace the test
creates and a real Consul agent inside it."""

from __future__ import annotations

import errno
import io
import os
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from freebsd_kernel import SB_MAX_ADJ, FreeBSDKernel
from harness import ConsulServer, log_events, write_config

from jailsyncd import cli, commands
from jailsyncd import platform as platform_module
from jailsyncd.adapters.cbsd import CbsdSource
from jailsyncd.adapters.consul import connect
from jailsyncd.adapters.probe import Probe, Prober
from testing.devnet import NetNS, available
from jailsyncd.healthloop import HealthLoop
from jailsyncd.logs import configure
from jailsyncd.platform import Platform
from jailsyncd.reconcile import Reconciler
from testing.sample import Workdir
from jailsyncd.settings import load_settings

pytestmark = [pytest.mark.integration, pytest.mark.skipif(available() is not None, reason=str(available())), pytest.mark.usefixtures("restore_logging")]

UP, DOWN = "10.77.1.1", "10.77.1.2"
HEALTH = 'interval = "2s"\ntimeout = "500ms"\ncount = 2\nfailures_before_critical = 1'



def checks(consul: ConsulServer) -> dict[str, tuple[str, str]]:
    return {c["CheckID"]: (c["Status"], c["Output"]) for c in consul.get("/v1/agent/checks").values()}


def test_once_on_freebsd_sized_receive_buffer(netns: NetNS, ns_consul: ConsulServer, tmp_path: Path, workdir: Workdir, monkeypatch, capsys) -> None:
    """FreeBSD refuses SO_RCVBUF above sb_max_adj with ENOBUFS (sbreserve_locked in
    sys/kern/uipc_sockbuf.c); asking for the same size again made ``once`` exit 1 with
    nothing registered. The prober halves until the kernel accepts and the jails are
    registered passing."""
    kernel = FreeBSDKernel(root=True)
    monkeypatch.setattr(platform_module, "current", kernel.platform)
    netns.add_address(UP)
    workdir.add("web1", jid=3, status=1, ip4_addr=UP)
    workdir.add("gone", jid=4, status=1, ip4_addr=DOWN)
    config = write_config(tmp_path / "c.toml", workdir=workdir.root, consul=ns_consul, health=HEALTH)

    code = netns.call(cli.main, ["--config", str(config), "once"])
    assert code == 0, capsys.readouterr().err
    # The start-up check's socket, then one per probe (before registration, the round).
    probing = [s.asked for s in kernel.opened[1:]]
    assert len(probing) == 2 and all(asked == [8 << 20, 4 << 20, 2 << 20, 1 << 20] for asked in probing), "halved until accepted"
    assert probing[0][-1] <= SB_MAX_ADJ < probing[0][-2]
    status = checks(ns_consul)
    assert status["jailsyncd-web1:ping"][0] == "passing" and "2/2 replies" in status["jailsyncd-web1:ping"][1]
    assert status["jailsyncd-gone:ping"][0] == "critical"
    assert not [e for e in log_events(capsys.readouterr().err) if e["event"] == "health_probe_failed"]


def test_nonroot_freebsd_has_no_ping_socket_exit_71(consul: ConsulServer, tmp_path: Path, workdir: Workdir, monkeypatch, capsys) -> None:
    """FreeBSD has no unprivileged ICMP datagram sockets: socket(AF_INET, SOCK_DGRAM,
    IPPROTO_ICMP) answers EPROTONOSUPPORT (socreate in sys/kern/uipc_socket.c; no such
    entry in sys/netinet/in_proto.c; icmp_input in sys/netinet/ip_icmp.c delivers
    replies to raw sockets only, and those need root: rip_attach in
    sys/netinet/raw_ip.c). A non-root ``once`` ended in "internal error", exit 1."""
    kernel = FreeBSDKernel(root=False)
    monkeypatch.setattr(platform_module, "current", kernel.platform)
    workdir.add("web1", jid=3, status=1, ip4_addr="127.0.0.1")
    config = write_config(tmp_path / "c.toml", workdir=workdir.root, consul=consul, health=HEALTH)

    assert cli.main(["--config", str(config), "once"]) == 71
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("jailsyncd: health: cannot open an ICMP socket")
    assert os.strerror(errno.EPROTONOSUPPORT) in err[0]
    assert "FreeBSD has no unprivileged ICMP sockets" in err[0] and "as root" in err[0] and "health.enabled = false" in err[0]
    assert "daemon.user" in err[0]  # run switches to it after opening its sockets
    assert "ping_group_range" not in err[0] and "internal error" not in err[0]
    assert consul.get("/v1/agent/services") == {}, "nothing is registered"
    for command in (["check-config"], ["plan"], ["run", "--pidfile", str(tmp_path / "j.pid")]):
        assert cli.main(["--config", str(config), *command]) == 71, command
    assert not (tmp_path / "j.pid").exists()
    assert consul.get("/v1/agent/services") == {}


class BrokenKernel:
    """A socket() that fails at one call, for "any probe failure"."""

    def __init__(self, where: str, code: int) -> None:
        self.where, self.code = where, code

    def __call__(self, family: int, type: int, proto: int) -> socket.socket:
        if self.where == "socket":
            raise OSError(self.code, os.strerror(self.code))
        kernel = self

        class Sock(socket.socket):
            def setsockopt(self, level, option, value, *rest):
                if kernel.where == "setsockopt" and level == socket.SOL_SOCKET:
                    raise OSError(kernel.code, os.strerror(kernel.code))
                return super().setsockopt(level, option, value, *rest)

            def getsockopt(self, level, option, *rest):
                if kernel.where == "setsockopt":
                    raise OSError(kernel.code, os.strerror(kernel.code))
                return super().getsockopt(level, option, *rest)

            def sendto(self, *args):
                if kernel.where == "sendto":
                    raise OSError(kernel.code, os.strerror(kernel.code))
                return super().sendto(*args)

            def recvfrom(self, *args):
                if kernel.where == "recvfrom":
                    raise OSError(kernel.code, os.strerror(kernel.code))
                return super().recvfrom(*args)

        return Sock(family, type, proto)


@pytest.mark.parametrize(
    ("where", "code"),
    [("socket", errno.EMFILE), ("setsockopt", errno.EINVAL), ("sendto", errno.ENOBUFS), ("recvfrom", errno.EIO)],
)
def test_a_failing_prober_never_stops_registration(where: str, code: int, netns: NetNS, ns_consul: ConsulServer, tmp_path: Path, workdir: Workdir) -> None:
    """Whatever fails inside the prober (the socket, a socket option, a send, a read)
    is a logged, counted health problem: the cycle registers every jail, a round never
    raises (``run`` would log cycle_crashed), and no check turns critical because of it."""
    logged = io.StringIO()
    configure("json", "info", stream=logged)
    netns.add_address(UP)
    workdir.add("web1", jid=3, status=1, ip4_addr=UP)
    settings = load_settings(write_config(tmp_path / "c.toml", workdir=workdir.root, consul=ns_consul, health=HEALTH), env={})
    good = Prober()
    broken = Prober(platform=Platform("linux", socket=BrokenKernel(where, code)))
    health = HealthLoop(settings.health, broken, connect(settings.consul))
    reconciler = Reconciler(settings, CbsdSource(settings.cbsd.workdir), connect(settings.consul), health=health)

    def body() -> None:
        result = reconciler.cycle()
        assert result.ok and result.applied["register"] == 1  # the jail (the heartbeat service is not a jail)
        if where == "setsockopt":
            # Only the buffer could not be sized: the probe still ran and counted.
            assert checks(ns_consul)["jailsyncd-web1:ping"][0] == "passing"
            assert health.probe_errors >= 1
            return
        assert health.probe_errors >= 1
        failures = [e for e in log_events(logged.getvalue()) if e["event"] == "health_probe_failed"]
        assert failures and os.strerror(code) in failures[0]["error"]
        assert checks(ns_consul)["jailsyncd-web1:ping"][0] == "critical"  # registered, never probed
        errors_before = health.probe_errors
        stats = health.round()  # never raises
        assert stats.probe_errors >= 1 and health.probe_errors > errors_before
        assert stats.writes == 0, "an unprobed check keeps its status"
        # Once the prober works again, the same loop state goes passing.
        health.prober = good
        assert health.round().writes == 1
        assert checks(ns_consul)["jailsyncd-web1:ping"][0] == "passing"

    netns.call(body)


def test_draining_follows_the_granted_buffer(netns: NetNS) -> None:
    """A kernel that grants only a small receive buffer (FreeBSD's default for raw
    sockets is net.inet.raw.recvspace, 9,216 bytes: ~90 replies; here a refusal above
    4 KiB like sbreserve_locked's, on Linux's real socket): every reply of 400 up
    addresses is still read, because the prober drains as often as the granted size
    needs."""
    addresses = [f"10.78.{i // 250}.{i % 250 + 1}" for i in range(400)]
    for address in addresses:
        netns.add_address(address)
    kernel = FreeBSDKernel(root=True, limit=4096)
    prober = Prober(platform=Platform("linux", socket=kernel))
    report = netns.call(prober.run_round, [Probe(a, "ping", a) for a in addresses], count=1, timeout=1.0)
    assert report.problems == []
    assert kernel.opened[-1].asked[-1] == 4096
    failed = sorted(k for k, r in report.results.items() if not r.ok)
    assert failed == [], f"{len(failed)} of 400 lost: {failed[:5]}"


@pytest.mark.parametrize(
    ("icmplim", "setting", "rate", "kernel_limit"),
    [
        ("200", "", 165, "net.inet.icmp.icmplim=200"),  # (200 - icmplim_jitter 16) x 0.9
        ("1000", "", 885, "net.inet.icmp.icmplim=1000"),
        ("0", "", 0, None),  # icmplim = 0: the kernel sets no limit
        ("200", "rate_limit = 50", 50, "net.inet.icmp.icmplim=200"),  # the setting wins
    ],
)
def test_freebsd_rate_limit_default_read_from_icmplim_at_start(icmplim, setting, rate, kernel_limit, consul: ConsulServer, tmp_path: Path, workdir: Workdir, monkeypatch) -> None:
    """``sysctl -n net.inet.icmp.icmplim`` (recorded answers; default 200 and jitter 16 in
    sys/netinet/ip_icmp.c) gives the default ``health.rate_limit``, read once at start and
    said in the ``health_rate_limit`` event."""
    kernel = FreeBSDKernel(root=True)
    asked: list[str] = []
    values = {"net.inet.icmp.icmplim": icmplim, "net.inet.icmp.icmplim_jitter": "16"}
    monkeypatch.setattr(platform_module, "current", lambda: Platform("freebsd", sysctl=lambda n: asked.append(n) or values.get(n), socket=kernel))
    logged = io.StringIO()
    configure("json", "info", stream=logged)
    settings = load_settings(write_config(tmp_path / "c.toml", workdir=workdir.root, consul=consul, health=f"{HEALTH}\n{setting}"), env={})
    loop = commands._health(settings)
    assert loop is not None and loop.rate == rate
    started = [e for e in log_events(logged.getvalue()) if e["event"] == "health_rate_limit"]
    assert len(started) == 1 and started[0]["rate_limit"] == rate and started[0]["kernel_limit"] == kernel_limit
    assert started[0]["fits_addresses"] == (int(1.5 * rate / 2) if rate else None)
    assert "net.inet.icmp.icmplim" in asked
    reads = len(asked)
    loop.pace(())
    assert len(asked) == reads, "read at start only"


def test_once_registers_when_every_send_fails(netns: NetNS, ns_consul: ConsulServer, tmp_path: Path, workdir: Workdir, monkeypatch, capsys) -> None:
    """``once`` with a prober whose every send fails with ENOBUFS (a kernel out of
    buffers): the jail is registered all the same, exit 0, and the failure is logged
    as health_probe_failed, not as an internal error."""
    monkeypatch.setattr(platform_module, "current", lambda: Platform("linux", socket=BrokenKernel("sendto", errno.ENOBUFS)))
    netns.add_address(UP)
    workdir.add("web1", jid=3, status=1, ip4_addr=UP)
    config = write_config(tmp_path / "c.toml", workdir=workdir.root, consul=ns_consul, health=HEALTH)
    assert netns.call(cli.main, ["--config", str(config), "once"]) == 0
    events = log_events(capsys.readouterr().err)
    assert [e["jail"] for e in events if e["event"] == "service_registered"] == ["web1"]
    assert [e["service_id"] for e in events if e["event"] == "heartbeat_service_registered"] == ["jailsyncd.heartbeat"]
    failed = [e for e in events if e["event"] == "health_probe_failed"]
    assert len(failed) == 2 and all(os.strerror(errno.ENOBUFS) in e["error"] for e in failed)  # before registration, and the round
    assert checks(ns_consul)["jailsyncd-web1:ping"][0] == "critical"


def test_a_socket_kept_across_rounds_is_sized_once(netns: NetNS) -> None:
    """A socket reused by several rounds (opened as root, kept after privileges are
    dropped) is sized by its first round only: on Linux asking again without root
    could only shrink it (SO_RCVBUFFORCE needs CAP_NET_ADMIN); on FreeBSD it would get
    the same again (no privilege is checked: sbreserve_locked in
    sys/kern/uipc_sockbuf.c charges the size to the socket's creator against the
    caller's RLIMIT_SBSIZE, which setuid(2) leaves as it was), so once is enough."""
    from jailsyncd.adapters.probe import RoundReport

    netns.add_address(UP)
    kernel = FreeBSDKernel(root=True)
    prober = Prober(platform=kernel.platform())

    def two_rounds() -> list[bool]:
        sock = prober._classes[4](privileged=True)
        try:
            return [prober._exchange(4, sock, [UP], 1, 0.5, RoundReport(), 0)[UP].ok for _ in range(2)]
        finally:
            sock.close()

    assert netns.call(two_rounds) == [True, True]
    assert kernel.opened[0].asked == [8 << 20, 4 << 20, 2 << 20, 1 << 20]


def test_a_late_reply_is_never_taken_for_the_next_round(netns: NetNS) -> None:
    """Rounds number their requests on from the last one: an echo reply that arrives
    after its round gave up (a raw socket sees every echo reply to the host, so the
    next round's socket may get it) never counts for the same address in the next
    round."""
    sent: list[int] = []

    class Recording(socket.socket):
        def sendto(self, packet, *args):
            sent.append(int.from_bytes(packet[6:8], "big"))  # the ICMP echo sequence number
            return super().sendto(packet, *args)

    netns.add_address(UP)
    prober = Prober(platform=Platform("linux", socket=Recording))
    rounds = [netns.call(prober.run_round, [Probe(UP, "ping", UP)], count=2, timeout=0.5) for _ in range(2)]
    assert all(r.results[UP].ok for r in rounds)
    assert len(sent) == len(set(sent)) == 4


def test_concurrent_rounds_on_kept_sockets_lose_no_reply(netns: NetNS) -> None:
    """``run`` keeps its ICMP sockets open (opened as root, used after the switch to
    daemon.user). A health round and a cycle's probe of new jails may run at the same
    time: on one shared socket, each would read (and drop) the other's replies. Both
    get every reply."""
    addresses = [f"10.78.1.{i}" for i in range(1, 61)]
    for address in addresses:
        netns.add_address(address)
    prober = Prober()
    netns.call(prober.keep_open)
    probes = [Probe(a, "ping", a) for a in addresses]
    barrier = threading.Barrier(2)

    def one_round() -> list[str]:
        barrier.wait(timeout=10)
        report = prober.run_round(probes, count=2, timeout=1.0)
        return sorted(k for k, r in report.results.items() if not r.ok) + report.problems

    # The kept sockets belong to the namespace: any thread may use them.
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(one_round) for _ in range(2)]
    assert [f.result(timeout=30) for f in futures] == [[], []]


def test_freebsd_round_too_long_names_the_sysctl_at_start_and_in_every_round(netns: NetNS, ns_consul: ConsulServer, tmp_path: Path, workdir: Workdir, monkeypatch) -> None:
    """A host whose ``net.inet.icmp.icmplim`` (recorded ``sysctl -n`` answers; the
    default 200 and jitter 16 are in sys/netinet/ip_icmp.c, where badport_bandlim()
    drops echo replies above it) is too low for its jails: jailsyncd paces below it,
    says at start (the first cycle's ``health_round_too_long``) and in every round
    (``health_round``, the ``jailsyncd_health_round_over_interval`` gauge) that a round
    cannot fit in ``health.interval``, naming the sysctl and a value that is enough,
    and no jail turns critical because of the pace. Wired as ``run`` wires it (``App``)."""
    from jailsyncd.app import App
    from jailsyncd.metrics import Metrics

    kernel = FreeBSDKernel(root=True)
    # icmplim 20, jitter 16: jailsyncd sends at most (20 - 16) x 0.9 = 3 requests/s.
    monkeypatch.setattr(platform_module, "current", lambda: kernel.platform({"net.inet.icmp.icmplim": "20"}))
    addresses = [f"10.77.2.{i}" for i in range(1, 6)]
    for n, address in enumerate(addresses):
        netns.add_address(address)
        workdir.add(f"j{n}", jid=n + 1, status=1, ip4_addr=address)
    logged = io.StringIO()
    configure("json", "info", stream=logged)
    health = 'interval = "1s"\ntimeout = "300ms"\ncount = 1\nfailures_before_critical = 1'
    settings = load_settings(write_config(tmp_path / "c.toml", workdir=workdir.root, consul=ns_consul, health=health), env={})

    def body() -> None:
        app = App(settings)
        loop = app.health_loop()
        assert loop is not None and loop.rate == 3
        metrics = Metrics()
        metrics.watch(lambda: settings, loop)
        assert app.reconciler(health=True).cycle().ok
        loop.safe_round()
        events = log_events(logged.getvalue())
        warned = [e for e in events if e["event"] == "health_round_too_long"]
        assert len(warned) == 1 and warned[0]["addresses"] == len(addresses) and warned[0]["rate_limit"] == 3
        rounds = [e for e in events if e["event"] == "health_round" and e["probed"]]
        assert rounds and rounds[-1]["over_interval"] is True
        for fix in (warned[0]["fix"], rounds[-1]["fix"]):
            assert fix.startswith("sysctl net.inet.icmp.icmplim=") and "/etc/sysctl.conf" in fix, fix
            value = fix.split("=", 1)[1].split()[0]
            enough = kernel.platform({"net.inet.icmp.icmplim": value}).default_rate_limit()
            assert enough >= warned[0]["needed_rate"], (value, enough)
        assert metrics.registry.get_sample_value("jailsyncd_health_round_over_interval") == 1.0
        assert metrics.registry.get_sample_value("jailsyncd_health_rate_limit") == 3.0
        pings = {c: s for c, (s, _) in checks(ns_consul).items() if c.endswith(":ping")}
        assert len(pings) == len(addresses) and set(pings.values()) == {"passing"}, pings

    netns.call(body)


def test_run_sizes_its_kept_sockets_at_start_on_freebsd(netns: NetNS) -> None:
    """``run`` opens its ICMP sockets once, as root, before it switches to daemon.user
    (``Prober.keep_open``). On FreeBSD's kernel (ENOBUFS above sb_max_adj,
    sbreserve_locked in sys/kern/uipc_sockbuf.c) each is sized there, halving until
    accepted, and the rounds that follow use it as granted: no OSError escapes
    (before: every cycle of ``run`` ended in cycle_crashed) and every reply is read."""
    netns.add_address(UP)
    kernel = FreeBSDKernel(root=True)
    prober = Prober(platform=kernel.platform())
    netns.call(prober.keep_open)
    sized = {s.family: s.asked for s in kernel.opened[1:]}  # the first is check()'s
    assert sized == {socket.AF_INET: [8 << 20, 4 << 20, 2 << 20, 1 << 20], socket.AF_INET6: [8 << 20, 4 << 20, 2 << 20, 1 << 20]}
    for _ in range(2):
        report = netns.call(prober.run_round, [Probe(UP, "ping", UP), Probe("::1", "ping", "::1")], count=2, timeout=0.5)
        assert report.problems == [] and report.results[UP].ok and report.results["::1"].ok, report
    assert len(kernel.opened) == 3, "no socket opened by the rounds"
    assert all(len(s.asked) == 4 for s in kernel.opened[1:]), "not sized again"
