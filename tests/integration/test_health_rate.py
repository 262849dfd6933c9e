"""``health.rate_limit`` against a real kernel's echo-reply limit.

FreeBSD's host answers the pings of every non-VNET jail (their addresses are its own
aliases) and drops echo replies beyond ``net.inet.icmp.icmplim`` per second
(``badport_bandlim(BANDLIM_ICMP_ECHO)`` in ``icmp_input``, sys/netinet/ip_icmp.c).
Linux has the same mechanism, off for echo replies by default: with the echo-reply
bit in ``net.ipv4.icmp_ratemask``, ``icmp_reply()`` takes a credit from the global
bucket (``net.ipv4.icmp_msgs_per_sec``, ``net.ipv4.icmp_msgs_burst``; per network
namespace) and drops the reply when there is none. So the jails here live in a peer
namespace with that limit, reached over a veth pair from the namespace where
jailsyncd and Consul run; every address is inside namespaces the test creates.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from harness import ConsulServer, log_events, wait_for, write_config

from jailsyncd.adapters.cbsd import CbsdSource
from jailsyncd.adapters.consul import connect
from jailsyncd.adapters.probe import Prober
from testing.devnet import NetNS, available, join, limit_echo_replies, sysctl
from jailsyncd.healthloop import HealthLoop
from jailsyncd.logs import configure
from jailsyncd.platform import Platform
from jailsyncd.reconcile import Reconciler
from testing.sample import Workdir
from jailsyncd.settings import load_settings

pytestmark = [pytest.mark.integration, pytest.mark.skipif(available() is not None, reason=str(available())), pytest.mark.usefixtures("restore_logging")]

JAILS = [f"10.79.1.{i}" for i in range(1, 121)]
KERNEL_LIMIT = 100  # echo replies per second the jails' kernel sends
ECHO_REPLY_BIT = 1 << 0  # ICMP type 0



@pytest.fixture
def two_namespaces():
    """(host, jails): jailsyncd's namespace and the jails' one, joined by a veth pair;
    the jails' kernel limits its echo replies to KERNEL_LIMIT per second."""
    with NetNS("jsh") as host, NetNS("jsj") as jails:
        join(host, jails, routed="10.79.1.0/24")
        for address in JAILS:
            jails.add_address(address)
        limit_echo_replies(jails, KERNEL_LIMIT, burst=10)
        assert int(sysctl(jails, "net.ipv4.icmp_msgs_per_sec")) == KERNEL_LIMIT
        assert int(sysctl(jails, "net.ipv4.icmp_ratemask")) & ECHO_REPLY_BIT
        assert int(sysctl(host, "net.ipv4.icmp_ratemask")) & ECHO_REPLY_BIT == 0, "the limit is the jails' namespace's only"
        yield host, jails


def test_pacing_below_the_kernel_limit_keeps_every_jail_passing(two_namespaces, consul_bin: str, tmp_path: Path, workdir: Workdir) -> None:
    host, _ = two_namespaces
    consul = ConsulServer(consul_bin, netns=host).start()
    try:
        for n, address in enumerate(JAILS):
            workdir.add(f"j{n:03d}", jid=n + 1, status=1, ip4_addr=address)

        def run(rate_limit: int, interval: str) -> tuple[Reconciler, HealthLoop, io.StringIO]:
            health = f'interval = "{interval}"\ntimeout = "500ms"\ncount = 1\nfailures_before_critical = 1\nrate_limit = {rate_limit}'
            settings = load_settings(write_config(tmp_path / f"c{rate_limit}.toml", workdir=workdir.root, consul=consul, health=health), env={})
            logged = io.StringIO()
            configure("json", "info", stream=logged)
            loop = HealthLoop(settings.health, Prober(platform=Platform("linux")), connect(settings.consul), advice=Platform("linux").raise_limit_hint)
            return Reconciler(settings, CbsdSource(settings.cbsd.workdir), connect(settings.consul), health=loop), loop, logged

        def statuses() -> dict[str, str]:
            return {c["CheckID"]: c["Status"] for c in consul.get("/v1/agent/checks").values() if c["CheckID"].endswith(":ping")}

        def body() -> None:
            # No pacing: 120 requests at once, the jails' kernel answers ~burst + rate x time.
            reconciler, loop, _ = run(0, "10s")
            assert reconciler.cycle().ok
            loop.round()
            lost = [c for c, s in statuses().items() if s != "passing"]
            assert len(statuses()) == len(JAILS)
            assert len(lost) >= len(JAILS) // 2, f"only {len(lost)} lost without pacing: is the kernel limit in force?"

            # Paced at half the kernel's limit: every jail answers. The round (120 / 50 s
            # plus the timeout) does not fit in a 2 s interval: said at the next cycle
            # and in every round, with what to raise, and no jail suffers for it.
            reconciler, loop, logged = run(KERNEL_LIMIT // 2, "2s")
            assert reconciler.cycle().ok
            stats = loop.round()
            assert [c for c, s in statuses().items() if s != "passing"] == []
            assert stats.pace is not None and not stats.pace.fits and stats.paced > 1.5
            events = log_events(logged.getvalue())
            warned = [e for e in events if e["event"] == "health_round_too_long"]
            assert len(warned) == 1 and warned[0]["addresses"] == len(JAILS) and warned[0]["needed_rate"] == 80
            assert warned[0]["fix"].startswith("raise health.rate_limit to 80")
            loop.safe_round()
            rounds = [e for e in log_events(logged.getvalue()) if e["event"] == "health_round"]
            assert rounds[-1]["over_interval"] is True and rounds[-1]["rate_limit"] == KERNEL_LIMIT // 2
            assert [c for c, s in statuses().items() if s != "passing"] == []

        host.call(body)
    finally:
        consul.stop()


def test_run_reports_a_round_too_long_and_nothing_else(consul_bin: str, tmp_path: Path, workdir: Workdir, start_daemon) -> None:
    """``run`` whose rounds cannot fit in ``health.interval`` at its rate limit: it says
    so once with the fix, every round says it again, jails stay passing, and the
    scheduler's own "skipped: maximum number of running instances" warning (a round
    still running when the next is due) never shows up: rounds just run back to back."""
    with NetNS() as ns:
        addresses = [f"10.79.2.{i}" for i in range(1, 4)]
        for address in addresses:
            ns.add_address(address)
            workdir.add(f"w{address.rsplit('.', 1)[1]}", jid=int(address.rsplit(".", 1)[1]), status=1, ip4_addr=address)
        consul = ConsulServer(consul_bin, netns=ns).start()
        try:
            # 3 jails x 2 requests at 2/s: ~3 s of sending plus the timeout, against a 1 s interval.
            health = 'interval = "1s"\ntimeout = "300ms"\ncount = 2\nrate_limit = 2\nheartbeat_ttl = "3s"'
            config = write_config(tmp_path / "c.toml", workdir=workdir.root, consul=consul, health=health, extra='[sync]\ninterval = "1h"\n')
            daemon = start_daemon(config, ns.prefix())
            wait_for(lambda: len([r for r in daemon.events("health_round") if r["probed"]]) >= 2, timeout=20, what="two health rounds")
            warned = daemon.events("health_round_too_long")
            assert len(warned) == 1 and warned[0]["needed_rate"] == 9 and warned[0]["fix"].startswith("raise health.rate_limit to 9")
            rounds = [r for r in daemon.events("health_round") if r["probed"]]
            assert all(r["over_interval"] and r["needed_rate"] == 9 and r["paced_ms"] > 2000 for r in rounds), rounds
            skipped = [e for e in daemon.events("library_log") if "maximum number of running instances" in e.get("message", "")]
            assert skipped == []
            checks = {c["CheckID"]: c["Status"] for c in consul.get("/v1/agent/checks").values() if c["CheckID"].endswith(":ping")}
            assert sorted(checks.values()) == ["passing"] * 3
        finally:
            consul.stop()
