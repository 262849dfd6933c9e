"""The walk-through that ``scripts/demo`` runs; see that script for what it shows."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import dns.message
import dns.query
import dns.rdatatype

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # testing/: the repository's helpers

from testing.devconsul import ConsulServer, free_port, wait_for  # noqa: E402
from testing.sample import SAMPLE_DHCP_LEASES, create_sample  # noqa: E402


def step(title: str) -> None:
    print(f"\n=== {title}", flush=True)


def jailsyncd(*args: str, config: Path) -> int:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONSUL_")}
    cmd = [sys.executable, "-m", "jailsyncd", "--config", str(config), "--log-format", "console", *args]
    print("$ jailsyncd --config", config.name, *args, flush=True)
    return subprocess.run(cmd, env=env, stderr=subprocess.STDOUT).returncode


def show_status(base: Path, config: Path) -> None:
    """Start ``jailsyncd run`` with metrics on loopback, wait for its first cycle,
    show ``jailsyncd status``, stop it."""
    service = base / "service.toml"
    service.write_text(config.read_text() + f'\n[metrics]\nlisten = "127.0.0.1:{free_port()}"\n')
    pidfile = base / "jailsyncd.pid"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONSUL_")}
    status_cmd = [sys.executable, "-m", "jailsyncd", "--config", str(service), "status", "--pidfile", str(pidfile)]
    print(f"$ jailsyncd --config {service.name} run --pidfile {pidfile.name} &   (its log: {base / 'service.log'})", flush=True)
    with open(base / "service.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "jailsyncd", "--config", str(service), "run", "--pidfile", str(pidfile)], env=env, stdout=log, stderr=log)
    try:
        def first_cycle_done() -> bool:
            out = subprocess.run([*status_cmd, "--json"], env=env, capture_output=True, text=True)
            if out.returncode != 0:
                return False
            state = json.loads(out.stdout)
            health = state.get("health")
            return state.get("last_cycle") is not None and (health is None or health["last_round_at"] is not None)

        wait_for(first_cycle_done, timeout=20, what="the service's first cycle")
        print(f"$ jailsyncd --config {service.name} status --pidfile {pidfile.name}", flush=True)
        subprocess.run(status_cmd, env=env)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)


def main() -> int:
    base = Path(tempfile.mkdtemp(prefix="jailsyncd-demo-"))
    consul = ConsulServer(os.environ["CONSUL_BIN"])
    try:
        step(f"A sample CBSD workdir in {base / 'cbsd'} (jails table of var/db/local.sqlite)")
        workdir = create_sample(base / "cbsd")
        out = subprocess.run(
            [sys.executable, "-c", (
                "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]);"
                "print(f\"{'jname':<10} {'jid':>6} {'status':>6} {'emulator':<8} {'ip4_addr':<44} tags\");"
                "[print(f'{r[0]:<10} {r[1]:>6} {r[2]:>6} {r[3]:<8} {r[4]:<44} {r[5]}') for r in "
                "c.execute('select jname,jid,status,emulator,ip4_addr,tags from jails')]"
            ), str(workdir.node_db)],
            capture_output=True, text=True, check=True,
        )
        print(out.stdout, end="")

        step("A dev Consul agent on loopback")
        consul.start()
        print(f"consul agent -dev listening on http://{consul.address}, DNS on 127.0.0.1:{consul.dns_port}")
        config = base / "jailsyncd.toml"
        # Health pings need root (a raw ICMP socket); the sample's jails all have
        # loopback addresses, so no probe leaves this machine.
        health = os.geteuid() == 0
        if not health:
            print("(not root: health checks are off in this demo; run it as root to see the ping checks)")
        config.write_text(
            f'[host]\nname = "node1"\n\n[cbsd]\nworkdir = "{workdir.root}"\n\n[consul]\naddress = "{consul.address}"\n\n'
            f"[health]\nenabled = {'true' if health else 'false'}\n\n"
            # Address discovery (on by default) finds vnet1's own dhclient lease; win10's
            # comes from the host's dnsmasq file. Both are loopback addresses.
            f'[sync]\ndhcp_leases = ["{workdir.root / SAMPLE_DHCP_LEASES}"]\n'
        )

        step("What one cycle would change (dry run)")
        jailsyncd("plan", config=config)
        step("One reconcile cycle")
        rc = jailsyncd("once", config=config)
        if rc != 0:
            print(f"jailsyncd once exited with {rc}", file=sys.stderr)
            return rc

        step("What Consul now holds (GET /v1/agent/services)")
        for sid, svc in sorted(consul.services().items()):
            port = f":{svc['Port']}" if svc["Port"] else ""
            found = svc["Meta"].get("cbsd-address-source")
            source = f"  (address from {found})" if found else ""
            print(f"{sid:<22} {svc['Service']:<10} {svc['Address']}{port:<6} tags={','.join(sorted(svc['Tags']))}{source}")
        print(json.dumps(consul.services()["jailsyncd-db1"], indent=2))
        if health:
            step("Health checks jailsyncd writes (GET /v1/agent/checks)")
            for check in sorted(consul.get("/v1/agent/checks").values(), key=lambda c: c["CheckID"]):
                print(f"{check['CheckID']:<30} {check['Status']:<9} {check['Output'][:70]}")

        step("Consul DNS: www.service.consul (www1 and www2 share it via consul.name=www)")
        for name in ("www.service.consul", "web1.service.consul"):
            answer = dns.query.udp(dns.message.make_query(name, dns.rdatatype.A), "127.0.0.1", port=consul.dns_port, timeout=5)
            print(f"{name}: {sorted(r.address for rrset in answer.answer for r in rrset)}")

        step("A second cycle: nothing to write")
        jailsyncd("once", config=config)

        step("The service: jailsyncd run in the background, then jailsyncd status")
        show_status(base, config)

        step("Catalog mode, the hook scripts' layout: one external node per jail, service 'jail'")
        jailsyncd("purge", "--yes", config=config)
        catalog = base / "catalog.toml"
        catalog.write_text(
            config.read_text().replace('[health]\nenabled = true', '[health]\nenabled = false')
            + '\n[catalog]\nlayout = "article"\nhost_tag = "node1.my.domain"\n'
        )
        catalog.write_text(catalog.read_text().replace("[consul]\n", '[consul]\nmode = "catalog"\n'))
        jailsyncd("once", config=catalog)
        print("GET /v1/catalog/services:", json.dumps({k: v for k, v in consul.get("/v1/catalog/services").items() if k == "jail"}))
        name = "db1.example.org.node.consul"
        answer = dns.query.udp(dns.message.make_query(name, dns.rdatatype.A), "127.0.0.1", port=consul.dns_port, timeout=5)
        print(f"{name}: {sorted(r.address for rrset in answer.answer for r in rrset)}")
        return 0
    finally:
        consul.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
