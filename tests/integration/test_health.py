"""Health with real ICMP, real TCP/HTTP and a real Consul, all inside a network
namespace the test creates: "up" jails have their addresses on the namespace's ``lo``,
"down" jails have addresses with no route, so no probe ever leaves the namespace."""

from __future__ import annotations

import http.server
import signal
import threading
import time
from pathlib import Path

import dns.message
import dns.query
import dns.rdatatype
import pytest
from harness import ConsulServer, wait_for, write_config

from jailsyncd.adapters.cbsd import CbsdSource
from jailsyncd.adapters.consul import ConsulAgent, ConsulCatalog, connect
from jailsyncd.adapters.probe import Prober
from testing.devnet import NetNS, available
from jailsyncd.healthloop import HealthLoop
from jailsyncd.reconcile import Reconciler
from testing.sample import Workdir
from jailsyncd.settings import Settings, load_settings

pytestmark = [pytest.mark.integration, pytest.mark.skipif(available() is not None, reason=str(available()))]

UP, FLAPPY, OTHER = "10.77.0.1", "10.77.0.2", "10.77.0.3"


def statuses(consul: ConsulServer) -> dict[str, str]:
    return {c["CheckID"]: c["Status"] for c in consul.get("/v1/agent/checks").values()}


def dns_a(consul: ConsulServer, name: str) -> list[str]:
    def ask() -> list[str]:
        answer = dns.query.udp(dns.message.make_query(name, dns.rdatatype.A), "127.0.0.1", port=consul.dns_port, timeout=5)
        return sorted(r.address for rrset in answer.answer for r in rrset)

    return consul.netns.call(ask)


def in_process(settings: Settings) -> tuple[Reconciler, HealthLoop, list[ConsulAgent | ConsulCatalog]]:
    """A reconciler and health loop like the daemon's, sharing one store so that the
    test can count their writes."""
    store = connect(settings.consul)
    stores: list[ConsulAgent | ConsulCatalog] = [store]
    health = HealthLoop(settings.health, Prober(), store)
    return Reconciler(settings, CbsdSource(settings.cbsd.workdir), store, health=health), health, stores


HEALTH = 'interval = "1s"\ntimeout = "300ms"\ncount = 1\nfailures_before_critical = 3\nsuccess_before_passing = 1\nheartbeat_ttl = "3s"'


def test_thresholds_stop_flapping_and_a_steady_round_writes_nothing(netns: NetNS, ns_consul: ConsulServer, tmp_path: Path, workdir: Workdir) -> None:
    netns.add_address(UP)
    netns.add_address(FLAPPY)
    workdir.add("web1", jid=3, status=1, ip4_addr=f"{UP}/24", tags="consul.name=web")
    workdir.add("web2", jid=4, status=1, ip4_addr=f"{FLAPPY}/24", tags="consul.name=web")
    settings = load_settings(write_config(tmp_path / "c.toml", workdir=workdir.root, consul=ns_consul, health=HEALTH), env={})

    def body() -> None:
        reconciler, health, stores = in_process(settings)
        assert reconciler.cycle().ok
        # New services are probed before registration: they start passing, no extra write.
        assert statuses(ns_consul)["jailsyncd-web2:ping"] == "passing"
        assert sum(s.writes for s in stores) == 3  # two jails and the heartbeat service
        # A registration cannot carry the probe's output: the first round writes it once.
        assert health.round().writes == 2
        assert "1/1 replies" in ns_consul.get("/v1/agent/checks")["jailsyncd-web2:ping"]["Output"]
        assert health.round().writes == 0
        before = sum(s.writes for s in stores)

        # Down for one or two rounds at a time, never three: Consul never sees it.
        up = True
        for want_up in (False, True, False, False, True, False, False, True):
            if want_up != up:
                (netns.add_address if want_up else netns.del_address)(FLAPPY)
                up = want_up
            assert health.round().writes == 0
        assert statuses(ns_consul)["jailsyncd-web2:ping"] == "passing"
        assert sum(s.writes for s in stores) == before

        # Three failed rounds in a row: critical, with exactly one write.
        netns.del_address(FLAPPY)
        assert [health.round().writes for _ in range(3)] == [0, 0, 1]
        assert statuses(ns_consul)["jailsyncd-web2:ping"] == "critical"
        assert wait_for(lambda: dns_a(ns_consul, "web.service.consul") == [UP], timeout=5, what="web2 out of DNS")

        netns.add_address(FLAPPY)
        assert health.round().writes == 1
        assert statuses(ns_consul)["jailsyncd-web2:ping"] == "passing"
        wait_for(lambda: dns_a(ns_consul, "web.service.consul") == [UP, FLAPPY], timeout=5, what="web2 back in DNS")

        # Steady state: rounds write nothing and Consul's index does not move.
        _, _, headers = ns_consul.request("GET", "/v1/health/state/any")
        index = headers["X-Consul-Index"]
        assert [health.round().writes for _ in range(3)] == [0, 0, 0]
        _, _, headers = ns_consul.request("GET", "/v1/health/state/any")
        assert headers["X-Consul-Index"] == index

    netns.call(body)


def test_tcp_and_http_checks_from_the_tags_column(netns: NetNS, ns_consul: ConsulServer, tmp_path: Path, workdir: Workdir) -> None:
    netns.add_address(UP)
    workdir.add("api", jid=3, status=1, ip4_addr=UP, tags="consul.port=8080,consul.check=tcp,consul.check=http:/health")
    settings = load_settings(write_config(tmp_path / "c.toml", workdir=workdir.root, consul=ns_consul, health=HEALTH.replace("failures_before_critical = 3", "failures_before_critical = 1")), env={})

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/health" else 404)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    def body() -> None:
        server = http.server.HTTPServer((UP, 8080), Handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        reconciler, health, _ = in_process(settings)
        assert reconciler.cycle().ok
        checks = statuses(ns_consul)
        assert (checks["jailsyncd-api:ping"], checks["jailsyncd-api:tcp"], checks["jailsyncd-api:http"]) == ("passing",) * 3
        server.shutdown()
        server.server_close()
        # tcp and http turn critical; ping stays passing (its output is written once)
        assert health.round().writes == 3
        checks = statuses(ns_consul)
        assert (checks["jailsyncd-api:ping"], checks["jailsyncd-api:tcp"], checks["jailsyncd-api:http"]) == ("passing", "critical", "critical")
        output = {c["CheckID"]: c["Output"] for c in ns_consul.get("/v1/agent/checks").values()}
        assert "Connection refused" in output["jailsyncd-api:tcp"] and "Connection refused" in output["jailsyncd-api:http"]

    netns.call(body)


def test_daemon_health_down_up_and_death(netns: NetNS, ns_consul: ConsulServer, tmp_path: Path, workdir: Workdir, start_daemon) -> None:
    for address in (UP, FLAPPY, OTHER):
        netns.add_address(address)
    workdir.add("web1", jid=3, status=1, ip4_addr=UP)
    workdir.add("web2", jid=4, status=1, ip4_addr=FLAPPY)
    workdir.add("db1", jid=5, status=1, ip4_addr=OTHER)
    health = HEALTH.replace("failures_before_critical = 3", "failures_before_critical = 2")
    config = write_config(tmp_path / "c.toml", workdir=workdir.root, consul=ns_consul, health=health, extra='[sync]\ninterval = "1h"\n')
    daemon = start_daemon(config, netns.prefix())
    ping_checks = {f"jailsyncd-{j}:ping" for j in ("web1", "web2", "db1")}
    alias_checks = {f"jailsyncd-{j}:alive" for j in ("web1", "web2", "db1")}
    wait_for(lambda: all(statuses(ns_consul).get(c) == "passing" for c in ping_checks | alias_checks), timeout=10, what="all passing")

    # Down: critical within interval x failures_before_critical (2 s), plus one round of slack.
    netns.del_address(FLAPPY)
    started = time.monotonic()
    wait_for(lambda: statuses(ns_consul)["jailsyncd-web2:ping"] == "critical", timeout=4, what="web2 critical")
    assert time.monotonic() - started <= 3.5
    assert dns_a(ns_consul, "web2.service.consul") == []
    changed = wait_for(lambda: [e for e in daemon.events("health_changed") if e["jail"] == "web2"], timeout=2, what="health_changed logged")
    assert (changed[-1]["check"], changed[-1]["from"], changed[-1]["to"]) == ("ping", "passing", "critical")
    netns.add_address(FLAPPY)
    wait_for(lambda: statuses(ns_consul)["jailsyncd-web2:ping"] == "passing", timeout=4, what="web2 passing again")

    # Death: every jail turns critical through its alias check within the heartbeat TTL.
    daemon.proc.send_signal(signal.SIGKILL)
    daemon.proc.wait()
    killed = time.monotonic()
    wait_for(lambda: all(statuses(ns_consul)[c] == "critical" for c in alias_checks), timeout=6, what="alias checks critical")
    assert time.monotonic() - killed <= 3 + 1.5  # heartbeat_ttl plus Consul's reaping tick
    assert dns_a(ns_consul, "web1.service.consul") == []

    restarted = start_daemon(config, netns.prefix())
    wait_for(lambda: all(statuses(ns_consul)[c] == "passing" for c in alias_checks), timeout=10, what="alias checks passing again")
    assert dns_a(ns_consul, "web1.service.consul") == [UP]
    assert restarted.proc.poll() is None


def test_catalog_mode_node_checks(netns: NetNS, ns_consul: ConsulServer, tmp_path: Path, workdir: Workdir) -> None:
    netns.add_address(UP)
    netns.add_address(FLAPPY)
    workdir.add("web1", jid=3, status=1, ip4_addr=UP)
    workdir.add("web2", jid=4, status=1, ip4_addr=FLAPPY)
    health = HEALTH.replace("failures_before_critical = 3", "failures_before_critical = 2")
    config = write_config(tmp_path / "c.toml", workdir=workdir.root, consul=ns_consul, health=health, consul_extra='mode = "catalog"')
    settings = load_settings(config, env={})

    def node_checks() -> dict[str, tuple[str, str]]:
        return {c["CheckID"]: (c["Node"], c["Status"]) for c in ns_consul.get("/v1/health/state/any") if c["CheckID"].startswith("jailsyncd-")}

    def body() -> None:
        reconciler, loop, stores = in_process(settings)
        assert reconciler.cycle().ok
        assert node_checks() == {"jailsyncd-web1:ping": ("web1.my.domain", "passing"), "jailsyncd-web2:ping": ("web2.my.domain", "passing")}
        assert loop.round().writes == 2  # each check's first real output, once
        netns.del_address(FLAPPY)
        assert [loop.round().writes for _ in range(3)] == [0, 1, 0]
        assert node_checks()["jailsyncd-web2:ping"] == ("web2.my.domain", "critical")
        assert dns_a(ns_consul, "web2.service.consul") == []  # a critical node check hides its services
        assert dns_a(ns_consul, "web1.service.consul") == [UP]
        assert reconciler.cycle().writes == 0, "a cycle never resets a check's status"
        assert node_checks()["jailsyncd-web2:ping"][1] == "critical"

    netns.call(body)

    external = write_config(tmp_path / "e.toml", workdir=workdir.root, consul=ns_consul, health=health, consul_extra='mode = "catalog"', extra="[catalog]\nexternal_probe = true\n")
    reconciler, _, _ = in_process(load_settings(external, env={}))
    assert netns.call(reconciler.cycle).ok
    assert node_checks() == {}, "with external-probe, consul-esm pings and jailsyncd writes no node check"
    meta = {n["Node"]: n["Meta"]["external-probe"] for n in ns_consul.get("/v1/catalog/nodes") if n["Meta"] and "jailsyncd-owner" in n["Meta"]}
    assert meta == {"web1.my.domain": "true", "web2.my.domain": "true"}


def test_catalog_mode_stop_marks_checks_critical(netns: NetNS, ns_consul: ConsulServer, tmp_path: Path, workdir: Workdir, start_daemon) -> None:
    """Catalog checks have no TTL: a host that shuts down would leave its jails passing
    (and in DNS) for as long as it is down. ``run`` therefore writes critical to them
    when it stops (``catalog.critical_on_stop``); a restart brings them back."""
    netns.add_address(UP)
    workdir.add("web1", jid=3, status=1, ip4_addr=UP)
    workdir.add("web2", jid=4, status=1, ip4_addr=FLAPPY)
    netns.add_address(FLAPPY)
    extra = '[sync]\ninterval = "1h"\n'

    def config(name: str, more: str = "") -> Path:
        return write_config(tmp_path / name, workdir=workdir.root, consul=ns_consul, health=HEALTH, consul_extra='mode = "catalog"', extra=extra + more)

    def checks() -> dict[str, tuple[str, str]]:
        return {c["CheckID"]: (c["Status"], c["Output"]) for c in ns_consul.get("/v1/health/state/any") if c["CheckID"].startswith("jailsyncd-")}

    ours = {"jailsyncd-web1:ping", "jailsyncd-web2:ping"}
    daemon = start_daemon(config("c.toml"), netns.prefix())
    wait_for(lambda: {k for k, (st, _) in checks().items() if st == "passing"} == ours, timeout=10, what="all passing")
    assert daemon.stop() == 0
    after = checks()
    assert {k: st for k, (st, _) in after.items()} == dict.fromkeys(ours, "critical")
    assert all("jailsyncd on node1 stopped" in out for _, out in after.values())
    assert dns_a(ns_consul, "web1.service.consul") == []
    assert daemon.events("checks_critical_on_stop")[0]["checks"] == 2

    restarted = start_daemon(config("c.toml"), netns.prefix())
    back = time.monotonic()
    wait_for(lambda: all(st == "passing" for st, _ in checks().values()), timeout=10, what="passing after the restart")
    assert time.monotonic() - back < 5
    assert dns_a(ns_consul, "web1.service.consul") == [UP]

    # Turned off: the statuses stay as last written.
    assert restarted.stop() == 0
    kept = start_daemon(config("k.toml", "\n[catalog]\ncritical_on_stop = false\n"), netns.prefix())
    wait_for(lambda: all(st == "passing" for st, _ in checks().values()), timeout=10, what="passing again")
    assert kept.stop() == 0
    assert {st for st, _ in checks().values()} == {"passing"}
    assert not kept.events("checks_critical_on_stop")


def test_held_jails_are_still_probed(netns: NetNS, ns_consul: ConsulServer, tmp_path: Path, workdir: Workdir, start_daemon) -> None:
    """During the start-up grace a jail CBSD has not started yet keeps its service,
    but not a passing status: its checks keep following the probes (issue 11, item 9)."""
    netns.add_address(UP)
    netns.add_address(FLAPPY)
    workdir.add("early", jid=3, status=1, ip4_addr=UP, astart=1)
    workdir.add("late", jid=4, status=1, ip4_addr=FLAPPY, astart=1)
    extra = '[sync]\ninterval = "1h"\nstartup_grace = "1m"\n'
    config = write_config(tmp_path / "c.toml", workdir=workdir.root, consul=ns_consul, health=HEALTH, extra=extra)
    before = start_daemon(config, netns.prefix())
    wait_for(lambda: statuses(ns_consul).get("jailsyncd-late:ping") == "passing", timeout=10, what="late passing")
    assert before.stop() == 0
    # The host reboots: every row says stopped, the jails' addresses are gone.
    workdir.stop("early")
    workdir.stop("late")
    netns.del_address(UP)
    netns.del_address(FLAPPY)
    daemon = start_daemon(config, netns.prefix())
    assert {e["jail"] for e in daemon.events("deregistration_held")} == {"early", "late"}
    workdir.start("early", jid=10)  # jails-astart gets to it
    netns.add_address(UP)
    wait_for(lambda: statuses(ns_consul).get("jailsyncd-late:ping") == "critical", timeout=8, what="late critical while held")
    assert "jailsyncd-late" in ns_consul.services()
    assert statuses(ns_consul)["jailsyncd-early:ping"] == "passing"
    assert dns_a(ns_consul, "late.service.consul") == []
    netns.add_address(FLAPPY)
    workdir.start("late", jid=11)
    wait_for(lambda: statuses(ns_consul).get("jailsyncd-late:ping") == "passing", timeout=8, what="late passing once started")


def test_health_round_metrics(netns: NetNS, ns_consul: ConsulServer, tmp_path: Path, workdir: Workdir, start_daemon) -> None:
    """Rounds (ok and failed), their duration, the probes by result and the status
    writes are counted, scraped from a real ``run``."""
    import urllib.request

    from harness import free_port

    netns.add_address(UP)
    workdir.add("web1", jid=3, status=1, ip4_addr=UP)
    workdir.add("web2", jid=4, status=1, ip4_addr=FLAPPY)  # no such address: never answers
    port = free_port()
    extra = f'[sync]\ninterval = "1h"\n\n[metrics]\nlisten = "127.0.0.1:{port}"\n'
    config = write_config(tmp_path / "c.toml", workdir=workdir.root, consul=ns_consul, health=HEALTH, extra=extra)
    start_daemon(config, netns.prefix())

    def scrape() -> dict[str, float]:
        text = netns.call(lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode())
        return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("jailsyncd_health_")}

    m = wait_for(lambda: (m := scrape()).get('jailsyncd_health_rounds_total{result="ok"}', 0) >= 3 and m, timeout=10, what="three rounds")
    rounds = m['jailsyncd_health_rounds_total{result="ok"}']
    assert m['jailsyncd_health_rounds_total{result="failed"}'] == 0
    # One probe of each jail per round (a round may have ended between the two reads).
    assert rounds <= m['jailsyncd_health_probes_total{result="ok"}'] <= rounds + 1
    assert rounds <= m['jailsyncd_health_probes_total{result="failed"}'] <= rounds + 1
    assert m["jailsyncd_health_writes_total"] >= 1  # the first round writes the probes' output once
    assert m["jailsyncd_health_round_duration_seconds_count"] >= rounds
    # A round that must write while Consul is gone fails, and is counted so.
    ns_consul.stop()
    netns.add_address(FLAPPY)  # web2 answers now: its status changes and must be written
    m = wait_for(lambda: (m := scrape()).get('jailsyncd_health_rounds_total{result="failed"}', 0) >= 1 and m, timeout=10, what="a failed round")
    ended = sum(m[f'jailsyncd_health_rounds_total{{result="{r}"}}'] for r in ("ok", "failed"))
    assert ended <= m["jailsyncd_health_round_duration_seconds_count"] <= ended + 1  # a scrape between the two updates


@pytest.mark.parametrize("mode", ["agent", "catalog"])
def test_an_address_change_is_a_new_target_for_its_checks(mode: str, netns: NetNS, ns_consul: ConsulServer, tmp_path: Path, workdir: Workdir) -> None:
    """A jail whose address changes (``cbsd jset ip4_addr=...``) keeps its check IDs,
    but what they probe is new: the run of results the old address built up says
    nothing about the new one. Moved to an address that never answers, its checks
    must not stay passing (with the old address's output) for
    ``health.failures_before_critical`` more rounds; moved to one that answers, the
    output must name the new address at once, not half a TTL later."""
    netns.add_address(UP)
    netns.add_address(FLAPPY)  # both answer; OTHER has no route
    workdir.add("api", jid=3, status=1, ip4_addr=UP, tags="consul.port=8080,consul.check=tcp")
    config = write_config(tmp_path / "c.toml", workdir=workdir.root, consul=ns_consul, health=HEALTH, consul_extra=f'mode = "{mode}"')
    settings = load_settings(config, env={})

    class Handler(http.server.BaseHTTPRequestHandler):
        pass

    def checks() -> dict[str, tuple[str, str, str]]:
        found = ns_consul.get("/v1/agent/checks").values() if mode == "agent" else ns_consul.get("/v1/health/state/any")
        return {c["CheckID"]: (c["Status"], c["Name"], c["Output"]) for c in found if c["CheckID"].startswith("jailsyncd-api:")}

    def body() -> None:
        servers = [http.server.HTTPServer((address, 8080), Handler) for address in (UP, FLAPPY)]
        reconciler, health, _ = in_process(settings)
        try:
            assert reconciler.cycle().ok
            health.round()
            assert [checks()[f"jailsyncd-api:{c}"][0] for c in ("ping", "tcp")] == ["passing", "passing"]

            # Moved to an address with no route: critical with the cycle that moves it.
            workdir.set("api", ip4_addr=OTHER)
            assert reconciler.cycle().ok
            now = checks()
            for check in ("ping", "tcp"):
                status, name, _ = now[f"jailsyncd-api:{check}"]
                assert OTHER in name, now
                assert status == "critical", f"{check} passing for an address that never answered: {now}"
            # The first round writes the probe's output (a registration cannot carry it).
            health.round()
            now = checks()
            assert [now[f"jailsyncd-api:{c}"][0] for c in ("ping", "tcp")] == ["critical", "critical"]
            assert OTHER in now["jailsyncd-api:ping"][2] and OTHER in now["jailsyncd-api:tcp"][2], now

            # Moved to another address that answers: passing, its output naming it.
            workdir.set("api", ip4_addr=FLAPPY)
            assert reconciler.cycle().ok
            assert [checks()[f"jailsyncd-api:{c}"][0] for c in ("ping", "tcp")] == ["passing", "passing"]
            health.round()
            now = checks()
            assert FLAPPY in now["jailsyncd-api:ping"][2] and FLAPPY in now["jailsyncd-api:tcp"][2], now
        finally:
            for server in servers:
                server.server_close()

    netns.call(body)


@pytest.mark.parametrize("mode", ["agent", "catalog"])
def test_checks_a_jail_no_longer_has_are_removed(mode: str, netns: NetNS, ns_consul: ConsulServer, tmp_path: Path, workdir: Workdir) -> None:
    """A probe dropped from a jail's tags (``consul.check=tcp`` removed), and then
    health turned off altogether (``health.enabled = false``): the checks jailsyncd no
    longer keeps leave Consul with the update. Consul's agent keeps a service's
    checks that a new registration of it does not list, so a re-registration alone
    left them there: the tcp check held its last status until its TTL ran out
    (critical, hiding the jail), the alias checks went critical with the heartbeat
    service gone, and every later cycle updated the service again."""
    netns.add_address(UP)
    workdir.add("api", jid=3, status=1, ip4_addr=UP, tags="consul.port=8080,consul.check=tcp")
    on = load_settings(write_config(tmp_path / "on.toml", workdir=workdir.root, consul=ns_consul, health=HEALTH, consul_extra=f'mode = "{mode}"'), env={})
    off = load_settings(write_config(tmp_path / "off.toml", workdir=workdir.root, consul=ns_consul, consul_extra=f'mode = "{mode}"'), env={})

    def checks() -> set[str]:
        found = ns_consul.get("/v1/agent/checks").values() if mode == "agent" else ns_consul.get("/v1/health/state/any")
        return {c["CheckID"] for c in found if c["CheckID"].startswith("jailsyncd")}

    def passing() -> list[str]:
        return [e["Service"]["Address"] for e in ns_consul.get("/v1/health/service/api?passing")]

    def body() -> None:
        reconciler, _, _ = in_process(on)
        assert reconciler.cycle().ok
        assert {"jailsyncd-api:ping", "jailsyncd-api:tcp"} <= checks()

        workdir.set("api", tags="consul.port=8080")
        assert reconciler.cycle().ok
        assert "jailsyncd-api:tcp" not in checks() and "jailsyncd-api:ping" in checks()
        assert reconciler.cycle().writes == 0

        plain = Reconciler(off, CbsdSource(off.cbsd.workdir), connect(off.consul))
        assert plain.cycle().ok
        assert checks() == set(), "health is off: no check of jailsyncd's is left"
        wait_for(lambda: passing() == [UP], timeout=5, what="the jail passing with health off")
        assert plain.cycle().writes == 0

    netns.call(body)


def test_an_http_answer_that_trickles_is_cut_at_the_timeout(netns: NetNS) -> None:
    """A jail's web server that answers one header line every 0.1 s (a stuck
    application, a tarpit) never lets a read wait ``health.timeout``, so a timeout per
    read never fires: the probe took as long as the server liked (20 s for the 100
    header lines http.client accepts; a status line sent a byte at a time, for ever),
    and with it the health round of every jail and the cycle that probes a new
    service before registering it. ``health.timeout`` bounds the whole probe."""
    from jailsyncd.health import Probe

    netns.add_address(UP)
    stop = threading.Event()

    def serve(listener) -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            with conn:
                conn.recv(1024)
                conn.sendall(b"HTTP/1.1 200 OK\r\n")
                while not stop.is_set():
                    try:
                        conn.sendall(b"X-Slow: 1\r\n")
                    except OSError:
                        break
                    stop.wait(0.1)

    def body() -> tuple[float, list]:
        import socket

        listener = socket.create_server((UP, 8080))
        thread = threading.Thread(target=serve, args=(listener,), daemon=True)
        thread.start()
        try:
            started = time.monotonic()
            report = Prober().run_round([Probe("slow:http", "http:/", UP, 8080), Probe("slow:tcp", "tcp", UP, 8080)], count=1, timeout=0.5)
            return time.monotonic() - started, [report.results["slow:http"], report.results["slow:tcp"]]
        finally:
            stop.set()
            thread.join(timeout=5)
            listener.close()

    took, (http_result, tcp_result) = netns.call(body)
    assert took < 2.0, f"the round took {took:.1f}s at health.timeout = 0.5s"
    assert not http_result.ok and "0.5s" in http_result.output, http_result
    assert tcp_result.ok, tcp_result
