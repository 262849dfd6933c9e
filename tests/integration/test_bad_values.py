"""Bad and hostile values in CBSD's columns, each against a real Consul via ``once``.

What happens to each is written down in docs/design.md or, where design.md is
silent, in docs/reliability.md ("Bad values"). Every test ends with a second cycle
that must write nothing: a value that makes the plan see a difference on every cycle
would rewrite Consul forever.
"""

from __future__ import annotations

import sqlite3
import time
import urllib.parse
from pathlib import Path

import dns.message
import dns.query
import dns.rdatatype
import pytest
from harness import ConsulServer, log_events, run_cli, wait_for, write_config

from jailsyncd.errors import ExitCode
from jailsyncd.naming import dns_label
from testing.sample import Workdir

pytestmark = pytest.mark.integration

DNS_SAFE = set("abcdefghijklmnopqrstuvwxyz0123456789-")
OUR_META = {"external-source", "jailsyncd-owner", "cbsd-jname", "cbsd-host", "cbsd-emulator", "cbsd-fqdn"}


@pytest.fixture(autouse=True)
def wipe_unicode_ids(consul: ConsulServer):
    """Leave no service behind: the shared ``consul`` fixture's wipe cannot put a
    non-ASCII service ID into a URL, so this file removes its own (URL-encoded)."""
    yield
    for sid in consul.services():
        consul.put(f"/v1/agent/service/deregister/{urllib.parse.quote(sid, safe='')}")


def once(config: Path) -> tuple[int, list[dict], str]:
    proc = run_cli("once", config=config)
    return proc.returncode, log_events(proc.stderr), proc.stderr


def finished(events: list[dict]) -> dict:
    [event] = [e for e in events if e["event"] == "cycle_finished"]
    return event


def of(events: list[dict], event: str, jail: str) -> list[dict]:
    return [e for e in events if e["event"] == event and e.get("jail") == jail]


def assert_stable(config: Path) -> None:
    """A second cycle over the same state writes nothing."""
    rc, events, stderr = once(config)
    assert rc == 0, stderr
    assert finished(events)["writes"] == 0, [e for e in events if e["event"] == "drift_detected"]


def dns_a(consul: ConsulServer, name: str) -> list[str]:
    query = dns.message.make_query(f"{name}.service.consul", dns.rdatatype.A)
    answer = dns.query.udp(query, "127.0.0.1", port=consul.dns_port, timeout=5)
    return sorted(r.address for rrset in answer.answer for r in rrset)


def assert_dns(consul: ConsulServer, name: str, expected: list[str]) -> None:
    """Consul DNS answers ``expected`` for ``name`` (the agent's catalog sync runs in
    the background, so the answer may take a moment to appear)."""
    try:
        wait_for(lambda: dns_a(consul, name) == expected, timeout=5, interval=0.1, what=f"DNS {name}")
    except AssertionError:
        assert dns_a(consul, name) == expected, name


def test_garbage_and_10000_character_ip4_addr(consul: ConsulServer, tmp_path: Path, workdir: Workdir) -> None:
    many = []
    for i in range(2000):  # valid, distinct loopback addresses until the column is 10,000 characters
        many.append(f"127.0.{16 + i // 250}.{i % 250 + 1}")
        if len(",".join(many)) >= 10_000:
            break
    many_column = ",".join(many)
    junk_then_ip = ("bogus," * 2000)[: 10_000 - len("127.0.15.2")] + "127.0.15.2"
    workdir.add("garbage", jid=1, status=1, ip4_addr="not-an-ip,999.1.1.1,::zz::,127.0.15.1/33,em0#,fe80::1%em0,0.0.0.0")
    workdir.add("huge", jid=2, status=1, ip4_addr="x" * 10_000)
    workdir.add("junkfirst", jid=3, status=1, ip4_addr=junk_then_ip)
    workdir.add("manyips", jid=4, status=1, ip4_addr=many_column + "," + many[0])  # with a duplicate at the end
    assert len(junk_then_ip) == 10_000 and len(many_column) >= 10_000
    config = write_config(tmp_path / "c.toml", workdir=workdir.root, consul=consul)
    rc, events, stderr = once(config)
    assert rc == 0, stderr
    services = consul.services()
    # No usable address: skipped as unaddressable, the bad items noted, nothing registered.
    assert set(services) == {"jailsyncd-junkfirst", "jailsyncd-manyips"}
    for jail in ("garbage", "huge"):
        [skip] = of(events, "jail_skipped", jail)
        assert skip["reason"] == "unaddressable"
        assert of(events, "jail_note", jail)[0]["kind"] == "invalid_address"
    # The well-formed addresses no jail can have are noted with their reasons.
    rejected = [n["detail"] for n in of(events, "jail_note", "garbage") if n["kind"] == "address_rejected"]
    assert len(rejected) == 2 and "fe80::1%em0" in rejected[0] and "0.0.0.0" in rejected[1]
    # Log lines stay short whatever the column holds (at most 5 items of 64 characters).
    assert all(len(line) < 2000 for line in stderr.splitlines()), max(len(line) for line in stderr.splitlines())
    # One valid address after 9,990 characters of junk: registered with it, junk noted.
    assert services["jailsyncd-junkfirst"]["Address"] == "127.0.15.2"
    assert of(events, "jail_note", "junkfirst")[0]["kind"] == "invalid_address"
    # ~830 valid addresses: the first is the address, every one is a tagged address.
    manyips = services["jailsyncd-manyips"]
    assert manyips["Address"] == many[0]
    tagged = {v["Address"] for v in manyips["TaggedAddresses"].values()}
    assert tagged == set(many) and len(manyips["TaggedAddresses"]) == len(many) + 1  # lan_ + wan_ for the first
    assert not of(events, "jail_note", "manyips")
    assert_stable(config)


def test_awkward_and_unicode_jnames(consul: ConsulServer, tmp_path: Path, workdir: Workdir) -> None:
    jnames = ["db_1", "mail@box", "50%off", "host:8080", "a?b#c", "my jail", "Ünïcødé", "日本"]
    for i, jname in enumerate(jnames):
        workdir.add(jname, jid=10 + i, status=1, ip4_addr=f"127.0.21.{i + 1}")
    config = write_config(tmp_path / "c.toml", workdir=workdir.root, consul=consul)
    rc, events, stderr = once(config)
    assert rc == 0, stderr
    services = consul.services()
    # The service ID is the jname as is; the name is DNS-safe and distinct.
    assert set(services) == {f"jailsyncd-{j}" for j in jnames}
    names = {services[f"jailsyncd-{j}"]["Service"] for j in jnames}
    assert len(names) == len(jnames)
    assert all(set(n) <= DNS_SAFE and 0 < len(n) <= 63 and not n.startswith("-") and not n.endswith("-") for n in names)
    assert services["jailsyncd-Ünïcødé"]["Service"] == "n-c-d"
    assert services["jailsyncd-日本"]["Service"] == "x"
    for i, jname in enumerate(jnames):
        svc = services[f"jailsyncd-{jname}"]
        assert svc["Meta"]["cbsd-jname"] == jname
        # Consul's catalog and DNS have each of them, under its sanitised name.
        assert_dns(consul, svc["Service"], [f"127.0.21.{i + 1}"])
    assert_stable(config)
    for jname in jnames:  # deregistration URL-encodes the IDs ('?', '#', '%', ' ', unicode)
        workdir.stop(jname)
    rc, events, stderr = once(config)
    assert rc == 0, stderr
    assert finished(events)["deregistered"] == len(jnames)
    assert consul.services() == {}


def test_jails_mapping_to_one_dns_name_stay_distinct(consul: ConsulServer, tmp_path: Path, workdir: Workdir) -> None:
    long_a, long_b = "a" * 63 + "_one", "a" * 63 + "_two"  # equal in their first 63 characters
    layout = {
        long_a: "127.0.22.1",
        long_b: "127.0.22.2",
        "日本": "127.0.22.3",  # both map to "x"
        "中文": "127.0.22.4",
        "x": "127.0.22.5",  # ... which is this jail's own name, so it keeps it
        "www1": "127.0.22.6",  # one name on purpose: both answer
        "www2": "127.0.22.7",
    }
    for i, (jname, ip) in enumerate(layout.items()):
        tags = "consul.name=www" if jname.startswith("www") else None
        workdir.add(jname, jid=20 + i, status=1, ip4_addr=ip, tags=tags)
    config = write_config(tmp_path / "c.toml", workdir=workdir.root, consul=consul)
    rc, events, stderr = once(config)
    assert rc == 0, stderr
    names = {sid.removeprefix("jailsyncd-"): s["Service"] for sid, s in consul.services().items()}
    assert names["x"] == "x" and names["www1"] == names["www2"] == "www"
    for jname in (long_a, long_b, "日本", "中文"):
        assert names[jname] != dns_label(jname)
        assert len(names[jname]) <= 63 and set(names[jname]) <= DNS_SAFE
        assert [e["kind"] for e in of(events, "jail_note", jname)] == ["name_collision"]
    accidental = [names[j] for j in (long_a, long_b, "日本", "中文", "x")]
    assert len(set(accidental)) == len(accidental)
    for jname, ip in layout.items():
        if not jname.startswith("www"):
            assert_dns(consul, names[jname], [ip])
    assert_dns(consul, "www", ["127.0.22.6", "127.0.22.7"])
    assert_stable(config)


def test_jnames_differing_only_in_case_both_reach_the_catalog(consul: ConsulServer, tmp_path: Path, workdir: Workdir) -> None:
    workdir.add("Web1", jid=1, status=1, ip4_addr="127.0.23.1")
    workdir.add("web1", jid=2, status=1, ip4_addr="127.0.23.2")
    config = write_config(tmp_path / "c.toml", workdir=workdir.root, consul=consul)
    rc, events, stderr = once(config)
    assert rc == 0, stderr
    agent = consul.services()
    # Consul's catalog compares service IDs without case: the case-twin gets a suffix.
    assert sorted(s["Meta"]["cbsd-jname"] for s in agent.values()) == ["Web1", "web1"]
    assert "jailsyncd-web1" in agent and [sid for sid in agent if sid.startswith("jailsyncd-Web1~")]
    node = f"/v1/catalog/node/{consul.get('/v1/agent/self')['Config']['NodeName']}"
    wait_for(lambda: set(consul.get(node)["Services"]) & set(agent), timeout=5, what="the agent's catalog sync")
    time.sleep(0.3)  # both were synced in the same anti-entropy pass
    for sid, svc in agent.items():
        in_catalog = consul.get(f"/v1/catalog/service/{svc['Service']}")
        assert [e["ServiceAddress"] for e in in_catalog] == [svc["Address"]], f"{sid} ({svc['Service']}) is not in Consul's catalog"


def test_a_case_twin_taking_the_plain_id_stays_in_the_catalog(consul: ConsulServer, tmp_path: Path, workdir: Workdir) -> None:
    """When ``web1`` is destroyed, its case-twin ``Web1`` takes the plain ID
    ``jailsyncd-Web1`` (``naming.service_ids``). It was registered before
    ``jailsyncd-web1`` was deregistered (registrations first): the catalog, which
    compares IDs without case, took the deregistration for the new entry, and Web1 was
    on the agent but missing from the catalog (DNS, health, other hosts) until the
    agent's next anti-entropy pass, a minute or more later. A deregistration whose ID
    equals, but for case, one this cycle registers is now sent first."""
    workdir.add("Web1", jid=1, status=1, ip4_addr="127.0.23.11")
    workdir.add("web1", jid=2, status=1, ip4_addr="127.0.23.12")
    config = write_config(tmp_path / "c.toml", workdir=workdir.root, consul=consul)
    rc, events, stderr = once(config)
    assert rc == 0, stderr
    workdir.destroy("web1")
    rc, events, stderr = once(config)
    assert rc == 0, stderr
    assert set(consul.services()) == {"jailsyncd-Web1"}
    node = f"/v1/catalog/node/{consul.get('/v1/agent/self')['Config']['NodeName']}"

    def in_catalog() -> dict:
        return {sid: svc["Address"] for sid, svc in consul.get(node)["Services"].items() if sid.startswith("jailsyncd-")}

    # The agent writes a registration to the catalog at once; anti-entropy (which would
    # repair it) runs only about once a minute on this dev agent.
    wait_for(lambda: in_catalog() == {"jailsyncd-Web1": "127.0.23.11"}, timeout=5, what="Web1 in the catalog under jailsyncd-Web1")


def test_meta_beyond_consul_limits_is_dropped_not_rejected(consul: ConsulServer, tmp_path: Path, workdir: Workdir) -> None:
    many_pairs = ",".join(f"k{i:03}=v{i}" for i in range(100))
    key128, key129 = "k" * 128, "k" * 129
    workdir.add("longval", jid=1, status=1, ip4_addr="127.0.24.1", tags="team=" + "t" * 600 + ",env=prod")
    workdir.add("manypairs", jid=2, status=1, ip4_addr="127.0.24.2", tags=many_pairs)
    workdir.add("keys", jid=3, status=1, ip4_addr="127.0.24.3", tags=f"{key128}=ok,{key129}=no,bad.key=no,consul-x=no,=empty")
    workdir.add("reserved", jid=4, status=1, ip4_addr="127.0.24.4", tags="jailsyncd-owner=evil,cbsd-jname=evil,external-source=evil")
    workdir.add("longfqdn", jid=5, status=1, ip4_addr="127.0.24.5", host_hostname="h" * 600)
    workdir.add("val512", jid=6, status=1, ip4_addr="127.0.24.6", tags="edge=" + "v" * 512)
    config = write_config(tmp_path / "c.toml", workdir=workdir.root, consul=consul)
    rc, events, stderr = once(config)
    assert rc == 0, stderr
    services = {sid.removeprefix("jailsyncd-"): s for sid, s in consul.services().items()}
    assert set(services) == {"longval", "manypairs", "keys", "reserved", "longfqdn", "val512"}
    # A value over 512 characters: that pair is dropped and noted, the rest is kept.
    assert services["longval"]["Meta"]["env"] == "prod" and "team" not in services["longval"]["Meta"]
    assert any("team" in n["detail"] for n in of(events, "jail_note", "longval"))
    # 100 pairs: Consul's 64 in all, jailsyncd's own first, the rest dropped and noted.
    meta = services["manypairs"]["Meta"]
    assert len(meta) == 64 and OUR_META <= set(meta)
    assert {k for k in meta if k not in OUR_META} == {f"k{i:03}" for i in range(64 - len(OUR_META))}
    dropped = [n for n in of(events, "jail_note", "manypairs") if n["kind"] == "meta_dropped"]
    assert len(dropped) == 100 - (64 - len(OUR_META))
    # Keys: 128 characters is the limit; invalid and consul- keys are ignored and noted.
    assert services["keys"]["Meta"][key128] == "ok"
    assert not {key129, "bad.key", "consul-x", ""} & set(services["keys"]["Meta"])
    assert len(of(events, "jail_note", "keys")) == 4
    # Users cannot override jailsyncd's own keys (ownership stays intact).
    assert services["reserved"]["Meta"]["jailsyncd-owner"] == "node1"
    assert services["reserved"]["Meta"]["cbsd-jname"] == "reserved"
    assert services["reserved"]["Meta"]["external-source"] == "cbsd"
    # host_hostname over 512 characters: no cbsd-fqdn, noted.
    assert "cbsd-fqdn" not in services["longfqdn"]["Meta"]
    assert [n["kind"] for n in of(events, "jail_note", "longfqdn")] == ["meta_dropped"]
    assert services["val512"]["Meta"]["edge"] == "v" * 512
    assert_stable(config)


def test_non_ascii_meta_value_over_512_bytes_is_dropped_not_rejected(consul: ConsulServer, tmp_path: Path, workdir: Workdir) -> None:
    workdir.add("uval", jid=1, status=1, ip4_addr="127.0.25.1", tags="team=" + "é" * 300 + ",env=prod")
    workdir.add("ufqdn", jid=2, status=1, ip4_addr="127.0.25.2", host_hostname="é" * 300)
    config = write_config(tmp_path / "c.toml", workdir=workdir.root, consul=consul)
    rc, events, stderr = once(config)
    services = consul.services()
    assert set(services) == {"jailsyncd-uval", "jailsyncd-ufqdn"}, stderr.strip().splitlines()[-1]
    assert rc == 0
    assert services["jailsyncd-uval"]["Meta"]["env"] == "prod" and "team" not in services["jailsyncd-uval"]["Meta"]
    assert "cbsd-fqdn" not in services["jailsyncd-ufqdn"]["Meta"]


def test_tags_column_with_hundreds_of_items(consul: ConsulServer, tmp_path: Path, workdir: Workdir) -> None:
    items = [f"tag{i:03}" for i in range(500)]
    column = ",".join(items + items[:50] + [" spaced ", "", "0", "ünï", "a/b:c"])  # duplicates, blanks, oddities
    workdir.add("tagged", jid=1, status=1, ip4_addr="127.0.26.1", tags=column)
    config = write_config(tmp_path / "c.toml", workdir=workdir.root, consul=consul)
    rc, events, stderr = once(config)
    assert rc == 0, stderr
    tags = consul.services()["jailsyncd-tagged"]["Tags"]
    assert sorted(tags) == sorted({"jail", "spaced", "ünï", "a/b:c", *items})
    assert_stable(config)


def test_duplicate_ips_across_jails_are_all_registered(consul: ConsulServer, tmp_path: Path, workdir: Workdir) -> None:
    workdir.add("one", jid=1, status=1, ip4_addr="127.0.27.1/24")
    workdir.add("two", jid=2, status=1, ip4_addr="em0#127.0.27.1")
    workdir.add("three", jid=3, status=1, ip4_addr="127.0.27.1,127.0.27.2", tags="consul.name=shared")
    workdir.add("four", jid=4, status=1, ip4_addr="127.0.27.1", tags="consul.name=shared")
    config = write_config(tmp_path / "c.toml", workdir=workdir.root, consul=consul)
    rc, events, stderr = once(config)
    assert rc == 0, stderr
    services = consul.services()
    assert {sid: s["Address"] for sid, s in services.items()} == {f"jailsyncd-{j}": "127.0.27.1" for j in ("one", "two", "three", "four")}
    assert not [e for e in events if e["event"] == "jail_note"]
    assert_dns(consul, "one", ["127.0.27.1"])
    assert_dns(consul, "two", ["127.0.27.1"])
    wait_for(lambda: len(consul.get("/v1/catalog/service/shared")) == 2, timeout=5, what="both instances of shared")
    assert set(dns_a(consul, "shared")) == {"127.0.27.1"}
    assert_stable(config)


def test_addresses_no_jail_can_have_are_skipped_and_nameless_rows_ignored(consul: ConsulServer, tmp_path: Path, workdir: Workdir) -> None:
    """Issue 10, items 1 and 15. An IPv4-mapped IPv6 address makes Consul answer 500 to
    the whole registration; multicast and broadcast addresses were registered (and
    pinged); a row whose jname is NULL was registered as the jail ``None``. Each
    unusable address is dropped with a reason and the jail keeps its other addresses;
    a jail left with none is skipped; a nameless row is reported, never registered."""
    workdir.add("mapped", jid=1, status=1, ip4_addr="127.0.16.1,::ffff:127.0.16.2")
    workdir.add("onlymapped", jid=2, status=1, ip4_addr="::ffff:127.0.16.3")
    workdir.add("mcast", jid=3, status=1, ip4_addr="224.0.0.1,ff02::1")
    workdir.add("bcast", jid=4, status=1, ip4_addr="127.0.16.255/24,255.255.255.255")
    workdir.add("linklocal", jid=5, status=1, ip4_addr="em0#fe80::5/64,127.0.16.5")
    workdir.add("placeholder", jid=6, status=1, ip4_addr="127.0.16.6")
    with sqlite3.connect(workdir.node_db) as conn:  # a NULL jname, as a hand edit or broken tool leaves it
        conn.execute("UPDATE jails SET jname = NULL WHERE jname = 'placeholder'")
    conn.close()
    config = write_config(tmp_path / "c.toml", workdir=workdir.root, consul=consul)
    rc, events, stderr = once(config)
    assert rc == 0, stderr
    services = consul.services()
    assert set(services) == {"jailsyncd-mapped", "jailsyncd-linklocal"}
    assert services["jailsyncd-mapped"]["Address"] == "127.0.16.1"
    assert {v["Address"] for v in services["jailsyncd-mapped"]["TaggedAddresses"].values()} == {"127.0.16.1"}
    assert services["jailsyncd-linklocal"]["Address"] == "127.0.16.5"
    assert {v["Address"] for v in services["jailsyncd-linklocal"]["TaggedAddresses"].values()} == {"127.0.16.5"}
    for jail, reason in (("onlymapped", "IPv4-mapped"), ("mcast", "multicast"), ("bcast", "broadcast")):
        [skip] = of(events, "jail_skipped", jail)
        assert skip["reason"] == "unaddressable" and reason in skip["detail"], skip
    [note] = of(events, "jail_note", "mapped")
    assert note["kind"] == "address_rejected" and "::ffff:127.0.16.2" in note["detail"] and "write 127.0.16.2" in note["detail"]
    [nameless] = [e for e in events if e["event"] == "jail_skipped" and e["reason"] == "invalid_row"]
    assert "NULL or empty jname" in nameless["detail"]
    assert not any(e.get("jail") == "None" for e in events)
    assert_stable(config)


def test_a_jail_named_consul_never_joins_consuls_own_service(consul: ConsulServer, tmp_path: Path, workdir: Workdir) -> None:
    """A jail called ``consul`` (a common name for the jail that runs Consul), or one
    renamed so by ``consul.name=`` in its tags column, registered as service ``consul``
    joins Consul's own service: ``consul.service.consul`` (how clients find the
    servers) then answers the jail's address too. Such a jail is skipped with reason
    ``reserved_name`` and a detail saying how to name it; its other jails are not
    affected. Consul's name comparisons ignore case, so ``Consul`` is the same name."""
    workdir.add("consul", jid=1, status=1, ip4_addr="127.0.28.1")
    workdir.add("web", jid=2, status=1, ip4_addr="127.0.28.2", tags="consul.name=Consul")
    workdir.add("renamed", jid=3, status=1, ip4_addr="127.0.28.3")
    with sqlite3.connect(workdir.node_db) as conn:  # the jail 'consul', named otherwise by its tags
        conn.execute("UPDATE jails SET jname = 'consul2', tags = 'consul.name=consul-jail' WHERE jname = 'renamed'")
    conn.close()
    servers = dns_a(consul, "consul")
    config = write_config(tmp_path / "c.toml", workdir=workdir.root, consul=consul)
    rc, events, stderr = once(config)
    assert rc == 0, stderr
    assert set(consul.services()) == {"jailsyncd-consul2"}
    assert consul.services()["jailsyncd-consul2"]["Service"] == "consul-jail"
    for jail in ("consul", "web"):
        [skip] = of(events, "jail_skipped", jail)
        assert skip["reason"] == "reserved_name" and "consul.name=" in skip["detail"], skip
    assert dns_a(consul, "consul") == servers
    assert_stable(config)
