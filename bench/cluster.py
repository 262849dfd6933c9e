"""What one CBSD host costs a real Consul cluster, in both modes (issue 14): one command.

    scripts/setup && .venv/bin/python bench/cluster.py [--hosts 3] [--jails 20,200] [--foreign 3000] [--noops 3] [--write]

Starts 3 Consul servers and ``--hosts`` client agents on 127.0.0.1 with private ports
(``testing.devconsul.ConsulCluster``, ``raft_multiplier = 1``), registers
``--foreign`` external nodes of other owners (the rest of the fleet), then for each
mode and each jail count gives every simulated host a CBSD workdir (``sample.Workdir``,
jails on 127.3.x.y, health off: nothing is pinged) and a config pointing at its own
client agent, and measures with ``jailsyncd once`` (a subprocess, as a user runs it):

- cold: raft writes (the leader's ``last_log_index``) until the catalog holds the host;
- no-op cycles: HTTP requests and bytes jailsyncd read (``cycle_finished``), the RPCs
  the host's client agent sent to the servers meanwhile (its cumulative
  ``consul_client_rpc`` counter, Prometheus format) and raft writes;
- agent mode, a host reboot: its client agent stopped (SIGTERM) and started again,
  with Consul's client default (``leave_on_terminate = true``) and with
  ``leave_on_terminate = false``: raft writes until the catalog holds its services
  again.

Then it prints the table and the model for 1,000 hosts x 200 jails (docs/scaling.md)
and, with ``--write``, puts both into bench/RESULTS.md (its "Cluster" section).
Every wait has a deadline; every address is on loopback.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from testing.devconsul import ClusterAgent, ConsulCluster, wait_for  # noqa: E402
from testing.sample import Workdir  # noqa: E402

RESULTS = REPO / "bench" / "RESULTS.md"
START, END = "<!-- cluster.py:start -->", "<!-- cluster.py:end -->"
FLEET_HOSTS, FLEET_JAILS, INTERVAL = 1000, 200, 30.0


def consul_binary() -> str:
    out = subprocess.run([str(REPO / "scripts" / "get-consul")], check=True, capture_output=True, text=True)
    return out.stdout.strip().splitlines()[-1]


@dataclass
class Host:
    name: str
    mode: str
    jails: int
    agent: ClusterAgent
    config: Path


def make_host(tmp: Path, index: int, mode: str, jails: int, agent: ClusterAgent) -> Host:
    name = f"{mode}-j{jails}-h{index}"
    workdir = Workdir.create(tmp / name, nodename=name)
    base = 10 * index + (0 if mode == "agent" else 5) + (jails // 100)
    for j in range(jails):
        workdir.add(f"{name}-{j:03}", jid=j + 1, status=1, ip4_addr=f"127.3.{base % 250}.{j + 1}")
    mode_line = 'mode = "catalog"' if mode == "catalog" else ""
    config = tmp / f"{name}.toml"
    config.write_text(
        f'[host]\nname = "{name}"\n\n[cbsd]\nworkdir = "{workdir.root}"\n\n'
        f'[consul]\naddress = "{agent.address}"\n{mode_line}\n\n[health]\nenabled = false\n'
    )
    return Host(name, mode, jails, agent, config)


def once(host: Host) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONSUL_")}
    proc = subprocess.run(
        [sys.executable, "-m", "jailsyncd", "--config", str(host.config), "--log-format", "json", "once"],
        capture_output=True, text=True, env=env, timeout=120, cwd=str(REPO),
    )
    events = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    done = [e for e in events if e.get("event") == "cycle_finished"]
    if proc.returncode != 0 or not done:
        raise RuntimeError(f"once for {host.name} exited {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}")
    return done[-1]


def client_rpcs(agent: ClusterAgent) -> int:
    """RPCs this client agent has sent to the servers since it started."""
    with urllib.request.urlopen(f"http://{agent.address}/v1/agent/metrics?format=prometheus", timeout=10) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith("consul_client_rpc "):
                return int(float(line.split()[1]))
    return 0


def in_catalog(cluster: ConsulCluster, host: Host) -> int:
    """How many of the host's services a server's catalog holds."""
    server = next(s for s in cluster.server_list if s.answers())
    if host.mode == "agent":
        answer = server.get(f"/v1/catalog/node-services/{host.agent.name}")
        return sum(1 for s in answer.get("Services") or [] if (s.get("Meta") or {}).get("jailsyncd-owner") == host.name)
    return len(server.get(f"/v1/catalog/nodes?node-meta=jailsyncd-owner:{host.name}"))


def settle(cluster: ConsulCluster, quiet: float = 1.5, timeout: float = 30) -> None:
    """Until the raft index stays put for ``quiet`` seconds (agents' own syncs done)."""
    deadline = time.monotonic() + timeout
    last, since = cluster.raft_index(), time.monotonic()
    while time.monotonic() - since < quiet and time.monotonic() < deadline:
        time.sleep(0.2)
        now = cluster.raft_index()
        if now != last:
            last, since = now, time.monotonic()


def add_foreign(cluster: ConsulCluster, count: int) -> None:
    server = cluster.server_list[0]
    ops = []
    for i in range(count):
        name = f"fleet{i:05}"
        meta = {"jailsyncd-owner": f"fleet-host{i // 200}", "external-node": "true", "cbsd-jname": f"j{i}"}
        ops.append({"Node": {"Verb": "set", "Node": {"Node": name, "Address": f"10.7.{i // 250 % 250}.{i % 250}", "Meta": meta}}})
        ops.append({"Service": {"Verb": "set", "Node": name, "Service": {"ID": f"jailsyncd-j{i}", "Service": f"web{i}", "Port": 80, "Tags": ["jail"]}}})
    for start in range(0, len(ops), 64):
        server.put("/v1/txn", ops[start : start + 64])


def measure(cluster: ConsulCluster, hosts: list[Host], noops: int) -> dict:
    settle(cluster)
    before = cluster.raft_index()
    for host in hosts:
        once(host)
    for host in hosts:
        wait_for(lambda: in_catalog(cluster, host) == host.jails, timeout=60, what=f"{host.name} in the catalog")
    settle(cluster)
    cold = (cluster.raft_index() - before) / len(hosts)
    reqs, sizes, rpcs, writes = [], [], [], []
    raft_before = cluster.raft_index()
    for _ in range(noops):
        for host in hosts:
            rpc0 = client_rpcs(host.agent)
            s = once(host)
            rpcs.append(client_rpcs(host.agent) - rpc0)
            reqs.append(s["requests"])
            sizes.append(s["bytes_read"])
            writes.append(s["writes"])
    return {
        "cold_raft_per_host": cold,
        "requests": statistics.median(reqs),
        "bytes": statistics.median(sizes),
        "rpcs": statistics.median(rpcs),
        "writes": sum(writes),
        "noop_raft": cluster.raft_index() - raft_before,
    }


def reboot(cluster: ConsulCluster, host: Host, leave: bool | None) -> float:
    """Raft writes for one agent-mode host whose client agent stops and starts again."""
    agent = host.agent
    if leave is not None:
        agent.extra_hcl = f"leave_on_terminate = {'true' if leave else 'false'}\n" + "telemetry { prometheus_retention_time = \"1m\" }\n"
        agent.write_config(cluster.root)  # type: ignore[arg-type]
        agent.stop()
        agent.start()
        wait_for(agent.answers, timeout=30, what="the agent back")
        wait_for(lambda: in_catalog(cluster, host) == host.jails, timeout=60, what="services back")
    settle(cluster)
    before = cluster.raft_index()
    agent.stop()
    agent.start()
    wait_for(agent.answers, timeout=30, what="the agent back")
    wait_for(lambda: in_catalog(cluster, host) == host.jails, timeout=60, what="services back")
    settle(cluster)
    return float(cluster.raft_index() - before)


def fmt_bytes(n: float) -> str:
    return f"{n / 1024:,.1f} KiB" if n < 1024 * 1024 else f"{n / 1024 / 1024:,.1f} MiB"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hosts", type=int, default=3, help="simulated CBSD hosts (one client agent each)")
    ap.add_argument("--jails", default="20,200", help="jails per host, comma-separated")
    ap.add_argument("--foreign", type=int, default=3000, help="external nodes of other owners in the catalog")
    ap.add_argument("--noops", type=int, default=3)
    ap.add_argument("--write", action="store_true", help="put the results into bench/RESULTS.md")
    opts = ap.parse_args()
    sizes = [int(x) for x in opts.jails.split(",") if x]
    started = time.monotonic()
    cluster = ConsulCluster(consul_binary(), servers=3, clients=opts.hosts, client_hcl='telemetry { prometheus_retention_time = "1m" }').start()
    rows: list[tuple[str, int, dict]] = []
    reboots: dict[str, float] = {}
    try:
        add_foreign(cluster, opts.foreign)
        with tempfile.TemporaryDirectory(prefix="jailsyncd-bench-cluster-") as tmp:
            made: dict[tuple[str, int], list[Host]] = {}
            for mode in ("agent", "catalog"):
                for jails in sizes:
                    hosts = made[mode, jails] = [make_host(Path(tmp), k, mode, jails, cluster.client_list[k]) for k in range(opts.hosts)]
                    rows.append((mode, jails, measure(cluster, hosts, opts.noops)))
                    print(f"measured {mode} x {jails} jails: {rows[-1][2]}", file=sys.stderr)
            big = max(sizes)
            host = made["agent", big][0]
            reboots["client default (leave_on_terminate = true)"] = reboot(cluster, host, None)
            reboots["leave_on_terminate = false"] = reboot(cluster, host, False)
    finally:
        cluster.stop()
    took = time.monotonic() - started
    text = report(opts, rows, reboots, max(sizes), took)
    print(text)
    if opts.write:
        old = RESULTS.read_text()
        section = f"{START}\n{text}\n{END}"
        if START in old:
            old = old[: old.index(START)] + section + old[old.index(END) + len(END):]
        else:
            old = old.rstrip("\n") + "\n\n" + section + "\n"
        RESULTS.write_text(old)
    return 0


def report(opts, rows, reboots, big: int, took: float) -> str:
    lines = [
        "## Cluster: what one host costs the servers (bench/cluster.py, issue 14)",
        "",
        "```sh",
        f".venv/bin/python bench/cluster.py --hosts {opts.hosts} --jails {opts.jails} --foreign {opts.foreign} --noops {opts.noops}",
        "```",
        "",
        f"Run at {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, took {took:.0f} s: 3 servers + {opts.hosts} client agents on "
        f"127.0.0.1 (Consul 1.8.7, raft_multiplier = 1), {opts.foreign:,} foreign nodes in the catalog, health off. Per host and "
        "no-op cycle (median); requests and bytes as jailsyncd counted them (`cycle_finished`), RPCs from the client agent's "
        "`consul_client_rpc` counter, raft writes from the leader's `last_log_index` (they include Consul's own, such as "
        "the agents' batched coordinate updates, hence a 1 where jailsyncd wrote nothing).",
        "",
        "| mode | jails/host | requests/cycle | bytes/cycle | RPCs to servers/cycle | jailsyncd writes (all no-op cycles) | raft writes meanwhile (any) | raft writes, cold, per host |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for mode, jails, m in rows:
        lines.append(
            f"| {mode} | {jails} | {m['requests']:g} | {fmt_bytes(m['bytes'])} | {m['rpcs']:g} | {m['writes']} | {m['noop_raft']} | {m['cold_raft_per_host']:.0f} |"
        )
    lines += ["", f"Agent mode, one host of {big} jails whose client agent restarts (a reboot), raft writes until the catalog holds it again:", ""]
    for what, writes in reboots.items():
        lines.append(f"- {what}: {writes:.0f}")
    catalog_big = next((m for mode, j, m in rows if mode == "catalog" and j == big), None)
    agent_big = next((m for mode, j, m in rows if mode == "agent" and j == big), None)
    note = "" if big == FLEET_JAILS else f"; bytes scaled linearly from the {big}-jail rows"
    lines += ["", f"Model: {FLEET_HOSTS:,} hosts x {FLEET_JAILS} jails, sync.interval {INTERVAL:g} s{note}:", ""]
    if catalog_big and agent_big:
        scale = FLEET_JAILS / big
        cat_req = 2 + math.ceil(FLEET_JAILS / 64)
        cat_bytes = catalog_big["bytes"] * scale
        lines += [
            f"- agent mode: {agent_big['rpcs'] * FLEET_HOSTS / INTERVAL:g} requests/s and 0 B/s from jailsyncd at the servers "
            "(it reads the local agent only); the agents' own anti-entropy is Consul's cost either way.",
            f"- catalog mode: {cat_req} requests per cycle per host = {cat_req * FLEET_HOSTS / INTERVAL:.0f} requests/s at the servers, "
            f"spread over every server (`stale`), and {fmt_bytes(cat_bytes)} per cycle per host = "
            f"{fmt_bytes(cat_bytes * FLEET_HOSTS / INTERVAL)}/s; independent of the foreign nodes.",
        ]
    for what, writes in reboots.items():
        lines.append(f"- a fleet-wide reboot, agent mode, {what}: {writes:,.0f} raft writes per host (measured at {big} jails), "
                     f"{writes * FLEET_HOSTS:,.0f} in all")
    lines.append(
        f"- a fleet-wide reboot, catalog mode: 0 raft writes with health off (external nodes outlive the host); with health on "
        f"`catalog.critical_on_stop` and the first round after boot write {2 * math.ceil(FLEET_JAILS / 64)} transactions per host "
        f"({2 * math.ceil(FLEET_JAILS / 64) * FLEET_HOSTS:,} in all; modelled, not measured here)."
    )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
