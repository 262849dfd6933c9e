"""End to end in agent mode: ``jailsyncd once``/``plan``/``purge`` as subprocesses, a real
Consul dev agent, and CBSD workdirs written the way CBSD writes them."""

from __future__ import annotations

import json
from pathlib import Path

import dns.message
import dns.query
import dns.rdatatype
import pytest
from harness import ConsulServer, log_events, run_cli, write_config

from jailsyncd.errors import ExitCode
from testing.sample import Workdir

pytestmark = pytest.mark.integration

EXPECTED_SAMPLE = {
    # service ID: (service name, address, port, tags)
    "jailsyncd-web1": ("web1", "127.0.10.10", 0, {"jail", "web", "prod"}),
    "jailsyncd-db1": ("db1", "127.0.10.11", 5432, {"jail", "postgres"}),
    "jailsyncd-smtp": ("smtp", "127.0.10.26", 0, {"jail"}),
    "jailsyncd-www1": ("www", "127.0.10.21", 80, {"jail", "prod"}),
    "jailsyncd-www2": ("www", "127.0.10.22", 80, {"jail", "prod"}),
    "jailsyncd-Build_Box": ("build-box", "127.0.10.30", 0, {"jail"}),
    "jailsyncd-freebsd1": ("freebsd1", "127.0.10.50", 0, {"bhyve", "vm"}),
    # REALDHCP: address discovery finds its own dhclient lease (the renewed one).
    "jailsyncd-vnet1": ("vnet1", "127.0.10.41", 0, {"jail"}),
}


def once(config: Path, *args: str) -> tuple[int, list[dict]]:
    proc = run_cli("once", *args, config=config)
    return proc.returncode, log_events(proc.stderr)


def summary(events: list[dict]) -> dict:
    [event] = [e for e in events if e["event"] == "cycle_finished"]
    return event


def test_first_registration_matches_the_sample(consul: ConsulServer, config: Path) -> None:
    rc, events = once(config)
    assert rc == 0, events
    services = consul.services()
    assert {sid: (s["Service"], s["Address"], s["Port"], set(s["Tags"])) for sid, s in services.items()} == EXPECTED_SAMPLE
    db1 = services["jailsyncd-db1"]
    assert db1["Meta"] == {
        "external-source": "cbsd",
        "jailsyncd-owner": "node1",
        "cbsd-jname": "db1",
        "cbsd-host": "node1",
        "cbsd-emulator": "jail",
        "cbsd-fqdn": "db1.example.org",
    }
    assert {k: v["Address"] for k, v in db1["TaggedAddresses"].items()} == {
        "lan_ipv4": "127.0.10.11", "wan_ipv4": "127.0.10.11", "lan_ipv6": "2001:db8:10::11", "wan_ipv6": "2001:db8:10::11",
    }
    assert services["jailsyncd-smtp"]["TaggedAddresses"]["cbsd_ipv4_2"]["Address"] == "127.0.10.100"
    assert all("/" not in s["Address"] for s in services.values())
    assert services["jailsyncd-vnet1"]["Meta"]["cbsd-address-source"] == "dhclient"
    assert summary(events)["registered"] == 8
    skipped = {(e["jail"], e["reason"]) for e in events if e["event"] == "jail_skipped"}
    # win10's lease is in the sample's dnsmasq file, which this config does not list.
    assert skipped == {("win10", "unaddressable"), ("dhcp1", "unaddressable"), ("private", "opted_out")}


def test_second_cycle_writes_nothing(consul: ConsulServer, config: Path) -> None:
    assert once(config)[0] == 0
    before_services, before_index = consul.services(), consul.index()
    rc, events = once(config)
    assert rc == 0
    assert summary(events)["writes"] == 0
    assert summary(events)["requests"] == 2  # agent services + agent checks
    assert consul.index() == before_index
    assert consul.services() == before_services


def test_lifecycle_stop_start_destroy_ip_and_tags(consul: ConsulServer, config: Path, sample: Workdir) -> None:
    assert once(config)[0] == 0
    sample.stop("web1")
    sample.set("db1", ip4_addr="em0#127.0.10.99/24")
    sample.set("smtp", tags="mail,consul.port=25,team=ops")
    sample.destroy("www2")
    sample.start("mail", jid=40)
    rc, events = once(config)
    assert rc == 0, events
    services = consul.services()
    assert "jailsyncd-web1" not in services and "jailsyncd-www2" not in services
    assert services["jailsyncd-db1"]["Address"] == "127.0.10.99"
    assert services["jailsyncd-smtp"]["Port"] == 25
    assert set(services["jailsyncd-smtp"]["Tags"]) == {"jail", "mail"}
    assert services["jailsyncd-smtp"]["Meta"]["team"] == "ops"
    assert services["jailsyncd-mail"]["Address"] == "127.0.10.25"
    drift = {(e["jail"], e["kind"]) for e in events if e["event"] == "drift_detected"}
    assert drift == {("web1", "orphan"), ("www2", "orphan"), ("db1", "changed"), ("smtp", "changed"), ("mail", "missing")}
    [db1_change] = [e for e in events if e["event"] == "drift_detected" and e["jail"] == "db1"]
    assert db1_change["fields"]["address"] == {"from": "127.0.10.11", "to": "127.0.10.99"}
    s = summary(events)
    assert (s["registered"], s["updated"], s["deregistered"]) == (1, 2, 2)


def test_foreign_entries_are_never_touched(consul: ConsulServer, config: Path, sample: Workdir) -> None:
    foreign = {"ID": "web1", "Name": "web1", "Address": "192.0.2.1", "Tags": ["theirs"]}
    squatter = {"ID": "jailsyncd-smtp", "Name": "smtp", "Address": "192.0.2.2", "Meta": {"jailsyncd-owner": "othernode"}}
    consul.put("/v1/agent/service/register", foreign)
    consul.put("/v1/agent/service/register", squatter)
    before = {k: consul.services()[k] for k in ("web1", "jailsyncd-smtp")}
    rc, events = once(config)
    assert rc == 0
    conflicts = [e for e in events if e["event"] == "jail_skipped" and e["reason"] == "conflict"]
    assert [e["jail"] for e in conflicts] == ["smtp"]
    sample.stop("smtp")
    assert run_cli("purge", "--yes", config=config).returncode == 0
    after = consul.services()
    assert {k: after[k] for k in ("web1", "jailsyncd-smtp")} == before
    assert set(after) == {"web1", "jailsyncd-smtp"}


def test_missing_db_changes_nothing_and_fails(consul: ConsulServer, config: Path, sample: Workdir) -> None:
    assert once(config)[0] == 0
    before = consul.services()
    (sample.root / "var" / "db" / "local.sqlite").unlink()
    proc = run_cli("once", config=config)
    assert proc.returncode == ExitCode.SOURCE_UNAVAILABLE
    assert consul.services() == before
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("jailsyncd: ") and "local.sqlite" in last and "Traceback" not in proc.stderr
    assert not (sample.root / "var" / "db" / "local.sqlite").exists(), "a read-only open must never create the DB"


def test_max_deregistrations_refuses_then_force(consul: ConsulServer, tmp_path: Path, workdir: Workdir) -> None:
    for i in range(12):
        workdir.add(f"j{i:02}", jid=100 + i, status=1, ip4_addr=f"127.0.11.{i + 1}")
    config = write_config(tmp_path / "c.toml", workdir=workdir.root, consul=consul)
    assert once(config)[0] == 0
    for i in range(11):
        workdir.stop(f"j{i:02}")
    proc = run_cli("once", config=config)
    assert proc.returncode == ExitCode.SAFETY_REFUSED
    assert "max_deregistrations" in proc.stderr.strip().splitlines()[-1]
    assert len(consul.services()) == 12
    assert [e for e in log_events(proc.stderr) if e["event"] == "deregistrations_refused"][0]["count"] == 11
    rc, _ = once(config, "--force")
    assert rc == 0
    assert set(consul.services()) == {"jailsyncd-j11"}


def test_plan_json_is_a_dry_run(consul: ConsulServer, config: Path) -> None:
    proc = run_cli("plan", "--json", config=config)
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    assert set(plan) >= {"register", "update", "deregister", "skipped"}
    assert {p["jail"] for p in plan["register"]} == {sid.removeprefix("jailsyncd-") for sid in EXPECTED_SAMPLE}
    assert {(s["jail"], s["reason"]) for s in plan["skipped"]} == {("win10", "unaddressable"), ("dhcp1", "unaddressable"), ("private", "opted_out")}
    assert consul.services() == {}
    text = run_cli("plan", config=config).stdout
    assert "+ web1" in text and "! dhcp1" in text and "address-source=dhclient" in text


def test_consul_dns_answers_with_the_bare_jail_ip(consul: ConsulServer, config: Path) -> None:
    assert once(config)[0] == 0
    query = dns.message.make_query("www.service.consul", dns.rdatatype.A)
    answer = dns.query.udp(query, "127.0.0.1", port=consul.dns_port, timeout=5)
    addresses = sorted(r.address for rrset in answer.answer for r in rrset)
    assert addresses == ["127.0.10.21", "127.0.10.22"]
    assert all(rrset.rdtype == dns.rdatatype.A for rrset in answer.answer)


def test_old_schema_and_unknown_columns(consul: ConsulServer, tmp_path: Path) -> None:
    old = Workdir.create(tmp_path / "old", nodename="oldnode", schema="old", extra_columns=("future_thing",))
    assert "tags" not in old.columns() and "future_thing" in old.columns()
    old.add("legacy", jid=2, status=1, ip4_addr="127.0.12.1/24", future_thing="x")
    config = write_config(tmp_path / "c.toml", workdir=old.root, consul=consul, host="oldnode")
    assert once(config)[0] == 0
    svc = consul.services()["jailsyncd-legacy"]
    assert (svc["Address"], svc["Tags"], svc["Meta"]["cbsd-host"]) == ("127.0.12.1", ["jail"], "oldnode")


def test_peer_db_copies_are_not_local(consul: ConsulServer, tmp_path: Path, workdir: Workdir) -> None:
    peer = Workdir.create(tmp_path / "peer", nodename="peer1")
    peer.add("peerjail", jid=3, status=1, ip4_addr="127.0.13.1")
    (workdir.root / "var" / "db" / "peer1.sqlite").write_bytes((peer.root / "var" / "db" / "inv.peer1.sqlite").read_bytes())
    workdir.add("mine", jid=4, status=1, ip4_addr="127.0.13.2")
    config = write_config(tmp_path / "c.toml", workdir=workdir.root, consul=consul)
    assert once(config)[0] == 0
    assert set(consul.services()) == {"jailsyncd-mine"}


def test_awkward_jnames_register_and_deregister(consul: ConsulServer, tmp_path: Path, workdir: Workdir) -> None:
    for i, jname in enumerate(["a%b", "Mail@Box", "x:y", "web_1", "web-1"]):
        workdir.add(jname, jid=10 + i, status=1, ip4_addr=f"127.0.14.{i + 1}")
    config = write_config(tmp_path / "c.toml", workdir=workdir.root, consul=consul)
    assert once(config)[0] == 0
    names = {sid: s["Service"] for sid, s in consul.services().items()}
    assert names["jailsyncd-web-1"] == "web-1"
    assert names["jailsyncd-web_1"].startswith("web-1-") and names["jailsyncd-web_1"] != "web-1"
    assert names["jailsyncd-Mail@Box"] == "mail-box"
    assert all(len(n) <= 63 and set(n) <= set("abcdefghijklmnopqrstuvwxyz0123456789-") for n in names.values())
    for jname in ["a%b", "Mail@Box", "x:y", "web_1", "web-1"]:
        workdir.stop(jname)
    assert once(config)[0] == 0
    assert consul.services() == {}


def test_unreachable_consul_and_bad_config(tmp_path: Path, sample: Workdir) -> None:
    dead = ConsulServer(binary="unused")  # never started: nothing listens on its port
    config = write_config(tmp_path / "c.toml", workdir=sample.root, consul=dead)
    proc = run_cli("once", config=config)
    assert proc.returncode == ExitCode.CONSUL_UNAVAILABLE
    assert dead.address in proc.stderr.strip().splitlines()[-1] and "Traceback" not in proc.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text('[consul]\nadress = "x"\n')
    proc = run_cli("once", config=bad)
    assert proc.returncode == ExitCode.CONFIG
    assert proc.stderr.strip() == f"jailsyncd: {bad}: consul.adress: unknown key (did you mean 'address'?)"


def test_a_cold_start_of_many_jails_registers_each_once(consul: ConsulServer, tmp_path: Path, workdir: Workdir) -> None:
    """40 new jails (more than ``EARLY_MIN``): the cycle takes the path that
    registers while CBSD is read (the agent store sends them after the read, one
    request each); every jail is registered once, logged once as drift and once as
    registered, counted once, and the next cycle writes nothing. Stopped and
    address-less jails beside them stay out."""
    for i in range(40):
        workdir.add(f"cold{i:02}", jid=200 + i, status=1, ip4_addr=f"127.0.12.{i + 1}")
    workdir.add("stopped", jid=0, status=0, ip4_addr="127.0.12.100")
    workdir.add("nowhere", jid=300, status=1, ip4_addr="0")
    config = write_config(tmp_path / "c.toml", workdir=workdir.root, consul=consul)
    rc, events = once(config)
    assert rc == 0
    assert set(consul.services()) == {f"jailsyncd-cold{i:02}" for i in range(40)}
    registered = [e["jail"] for e in events if e["event"] == "service_registered"]
    assert sorted(registered) == [f"cold{i:02}" for i in range(40)]
    assert sorted(e["jail"] for e in events if e["event"] == "drift_detected") == sorted(registered)
    # Registered as read: each jail's drift line is followed by its registration,
    # not every drift line first and every registration after the read.
    names = [(e["event"], e["jail"]) for e in events if e["event"] in ("drift_detected", "service_registered")]
    assert names[:2] == [("drift_detected", "cold00"), ("service_registered", "cold00")], names[:4]
    assert summary(events)["registered"] == 40 and summary(events)["writes"] == 40
    rc, events = once(config)
    assert rc == 0 and summary(events)["writes"] == 0
