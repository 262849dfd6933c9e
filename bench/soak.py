"""Soak test: ``jailsyncd run`` against a churning CBSD workdir and a restarting Consul.

    /tmp/venv/bin/python bench/soak.py [--minutes 10] [--seed 1]

Runs the daemon (a subprocess, as ``tests/harness.py``'s ``RunningDaemon`` does) for a
bounded time against a workdir of a pool of 50 jails (127.0.61.x, loopback only) in
which, every few seconds, random jails are created, started, stopped, destroyed or
given another IP; a dev Consul on 127.0.0.1 is stopped and started again every ~60 s
(dev mode: it comes back empty). Health is disabled. Afterwards the churn stops and it
measures how long the daemon takes to make Consul's owned services equal the expected
set (30 s at most). Reports cycles, failed cycles by ``error_kind``, convergence and
the daemon's VmRSS (sampled every 10 s). Not part of CI.
"""

from __future__ import annotations

import argparse
import collections
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from harness import ConsulServer, RunningDaemon, consul_binary, wait_for, write_config  # noqa: E402

from testing.sample import Workdir  # noqa: E402

POOL = [f"j{i:02}" for i in range(50)]
FOREIGN = {"ID": "web1", "Name": "web1", "Address": "192.0.2.1", "Tags": ["theirs"]}


def address(rng: random.Random) -> str:
    return f"127.0.61.{rng.randint(1, 250)}"


def rss_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def expected(model: dict[str, tuple[bool, str]]) -> dict[str, str]:
    return {f"jailsyncd-{j}": ip for j, (running, ip) in model.items() if running}


def owned(consul: ConsulServer) -> dict[str, str]:
    return {
        sid: s["Address"]
        for sid, s in consul.services().items()
        if sid.startswith("jailsyncd-") and (s.get("Meta") or {}).get("jailsyncd-owner") == "node1"
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--churn-every", type=float, default=3.0, help="seconds between churn rounds")
    ap.add_argument("--consul-every", type=float, default=60.0, help="seconds between Consul restarts")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="jailsyncd-soak-"))
    consul = ConsulServer(consul_binary()).start()
    consul.put("/v1/agent/service/register", FOREIGN)
    daemon: RunningDaemon | None = None
    counts: collections.Counter = collections.Counter()
    rss: list[tuple[float, int]] = []
    try:
        workdir = Workdir.create(tmp / "cbsd")
        model: dict[str, tuple[bool, str]] = {}  # jname -> (running, ip4_addr)
        jid = 0
        for jname in POOL[:35]:
            jid += 1
            running = rng.random() < 0.7
            ip = address(rng)
            workdir.add(jname, jid=jid if running else 0, status=1 if running else 0, ip4_addr=ip)
            model[jname] = (running, ip)
        config = write_config(
            tmp / "jailsyncd.toml", workdir=workdir.root, consul=consul,
            extra='[sync]\ninterval = "5s"\njitter = "0s"\nbackoff_max = "5s"\nmax_deregistrations = 1000\n',
        )
        assert "enabled = false" in config.read_text()
        daemon = RunningDaemon(config, tmp)
        wait_for(lambda: daemon.finished_cycles() >= 1, timeout=30, what="the daemon's first cycle")
        started = time.monotonic()
        end = started + args.minutes * 60
        next_churn, next_consul, next_rss = started + args.churn_every, started + args.consul_every, started
        while time.monotonic() < end:
            now = time.monotonic()
            if daemon.proc.poll() is not None:
                raise SystemExit(f"daemon exited with {daemon.proc.returncode}; log: {daemon.log_path}")
            if now >= next_rss:
                value = rss_kb(daemon.proc.pid)
                if value is not None:
                    rss.append((now - started, value))
                next_rss += 10
            if now >= next_churn:
                for _ in range(rng.randint(1, 4)):
                    jname = rng.choice(POOL)
                    if jname not in model:
                        jid += 1
                        ip = address(rng)
                        workdir.add(jname, jid=jid, status=1, ip4_addr=ip)
                        model[jname] = (True, ip)
                        counts["create"] += 1
                        continue
                    running, ip = model[jname]
                    op = rng.choice(["toggle", "toggle", "ip", "destroy"])
                    if op == "toggle" and running:
                        workdir.stop(jname)
                        model[jname] = (False, ip)
                        counts["stop"] += 1
                    elif op == "toggle":
                        jid += 1
                        workdir.start(jname, jid=jid)
                        model[jname] = (True, ip)
                        counts["start"] += 1
                    elif op == "ip":
                        ip = address(rng)
                        workdir.set(jname, ip4_addr=ip)
                        model[jname] = (running, ip)
                        counts["ip change"] += 1
                    else:
                        workdir.destroy(jname)
                        del model[jname]
                        counts["destroy"] += 1
                next_churn += args.churn_every
            if now >= next_consul:
                consul.stop()
                time.sleep(3)  # an outage the daemon must ride out
                consul.start()
                consul.put("/v1/agent/service/register", FOREIGN)
                counts["consul restart"] += 1
                next_consul = time.monotonic() + args.consul_every
            time.sleep(0.2)
        # Churn stops: how long until Consul holds exactly the expected set?
        want = expected(model)
        stop_at = time.monotonic()
        converged_after: float | None = None
        while time.monotonic() - stop_at < 30:
            try:
                if owned(consul) == want:
                    converged_after = time.monotonic() - stop_at
                    break
            except Exception:  # noqa: BLE001 - keep polling until the deadline
                pass
            time.sleep(0.2)
        final_rss = rss_kb(daemon.proc.pid)
        if final_rss is not None:
            rss.append((time.monotonic() - started, final_rss))
        foreign_ok = consul.services().get("web1", {}).get("Address") == FOREIGN["Address"]
        alive = daemon.proc.poll() is None
        rc = daemon.stop()
        events = daemon.events()
        finished = sum(1 for e in events if e["event"] == "cycle_finished")
        failed = collections.Counter(e.get("error_kind", "?") for e in events if e["event"] == "cycle_failed")
        crashed = sum(1 for e in events if e["event"] == "cycle_crashed")
        action_failed = sum(1 for e in events if e["event"] == "action_failed")
        deregs = sum(1 for e in events if e["event"] == "service_deregistered")
        regs = sum(1 for e in events if e["event"] == "service_registered")
        rows = [
            ("duration (churn)", f"{args.minutes:g} min"),
            ("churn", ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))),
            ("jails in DB at end / expected services", f"{len(model)} / {len(want)}"),
            ("cycles finished", str(finished)),
            ("cycles failed (by error_kind)", ", ".join(f"{k} {v}" for k, v in sorted(failed.items())) or "0"),
            ("cycles crashed", str(crashed)),
            ("actions failed", str(action_failed)),
            ("services registered / deregistered (log)", f"{regs} / {deregs}"),
            ("daemon alive at end", "yes" if alive else "no"),
            ("daemon exit status on SIGTERM", str(rc)),
            ("converged after churn stopped", f"yes, {converged_after:.1f} s" if converged_after is not None else "NO (30 s)"),
            ("foreign service untouched", "yes" if foreign_ok else "NO"),
            ("VmRSS first / max / last (KiB)", f"{rss[0][1]} / {max(v for _, v in rss)} / {rss[-1][1]}" if rss else "n/a"),
            ("VmRSS samples", str(len(rss))),
        ]
        width = max(len(k) for k, _ in rows)
        print(f"| {'measure'.ljust(width)} | value |")
        print(f"|{'-' * (width + 2)}|-------|")
        for key, value in rows:
            print(f"| {key.ljust(width)} | {value} |")
        return 0 if converged_after is not None and alive and foreign_ok else 1
    finally:
        if daemon is not None:
            daemon.stop()
        consul.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
