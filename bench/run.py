"""jailsyncd's benchmark: one command, one table (issues 7 and 13).

    scripts/setup && .venv/bin/python bench/run.py [--sizes 100,1000,5000] [--modes agent,catalog]

For each size N it builds a CBSD workdir of N environments (``workload.py``: bhyve
VMs with per-VM DBs, multi-IP and IPv6 jails, stopped and DHCP ones), starts real
Consul dev agents on loopback (``scripts/get-consul``), and measures, per mode
(``agent``, ``catalog``) and per health setting:

- cold converge: empty Consul until the catalog shows every service, against Consul's
  own limit for the mode (a minimal keep-alive client sending jailsyncd's exact
  payloads: agent API one by one, or ``/v1/txn`` in batches of 64) and, in agent
  mode, against the naive hook approach (one ``curl`` per jail);
- steady state: no-op cycles run in this process (``Reconciler.cycle``, built exactly
  as ``jailsyncd once`` builds it): wall and CPU time, HTTP requests, writes, and
  whether Consul's raft indexes moved;
- ``jailsyncd run`` as a subprocess with jailsyncd's default settings (issue 13):
  its idle cost (catalog writes, CPU % of one core, and the no-op cycles it ran or
  skipped, as its own log reports them); CBSD change -> Consul (a jail stopped,
  started, added in the WAL DB until the catalog shows it); Consul-side drift (an
  entry deregistered or edited by hand through the agent or catalog API until Consul
  holds the right one again); its peak RSS (``VmHWM``);
- a health round: N addresses pinged by jailsyncd's ``Prober`` with 10% down, inside
  a private network namespace; and, with health on, whether a steady round writes.

Health on runs entirely inside a private network namespace (``testing.devnet``):
90% of the jails' addresses are on its ``lo``, 10% have no route. Health off uses
127.1.x.y addresses on loopback. No packet ever leaves 127.0.0.0/8 or a namespace
created here.

Every Consul phase gets a fresh dev agent (same binary, same flags), so each contender
starts from the same empty Consul. Every wait has a deadline; ``--budget`` bounds the
whole run (phases past it are reported as skipped). Each row with a target shows it,
and whether it is met; ``RESULTS.md`` is rewritten whole, except the section that
``bench/cluster.py --write`` keeps there.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shlex
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(REPO))

import baselines  # noqa: E402
import workload  # noqa: E402

from jailsyncd import settings as settings_module  # noqa: E402
from testing.devconsul import ConsulServer  # noqa: E402
from testing.devnet import NetNS, available as netns_available  # noqa: E402

DEFAULT_SIZES = (100, 1000, 5000)
TARGET_N = 1000
def not_built(mode: str) -> str:
    return f"n/a ({mode} mode not built yet)"


# -- results ----------------------------------------------------------------------------


@dataclass
class Row:
    n: int
    mode: str
    health: str
    measure: str
    value: str
    baseline: str = "—"
    ratio: str = "—"
    target: str = "—"
    met: str = "—"
    notes: str = ""
    #: Raw numbers for tests and for the target summary.
    data: dict[str, Any] = field(default_factory=dict)


HEADER = ("N", "mode", "health", "measurement", "jailsyncd", "baseline", "ratio", "target", "met", "notes")


def render(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for r in rows:
        cells = (f"{r.n:,}", r.mode, r.health, r.measure, r.value, r.baseline, r.ratio, r.target, r.met, r.notes)
        lines.append("| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)


def verdict(ok: bool) -> str:
    return "yes" if ok else "**no**"


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b > 0 else "—"


# -- options and environment -------------------------------------------------------------


@dataclass
class Options:
    sizes: tuple[int, ...] = DEFAULT_SIZES
    modes: tuple[str, ...] = ("agent", "catalog")
    health: tuple[str, ...] = ("off", "on")
    health_max: int = 1000
    noops: int = 5
    #: Trials of each CBSD change (stopped, started, added).
    changes: int = 10
    #: The daemon's idle window at N = 1,000 (writes, CPU, no-op cycles), and at other N.
    idle: float = 60.0
    idle_other: float = 3.0
    #: Trials of each Consul-side drift, and the largest N they run at.
    drift_trials: int = 10
    drift_max: int = 1000
    #: Deadline of one CBSD change trial (a drift trial adds sync.interval + jitter).
    change_timeout: float = 10.0
    #: Random pause before each trial, seconds (low, high).
    spacing: tuple[float, float] = (1.0, 2.0)
    #: Lines for the daemon's ``[sync]`` section; none: jailsyncd's defaults.
    sync: tuple[str, ...] = ()
    rounds: int = 3
    cold_repeat: int = 3
    cold_repeat_max: int = 1000
    curl: bool = True
    curl_max: int = 1000
    budget: float = 3600.0
    profile: Path | None = None
    consul_bin: str = ""
    started: float = field(default_factory=time.monotonic)

    def left(self) -> float:
        return self.budget - (time.monotonic() - self.started)


def consul_binary() -> str:
    out = subprocess.run([str(REPO / "scripts" / "get-consul")], check=True, capture_output=True, text=True)
    return out.stdout.strip().splitlines()[-1]


def supported_modes() -> tuple[str, ...]:
    """The ``consul.mode`` values this jailsyncd accepts."""
    return tuple(getattr(settings_module, "_MODES", ("agent",)))


def machine(consul_bin: str) -> list[str]:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kb = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    except OSError:
        pass
    consul_version = subprocess.run([consul_bin, "version"], capture_output=True, text=True).stdout.splitlines()[0]
    import sqlalchemy

    git = ["git", "-C", str(REPO)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip() or "unknown"
    dirty = subprocess.run([*git, "status", "--porcelain", "--", "jailsyncd"], capture_output=True, text=True).stdout.strip()

    return [
        f"{cpu}, {os.cpu_count()} cores, {mem_kb // 1024:,} MiB RAM, {platform.system()} {platform.release()} {platform.machine()}",
        f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, SQLAlchemy {sqlalchemy.__version__}, {consul_version} (`-dev`, in memory, on 127.0.0.1)",
        f"jailsyncd at commit {head}" + (" with uncommitted changes in jailsyncd/" if dirty else " (jailsyncd/ unmodified)"),
        f"curl: {baselines.curl_path() or 'not installed (apt-get install curl): the hook baseline is skipped'}",
        f"network namespaces: {netns_available() or 'available'}",
        f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())} (other work on this machine adds noise)",
    ]


# -- jailsyncd in this process ---------------------------------------------------------------


def write_config(path: Path, *, workdir: Path, consul: ConsulServer, mode: str, health: bool) -> Path:
    mode_line = f'mode = "{mode}"\n' if mode != "agent" else ""
    path.write_text(
        f'[host]\nname = "{workload.OWNER}"\n\n[cbsd]\nworkdir = "{workdir}"\n\n'
        f'[consul]\naddress = "{consul.address}"\ntimeout = "30s"\n{mode_line}\n'
        f'[sync]\ninterval = "1h"\njitter = "0s"\n\n'
        f"[health]\nenabled = {'true' if health else 'false'}\n"
    )
    return path


def in_process(config: Path, log_path: Path):
    """A reconciler (and health loop) built exactly as ``jailsyncd once`` builds them."""
    from jailsyncd.app import App, freeze_startup
    from jailsyncd.logs import configure

    configure("json", "info", stream=open(log_path, "a"))  # noqa: SIM115 - lives as long as the run
    settings = settings_module.load_settings(config, env={})
    app = App(settings)
    health = app.health_loop()
    reconciler = app.reconciler(health=True)
    freeze_startup()  # as `once` and `run` do before their first cycle
    return reconciler, health


def timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    wall, cpu = time.monotonic(), time.process_time()
    value = fn()
    return value, time.monotonic() - wall, time.process_time() - cpu


# -- the daemon ----------------------------------------------------------------------


class Daemon:
    """``jailsyncd run`` as a subprocess, JSON logs at debug level into ``log``. Started
    from the calling thread, so inside a namespace when called on its thread."""

    def __init__(self, config: Path, log: Path) -> None:
        self.log = log
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONSUL_")}
        argv = [sys.executable, "-m", "jailsyncd", "--config", str(config), "--log-level", "debug", "run"]
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=str(REPO))

    def mark(self) -> int:
        """How many lines the log has now: ``events(name, mark)`` reads only later ones."""
        return len(self.log.read_text().splitlines())

    def cpu_seconds(self) -> float:
        """User + system CPU time of the daemon so far, every thread (``/proc/<pid>/stat``)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def events(self, name: str, mark: int = 0) -> list[dict]:
        found = []
        for line in self.log.read_text().splitlines()[mark:]:
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict) and obj.get("event") == name:
                found.append(obj)
        return found

    def peak_rss_kb(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        return 0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.02) -> float | None:
    """Seconds until ``predicate()`` holds, or None after ``timeout``."""
    started = time.monotonic()
    while True:
        if predicate():
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            return None
        time.sleep(interval)


# -- one (N, health, mode) scenario ---------------------------------------------------------


@contextmanager
def fresh_consul(opts: Options, netns: NetNS | None) -> Iterator[ConsulServer]:
    server = ConsulServer(opts.consul_bin, netns=netns).start()
    try:
        settle(server)
        yield server
    finally:
        server.stop()


def settle(consul: ConsulServer, quiet: float = 1.0, timeout: float = 20.0) -> None:
    """Wait until a fresh agent's own start-up writes (its node, serfHealth) are done:
    the raft indexes stay put for ``quiet`` seconds."""
    deadline = time.monotonic() + timeout
    last, since = baselines.index(consul), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = baselines.index(consul)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return
    raise TimeoutError(f"Consul's raft indexes did not settle within {timeout:g}s")


def cold_converge(opts: Options, load: workload.Workload, tmp: Path, mode: str, health: bool, netns: NetNS | None, consul: ConsulServer, tag: str):
    """One cold converge by jailsyncd (in this process) into the empty ``consul``:
    (reconciler, health loop, captured writes, cycle result, seconds, CPU seconds, catch-up seconds)."""
    config = write_config(tmp / f"{tag}.toml", workdir=load.workdir.root, consul=consul, mode=mode, health=health)
    reconciler, healthloop = in_process(config, tmp / f"{tag}-inprocess.log")
    with baselines.capture() as captured:
        result, wall, cpu = timed(reconciler.cycle)
    if result.error is not None or result.failures:
        raise RuntimeError(f"cold cycle failed: {result.error or result.failures[0]}")
    catch_up = baselines.wait_converged(consul, workload.OWNER, load.registered, timeout=60 + load.n * 0.02)
    return config, reconciler, healthloop, captured, result, wall + catch_up, cpu, catch_up


def limit_run(opts: Options, load: workload.Workload, mode: str, netns: NetNS | None, captured: baselines.Captured) -> tuple[float, str]:
    """Consul's own limit for the mode, with the very payloads jailsyncd sent: (seconds, how)."""
    n = load.n
    with fresh_consul(opts, netns) as consul:
        if mode == "catalog":
            ops = captured.txn_ops() or baselines.catalog_ops(captured.registrations(), workload.OWNER)
            sent, txns = baselines.tight_txn(consul, ops)
            how = f"tight `/v1/txn` client, {txns} txns of ≤ 64 ops"
        else:
            sent = baselines.tight_agent(consul, captured.registrations())
            how = "tight agent-API client, one keep-alive connection"
        return sent + baselines.wait_converged(consul, workload.OWNER, load.registered, timeout=60 + n * 0.02), how


def scenario(opts: Options, load: workload.Workload, tmp: Path, mode: str, health: bool, netns: NetNS | None) -> list[Row]:
    n = load.n
    hl = "on" if health else "off"
    rows: list[Row] = []
    expected = len(load.registered)
    is_target = n == TARGET_N
    repeats = opts.cold_repeat if n <= opts.cold_repeat_max else 1

    def row(measure: str, value: str, **kw: Any) -> Row:
        r = Row(n, mode, hl, measure, value, **kw)
        rows.append(r)
        return r

    colds: list[float] = []
    limits: list[float] = []
    with fresh_consul(opts, netns) as consul:
        config, reconciler, healthloop, captured, result, cold, cpu, catch_up = cold_converge(opts, load, tmp, mode, health, netns, consul, f"{mode}-{hl}")
        colds.append(cold)
        cold_done = time.monotonic()
        cold_row = row(
            "cold converge: empty Consul to all in the catalog" + (f" (median of {repeats})" if repeats > 1 else ""),
            ms(cold),
            notes=f"{expected:,} services; {result.writes:,} writes, {result.requests:,} requests; CPU {ms(cpu)}; catalog catch-up {ms(catch_up)} (first run)",
            data={"writes": result.writes, "requests": result.requests, "cpu": cpu},
        )

        # Steady state: no-op cycles in this process, once Consul has finished its own
        # work (agent anti-entropy) and CBSD's files are older than the CBSD adapter's
        # racy window (as they are on a host that is not changing).
        settle(consul, timeout=60 + n * 0.02)
        time.sleep(max(0.0, 2.2 - (time.monotonic() - cold_done)))
        before = baselines.index(consul)
        samples = []
        for _ in range(opts.noops):
            with baselines.capture() as reads:
                res, w, c = timed(reconciler.cycle)
            samples.append((w, c, res.requests, res.writes, res.error))
        after = baselines.index(consul)
        errors = [s[4] for s in samples if s[4] is not None]
        if errors:
            raise RuntimeError(f"no-op cycle failed: {errors[0]}")
        walls = sorted(s[0] for s in samples)
        cpus = sorted(s[1] for s in samples)
        requests = max(s[2] for s in samples)
        writes = sum(s[3] for s in samples)
        moved = after != before
        noop_wall = statistics.median(walls)
        wall_target = 0.05 if n == TARGET_N else 0.25 if n == 5000 else None
        vm_reads = getattr(reconciler.source, "vm_reads", None)
        row(
            f"no-op cycle: wall (median of {opts.noops}, in-process `Reconciler.cycle`)",
            ms(noop_wall),
            target=f"≤ {ms(wall_target)}" if wall_target else "—",
            met=verdict(noop_wall <= wall_target) if wall_target else "—",
            notes=f"worst {ms(walls[-1])}" + (f"; per-VM DBs opened in the last one: {vm_reads}" if vm_reads is not None else ""),
            data={"seconds": noop_wall, "worst": walls[-1]},
        )
        row("no-op cycle: CPU time (median)", ms(statistics.median(cpus)), notes=f"worst {ms(cpus[-1])}", data={"seconds": statistics.median(cpus)})
        # Catalog mode reads its services in one read-only transaction per 64 jails
        # (issue 14: what a cycle reads depends on this host's jails, not the cluster).
        max_requests = 3 if mode == "agent" else 2 + -(-n // 64)
        row(
            "no-op cycle: HTTP requests / writes",
            f"{requests} / {writes}",
            target=f"≤ {max_requests} / 0" if is_target else "—",
            met=verdict(requests <= max_requests and writes == 0 and not moved) if is_target else "—",
            notes=(
                f"writes summed over {opts.noops} cycles; Consul's raft indexes {'MOVED' if moved else 'unchanged'}; "
                f"{sum(reads.read_bytes) / 1024:,.0f} KiB of responses read per cycle"
            ),
            data={"requests": requests, "writes": writes, "index_moved": moved, "read_bytes": sum(reads.read_bytes)},
        )
        if opts.profile is not None:
            profile_noop(opts.profile / f"noop-{n}-{mode}-health-{hl}.txt", reconciler)

        if healthloop is not None:
            first = healthloop.round()
            before = baselines.index(consul)
            stats = [healthloop.round() for _ in range(2)]
            after = baselines.index(consul)
            row(
                "steady health round: Consul writes (2 rounds)",
                str(sum(s.writes for s in stats)),
                target="0" if is_target else "—",
                met=verdict(sum(s.writes for s in stats) == 0 and before == after) if is_target else "—",
                notes=(
                    f"{stats[0].probed:,} checks probed, 10% of them down; round {ms(stats[-1].duration)}; raft indexes "
                    f"{'MOVED' if before != after else 'unchanged'}; the first round after the cold converge wrote {first.writes:,}"
                ),
                data={"writes": sum(s.writes for s in stats), "seconds": stats[-1].duration},
            )

        rows += daemon_phase(opts, load, tmp, consul, mode, hl)

    # Consul's own limit for the mode, with the very payloads jailsyncd sent; then more
    # cold converges, interleaved with it, to take medians on a noisy machine.
    if opts.left() <= 0:
        cold_row.baseline = "skipped (time budget)"
        cold_row.value = ms(cold)
        return rows
    limit, how = limit_run(opts, load, mode, netns, captured)
    limits.append(limit)
    for rep in range(1, repeats):
        if opts.left() <= 0:
            break
        with fresh_consul(opts, netns) as consul:
            colds.append(cold_converge(opts, load, tmp, mode, health, netns, consul, f"{mode}-{hl}-{rep}")[5])
        limits.append(limit_run(opts, load, mode, netns, captured)[0])
    cold, limit = statistics.median(colds), statistics.median(limits)
    cold_row.value = ms(cold)
    cold_row.baseline = f"{how}: {ms(limit)}"
    cold_row.ratio = f"{ratio(cold, limit)} Consul's limit"
    if len(colds) > 1:
        cold_row.notes += f"; runs {', '.join(ms(c) for c in colds)} vs limit {', '.join(ms(x) for x in limits)}"
    cold_row.data.update(seconds=cold, limit=limit, runs=colds, limits=limits)
    # Issue 7: both modes at N = 1,000; issue 13: catalog mode at 1,000 and 5,000.
    if is_target or (mode == "catalog" and n == 5000):
        cold_row.target = "≤ 1.3x Consul's limit"
        cold_row.met = verdict(cold <= 1.3 * limit)

    if mode == "agent" and opts.curl:
        hook = row("naive hooks: one `curl` per jail, cold", "—")
        if baselines.curl_path() is None:
            hook.baseline = "curl not installed (apt-get install curl)"
        elif n > opts.curl_max:
            hook.baseline = f"skipped (N > --curl-max {opts.curl_max})"
        elif opts.left() <= 0:
            hook.baseline = "skipped (time budget)"
        else:
            bodies = captured.registrations()
            with fresh_consul(opts, netns) as consul:
                took = baselines.curl_hooks(consul, bodies, deadline=time.monotonic() + max(opts.left(), 60))
                took += baselines.wait_converged(consul, workload.OWNER, load.registered, timeout=60 + n * 0.02)
            hook.baseline = f"{len(bodies):,} curl processes: {ms(took)}"
            hook.ratio = f"jailsyncd {ratio(cold, took)} of it; curl {ratio(took, limit)} Consul's limit"
            hook.data["seconds"] = took
    return rows


#: Events the daemon logs for a cycle with nothing to do: a cycle that ran and wrote
#: nothing (``cycle_finished`` with ``writes = 0``: its ``duration_ms``, ``requests``
#: and ``bytes_read``), or one it skipped because neither CBSD nor Consul changed
#: (``cycle_skipped``, debug level: it reads nothing, by definition; docs/operations.md).
NOOP_EVENTS = ("cycle_finished", "cycle_skipped")


def _seconds(event: dict) -> float:
    return datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()


def noop_cycles(daemon: "Daemon", mark: int) -> list[dict]:
    """The cycles with nothing to do after ``mark``, each as ``{event, seconds,
    requests, bytes_read}``. A skipped cycle logs no duration: it is the time from its
    ``cycle_started`` line to its ``cycle_skipped`` line (both logged by the daemon,
    so an upper bound: one log line's cost is in it)."""
    started = {e.get("cycle"): e for e in daemon.events("cycle_started", mark)}
    out = []
    for e in daemon.events("cycle_finished", mark):
        if not e.get("writes") and not e.get("failed"):
            out.append({"event": "cycle_finished", "seconds": e["duration_ms"] / 1000, "requests": e.get("requests", 0), "bytes_read": e.get("bytes_read", 0)})
    for e in daemon.events("cycle_skipped", mark):
        begin = started.get(e.get("cycle"))
        if begin is not None:
            out.append({"event": "cycle_skipped", "seconds": max(0.0, _seconds(e) - _seconds(begin)), "requests": 0, "bytes_read": 0})
    return out


def daemon_config(path: Path, *, workdir: Path, consul: ConsulServer, mode: str, health: bool, sync: tuple[str, ...]) -> Path:
    """The daemon's settings: jailsyncd's defaults (``sync.interval = 30s``, ...)
    except what the bench must set, and ``--sync`` lines if given."""
    mode_line = f'mode = "{mode}"\n' if mode != "agent" else ""
    sync_section = "[sync]\n" + "".join(f"{line}\n" for line in sync) + "\n" if sync else ""
    path.write_text(
        f'[host]\nname = "{workload.OWNER}"\n\n[cbsd]\nworkdir = "{workdir}"\n\n'
        f'[consul]\naddress = "{consul.address}"\n{mode_line}\n{sync_section}'
        f"[health]\nenabled = {'true' if health else 'false'}\n"
    )
    return path


def spaced(rng: random.Random, opts: Options) -> None:
    """A random pause between two trials, so that each starts at an independent
    phase of whatever the daemon runs periodically (its stat poll, its interval, a
    blocking query's rate limit)."""
    time.sleep(rng.uniform(*opts.spacing))


def latency_row(n: int, mode: str, hl: str, measure: str, values: list[float], timeout: float, target: tuple[float, float | None] | None, notes: str) -> Row:
    med, worst = statistics.median(values), max(values)
    shown = f"{ms(med)} / {ms(worst)}" if worst != float("inf") else f"{ms(med)} / > {timeout:g} s (not repaired)"
    if target is None:
        return Row(n, mode, hl, measure, shown, notes=notes, data={"median": med, "worst": worst, "runs": values})
    tmed, tworst = target
    ok = med <= tmed and (tworst is None or worst <= tworst)
    return Row(
        n, mode, hl, measure, shown,
        target=f"≤ {ms(tmed)}" + (f" / ≤ {ms(tworst)}" if tworst is not None else " median"),
        met=verdict(ok), notes=notes, data={"median": med, "worst": worst, "runs": values},
    )


def reasons_of(daemon: "Daemon", mark: int) -> str:
    """The reasons of the cycles that wrote after ``mark`` (``cycle_started`` is
    logged at debug level before its ``cycle_finished``), counted: what triggered the
    repairs."""
    started: dict[int, list[str]] = {e["cycle"]: e.get("reasons") or [] for e in daemon.events("cycle_started", mark)}
    counts: dict[str, int] = {}
    for e in daemon.events("cycle_finished", mark):
        if e.get("writes"):
            key = "+".join(started.get(e.get("cycle"), ["?"])) or "?"
            counts[key] = counts.get(key, 0) + 1
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])) or "none"


def written_cycles_ms(daemon: "Daemon", mark: int) -> str:
    took = [e["duration_ms"] for e in daemon.events("cycle_finished", mark) if e.get("writes")]
    return f"{statistics.median(took):.0f} ms" if took else "—"


#: The drift an operator makes by hand, per mode: (label, baselines function).
DRIFTS = {
    "agent": (
        ("service deregistered by hand (agent API)", baselines.hand_deregister),
        ("service edited by hand: other tags (agent API)", baselines.hand_edit),
    ),
    "catalog": (
        ("node deregistered by hand (`/v1/catalog/deregister`)", baselines.hand_deregister),
        ("service edited by hand: other tags (`/v1/catalog/register`)", baselines.hand_edit),
    ),
}


def daemon_phase(opts: Options, load: workload.Workload, tmp: Path, consul: ConsulServer, mode: str, hl: str) -> list[Row]:
    """``jailsyncd run`` with default settings against the converged Consul: idle
    cost (writes, CPU, no-op cycles), CBSD change -> Consul, Consul-side drift
    repair, peak RSS."""
    n = load.n
    is_target = n == TARGET_N
    rows: list[Row] = []
    rng = random.Random(n * 7 + len(mode) + len(hl))
    config = daemon_config(tmp / f"daemon-{mode}-{hl}.toml", workdir=load.workdir.root, consul=consul, mode=mode, health=hl == "on", sync=opts.sync)
    settings = settings_module.load_settings(config, env={})
    interval = settings.sync.interval + settings.sync.jitter
    daemon = Daemon(config, tmp / f"daemon-{mode}-{hl}.log")
    try:
        first = wait_until(lambda: bool(daemon.events("cycle_finished") or daemon.events("cycle_failed")), timeout=60 + n * 0.01, interval=0.05)
        if first is None or daemon.events("cycle_failed"):
            raise RuntimeError(f"daemon's first cycle did not finish cleanly (log: {daemon.log})")
        startup = daemon.events("cycle_finished")[0]
        sync_note = "sync: " + (", ".join(opts.sync) if opts.sync else f"defaults (interval {settings.sync.interval:g} s, jitter {settings.sync.jitter:g} s, watch_interval {settings.sync.watch_interval:g} s)")

        # Idle: nothing changes on either side. Nothing may be written (after the first
        # health round and heartbeat, which settle the statuses once); what the daemon
        # costs meanwhile is its CPU time and its no-op cycles.
        time.sleep(1.5 if hl == "on" else 0)
        idle = opts.idle if is_target else opts.idle_other
        before, cpu_before, mark = baselines.index(consul), daemon.cpu_seconds(), daemon.mark()
        time.sleep(idle)
        after, cpu = baselines.index(consul), daemon.cpu_seconds() - cpu_before
        idle_ok = before == after
        noops = noop_cycles(daemon, mark)
        ran = len(daemon.events("cycle_finished", mark))
        rows.append(
            Row(
                n, mode, hl, f"daemon idle {idle:g} s: catalog writes", "0" if idle_ok else "some (raft index moved)",
                target="0" if is_target else "—", met=verdict(idle_ok) if is_target else "—",
                notes=f"{ran} cycles ran, {len(daemon.events('cycle_skipped', mark))} skipped; start-up cycle (a no-op, cold cache) {startup['duration_ms']:.0f} ms, {startup['requests']} requests, {startup['writes']} writes (daemon log `cycle_finished`); {sync_note}",
                data={"idle_ok": idle_ok},
            )
        )
        share = cpu / idle * 100
        cpu_target = is_target and hl == "off"
        rows.append(
            Row(
                n, mode, hl, f"daemon idle {idle:g} s: CPU, % of one core", f"{share:.2f} %",
                target="≤ 1 %" if cpu_target else "—", met=verdict(share <= 1.0) if cpu_target else "—",
                notes=f"{cpu * 1000:.0f} ms of CPU (user + system, all threads, /proc/<pid>/stat)" + ("; health rounds every 10 s included" if hl == "on" else ""),
                data={"percent": share, "cpu": cpu, "window": idle},
            )
        )
        if noops:
            durations = sorted(e["seconds"] for e in noops)
            requests = [e["requests"] for e in noops]
            read = [e["bytes_read"] for e in noops]
            kinds = ", ".join(f"{sum(1 for e in noops if e['event'] == k)} `{k}`" for k in NOOP_EVENTS if any(e["event"] == k for e in noops))
            med = statistics.median(durations)
            rows.append(
                Row(
                    n, mode, hl, f"no-op cycle in `run`, nothing changed (median / worst of {len(noops)})", f"{ms(med)} / {ms(durations[-1])}",
                    target="≤ 5 ms" if is_target else "—", met=verdict(med <= 0.005) if is_target else "—",
                    notes=f"{kinds} during the idle window (`cycle_finished`: its `duration_ms`; `cycle_skipped`: from its `cycle_started` line to it)",
                    data={"median": med, "worst": durations[-1], "count": len(noops)},
                )
            )
            rows.append(
                Row(
                    n, mode, hl, "no-op cycle in `run`: Consul requests / bytes read (per cycle, worst)", f"{max(requests)} / {max(read):,} B",
                    target="0 / 0" if is_target else "—", met=verdict(max(requests) == 0 and max(read) == 0) if is_target else "—",
                    notes=f"median {statistics.median(requests):g} requests, {statistics.median(read) / 1024:,.0f} KiB (`cycle_finished`: its `requests`, `bytes_read`; a `cycle_skipped` reads nothing)",
                    data={"requests": max(requests), "bytes_read": max(read)},
                )
            )
        else:
            rows.append(Row(n, mode, hl, "no-op cycle in `run`, nothing changed", f"none in {idle:g} s (sync.interval {settings.sync.interval:g} s)"))

        # CBSD change -> Consul: rows written the way CBSD writes them (one sqlite3
        # write to the WAL DB), each timed from just before the write until the catalog
        # (what DNS and clients see) shows it. Jails whose address answers (health on).
        candidates = [(j, jid) for j, jid in load.plain_jails if load.probe_addresses.get(load.registered[j], True)]
        trials = opts.changes
        chosen = candidates[:: max(1, len(candidates) // max(1, 2 * trials))][:trials]
        gone: list[float] = []
        back: list[float] = []
        added: list[float] = []
        timeout = opts.change_timeout
        mark = daemon.mark()

        def timed_until(predicate: Callable[[], bool], act: Callable[[], Any], deadline: float = timeout) -> float:
            started = time.monotonic()
            act()
            took = wait_until(predicate, deadline, interval=0.01)
            return time.monotonic() - started if took is not None else float("inf")

        for jname, jid in chosen:
            sid = f"jailsyncd-{jname}"
            spaced(rng, opts)
            gone.append(timed_until(lambda: not baselines.present(consul, jname, sid), lambda: load.workdir.stop(jname)))
            spaced(rng, opts)
            back.append(timed_until(lambda: baselines.present(consul, jname, sid), lambda: load.workdir.start(jname, jid)))
        for _ in range(trials):
            spaced(rng, opts)
            holder: list[str] = []
            added.append(timed_until(lambda: bool(holder) and baselines.present(consul, holder[0], f"jailsyncd-{holder[0]}"), lambda: holder.append(load.add_jail()[0])))
        if is_target:
            change_target: tuple[float, float | None] | None = (0.2, 0.5)
        elif n == 5000:
            change_target = (0.4, None)
        else:
            change_target = None
        notes = f"polled every 10 ms; cycles that wrote took {written_cycles_ms(daemon, mark)} (median), triggered by: {reasons_of(daemon, mark)}; {sync_note}"
        for label, values in (("jail stopped until gone", gone), ("jail started until present", back), ("jail added until present", added)):
            rows.append(latency_row(n, mode, hl, f"CBSD change -> Consul: {label} (median / worst of {len(values)})", values, timeout, change_target, notes))

        # Consul-side drift: an operator (or a script, or a restored snapshot) removes
        # or edits one of our entries; timed from just before the hand write until
        # Consul holds the right entry again (agent mode: the agent, which jailsyncd
        # writes and the catalog follows; catalog mode: the catalog).
        if n <= opts.drift_max:
            pool = [j for j, _ in candidates if j not in {c[0] for c in chosen}]
            mark = daemon.mark()
            drift_timeout = interval + opts.change_timeout
            for k, (label, act) in enumerate(DRIFTS[mode]):
                values = []
                for t in range(opts.drift_trials):
                    jname = pool[(k * opts.drift_trials + t) * max(1, len(pool) // (2 * opts.drift_trials + 1)) % len(pool)]
                    sid = f"jailsyncd-{jname}"
                    want = baselines.entry(consul, mode, jname, sid)
                    if want is None:
                        raise RuntimeError(f"{sid} is not in Consul before the drift trial")
                    spaced(rng, opts)
                    values.append(
                        timed_until(
                            lambda: baselines.entry(consul, mode, jname, sid) == want,
                            lambda: act(consul, mode, jname, sid),
                            drift_timeout,
                        )
                    )
                    if values[-1] == float("inf"):
                        break  # not repaired: the next trial would say the same
                rows.append(
                    latency_row(
                        n, mode, hl, f"Consul drift repaired: {label} (median / worst of {len(values)})", values, drift_timeout,
                        (1.0, 2.0) if is_target else None,
                        f"polled every 10 ms, deadline {drift_timeout:g} s; cycles that wrote took {written_cycles_ms(daemon, mark)} (median), triggered by: {reasons_of(daemon, mark)}; {sync_note}",
                    )
                )
                mark = daemon.mark()

        rss = daemon.peak_rss_kb()
        rss_target = n in (TARGET_N, 5000)
        rows.append(
            Row(
                n, mode, hl, "daemon peak RSS (VmHWM)", f"{rss / 1024:.0f} MB",
                target="≤ 100 MB" if rss_target else "—", met=verdict(rss <= 100 * 1024) if rss_target else "—",
                notes=f"after {len(daemon.events('cycle_finished'))} cycles (the daemon started against the converged Consul)",
                data={"kb": rss},
            )
        )
    finally:
        daemon.stop()
    return rows


def profile_noop(path: Path, reconciler: Any) -> None:
    try:
        from pyinstrument import Profiler
    except ImportError:
        path.with_suffix(".skipped").write_text("pyinstrument is not installed here\n")
        return
    profiler = Profiler(interval=0.0005)
    profiler.start()
    reconciler.cycle()
    profiler.stop()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(profiler.output_text(unicode=False, color=False, show_all=False))


# -- the health round ------------------------------------------------------------------------


def add_addresses(netns: NetNS, addresses: list[str], tmp: Path) -> None:
    """Put many addresses on the namespace's lo with one ``ip -batch``."""
    if not addresses:
        return
    batch = tmp / f"{netns.name}.ip"
    batch.write_text("".join(f"addr add {a}/32 dev lo\n" for a in addresses))
    subprocess.run(["ip", "-n", netns.name, "-batch", str(batch)], check=True, capture_output=True)


def health_round(opts: Options, n: int, tmp: Path) -> list[Row]:
    """jailsyncd's ``Prober`` pinging N addresses, 10% of them down, inside a namespace.

    "no route": the down addresses have no route (the kernel refuses at once, as in
    the tests). "silent": they are routed into the namespace's lo, which drops them
    without an answer, as for a powered-off host on a LAN; the round then waits for
    its timeout.
    """
    from jailsyncd.adapters.probe import Probe, Prober
    from jailsyncd.settings import HealthSettings

    hs = HealthSettings()
    rows: list[Row] = []
    with NetNS("jsb") as ns:
        # Routed to lo, where the namespace drops them: not local, and no forwarding.
        ns.ip("route", "add", "10.212.0.0/16", "dev", "lo")
        up = [f"10.210.{i // 250}.{i % 250 + 1}" for i in range(n) if not workload.is_down(i)]
        add_addresses(ns, up, tmp)
        for variant, prefix in (("no route", "10.211"), ("silent", "10.212")):
            down = [f"{prefix}.{i // 250}.{i % 250 + 1}" for i in range(n) if workload.is_down(i)]
            probes = [Probe(a, "ping", a) for a in up + down]
            prober = Prober()

            def go() -> tuple[int, float]:
                started = time.monotonic()
                results = prober.run(probes, count=hs.count, timeout=hs.timeout)
                return sum(r.ok for r in results.values()), time.monotonic() - started

            samples = [ns.call(go) for _ in range(opts.rounds)]
            times = sorted(s[1] for s in samples)
            oks = {s[0] for s in samples}
            lost = len(up) - min(oks)
            is_target = n == TARGET_N
            rows.append(
                Row(
                    n, "any", "on", f"health round: {n:,} pings, 10% down ({variant}) (median / worst of {opts.rounds})",
                    f"{ms(statistics.median(times))} / {ms(times[-1])}",
                    target="≤ 1.5 s, every up address answers" if is_target else "—",
                    met=verdict(times[-1] <= 1.5 and not lost) if is_target else "—",
                    notes=(
                        f"up answered: {'/'.join(f'{o:,}' for o in sorted(oks))} of {len(up):,}"
                        + (f" (**{lost:,} up addresses got no reply: replies lost**)" if lost else "")
                        + f"; count={hs.count}, timeout={hs.timeout:g} s (defaults)"
                    ),
                    data={"median": statistics.median(times), "worst": times[-1], "ok": sorted(oks), "up": len(up)},
                )
            )
    return rows


# -- driver ------------------------------------------------------------------------------


def run(opts: Options, log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True)) -> list[Row]:
    rows: list[Row] = []
    modes = supported_modes()
    for n in opts.sizes:
        for hl in opts.health:
            health = hl == "on"
            if health and n > opts.health_max:
                rows.append(Row(n, "all", "on", "cold converge, steady state, change latency", f"skipped (N > --health-max {opts.health_max})"))
                continue
            if health and netns_available() is not None:
                rows.append(Row(n, "all", "on", "cold converge, steady state, change latency", f"skipped ({netns_available()})"))
                continue
            for mode in opts.modes:
                if mode not in modes:
                    rows.append(Row(n, mode, hl, "cold converge: empty Consul to all in the catalog", not_built(mode)))
                    continue
                if opts.left() <= 0:
                    rows.append(Row(n, mode, hl, "all measurements", "skipped (time budget)"))
                    continue
                log(f"bench: N={n:,} mode={mode} health={hl} ({opts.left():.0f} s of budget left)")
                with tempfile.TemporaryDirectory(prefix=f"jailsyncd-bench-{n}-") as tmpdir:
                    tmp = Path(tmpdir)
                    try:
                        rows += one(opts, n, tmp, mode, health)
                    except Exception as exc:  # noqa: BLE001 - one failed phase must not lose the others
                        traceback.print_exc()
                        rows.append(Row(n, mode, hl, "error", f"{type(exc).__name__}: {exc}"[:300]))
        if netns_available() is None and opts.left() > 0:
            log(f"bench: N={n:,} health round")
            with tempfile.TemporaryDirectory(prefix=f"jailsyncd-bench-{n}-") as tmpdir:
                rows += health_round(opts, n, Path(tmpdir))
    return rows


def one(opts: Options, n: int, tmp: Path, mode: str, health: bool) -> list[Row]:
    if not health:
        load = workload.build(tmp / "cbsd", n, workload.host_address)
        return scenario(opts, load, tmp, mode, False, None)
    load = workload.build(tmp / "cbsd", n, workload.netns_address)
    with NetNS("jsb") as ns:
        add_addresses(ns, [a for a, up in load.probe_addresses.items() if up], tmp)
        # Everything, the daemon and the baselines included, runs on the namespace's thread.
        return ns.call(scenario, opts, load, tmp, mode, True, ns)


def summary(rows: list[Row]) -> list[str]:
    """The targets (N = 1,000, and the no-op at 5,000), each with its verdict."""
    out = []
    for r in rows:
        if r.met != "—":
            out.append(f"- {'met' if r.met == 'yes' else '**NOT met**'}: N = {r.n:,}, {r.mode}, health {r.health}: {r.measure}: {r.value} (target {r.target})")
    return out


#: ``bench/cluster.py --write`` keeps its section of RESULTS.md between these
#: markers; a rewrite here carries it over unchanged.
CLUSTER_START, CLUSTER_END = "<!-- cluster.py:start -->", "<!-- cluster.py:end -->"


def write_results(path: Path, command: str, machine_lines: list[str], rows: list[Row], took: float) -> str:
    table = render(rows)
    kept = ""
    if path.exists():
        old = path.read_text()
        if CLUSTER_START in old and CLUSTER_END in old:
            kept = old[old.index(CLUSTER_START) : old.index(CLUSTER_END) + len(CLUSTER_END)] + "\n"
    text = "\n".join(
        [
            "# Benchmark results",
            "",
            "Produced by (the repo's `.venv` comes from `scripts/setup`):",
            "",
            "```sh",
            command,
            "```",
            "",
            f"Run at {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}, took {took / 60:.1f} min. Machine:",
            "",
            *[f"- {m}" for m in machine_lines],
            "",
            "What each row means, and how each cost grows with N: `docs/performance.md`.",
            "",
            table,
            "",
            "## Targets",
            "",
            *(summary(rows) or ["- no target applies to the sizes run (targets are for N = 1,000 and 5,000)"]),
            "",
        ]
    ) + (("\n" + kept) if kept else "")
    path.write_text(text)
    return table


def parse(argv: list[str] | None) -> tuple[Options, Path]:
    p = argparse.ArgumentParser(prog="bench/run.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)), help="comma-separated N (default %(default)s)")
    p.add_argument("--modes", default="agent,catalog", help="consul.mode values to run (default %(default)s)")
    p.add_argument("--health", default="off,on", help="health settings to run: off, on or both (default %(default)s)")
    p.add_argument("--health-max", type=int, default=1000, help="largest N run with health on (default %(default)s)")
    p.add_argument("--noops", type=int, default=5, help="no-op cycles per scenario (default %(default)s)")
    d = Options()
    p.add_argument("--changes", type=int, default=d.changes, help="trials of each CBSD change: jail stopped, started, added (default %(default)s)")
    p.add_argument("--idle", type=float, default=d.idle, help="seconds the daemon idles at N = 1,000 while writes, CPU and no-op cycles are counted (default %(default)s)")
    p.add_argument("--idle-other", type=float, default=d.idle_other, help="the same at other N (default %(default)s)")
    p.add_argument("--drift-trials", type=int, default=d.drift_trials, help="trials of each Consul-side drift (hand deregister, hand edit) (default %(default)s)")
    p.add_argument("--drift-max", type=int, default=d.drift_max, help="largest N the drift trials run at (default %(default)s)")
    p.add_argument("--change-timeout", type=float, default=d.change_timeout, help="deadline of one change trial, seconds; a drift trial adds sync.interval + jitter (default %(default)s)")
    p.add_argument("--spacing", default=",".join(f"{x:g}" for x in d.spacing), help="random pause before each trial, LOW,HIGH seconds (default %(default)s)")
    p.add_argument("--sync", action="append", default=[], metavar="LINE", help='a line for the daemon\'s [sync] section, e.g. --sync \'interval = "2s"\' (repeatable; default: none, jailsyncd\'s defaults)')
    p.add_argument("--rounds", type=int, default=3, help="health rounds per variant (default %(default)s)")
    p.add_argument("--cold-repeat", type=int, default=3, help="cold converges (and limits) per scenario, median taken (default %(default)s)")
    p.add_argument("--cold-repeat-max", type=int, default=1000, help="largest N repeated; larger ones run once (default %(default)s)")
    p.add_argument("--no-curl", action="store_true", help="skip the one-curl-per-jail baseline")
    p.add_argument("--curl-max", type=int, default=d.curl_max, help="largest N for the curl baseline (default %(default)s)")
    p.add_argument("--budget", type=float, default=d.budget, help="seconds; later phases are skipped past it (default %(default)s)")
    p.add_argument("--profile", type=Path, help="write a pyinstrument profile of one no-op cycle per scenario here")
    p.add_argument("--out", type=Path, default=BENCH / "RESULTS.md", help="results file (default bench/RESULTS.md)")
    p.add_argument("--json", type=Path, help="also write every row, with its raw numbers, as JSON here")
    a = p.parse_args(argv)
    opts = Options(
        sizes=tuple(int(x) for x in a.sizes.split(",") if x),
        modes=tuple(x for x in a.modes.split(",") if x),
        health=tuple(x for x in a.health.split(",") if x),
        health_max=a.health_max,
        noops=a.noops,
        changes=a.changes,
        idle=a.idle,
        idle_other=a.idle_other,
        drift_trials=a.drift_trials,
        drift_max=a.drift_max,
        change_timeout=a.change_timeout,
        spacing=tuple(float(x) for x in a.spacing.split(","))[:2],  # type: ignore[arg-type]
        sync=tuple(a.sync),
        rounds=a.rounds,
        cold_repeat=a.cold_repeat,
        cold_repeat_max=a.cold_repeat_max,
        curl=not a.no_curl,
        curl_max=a.curl_max,
        budget=a.budget,
        profile=a.profile,
    )
    return opts, a.out, a.json


def main(argv: list[str] | None = None) -> list[Row]:
    opts, out, json_out = parse(argv)
    opts.consul_bin = os.environ.get("CONSUL_BIN") or consul_binary()
    args = list(argv if argv is not None else sys.argv[1:])
    command = shlex.join(["scripts/setup", "&&", ".venv/bin/python", "bench/run.py", *args]).replace("'&&'", "&&")
    command += f"\n# this run's exact command line (cwd {os.getcwd()}):\n" + shlex.join([sys.executable, *sys.argv[:1], *args])
    lines = machine(opts.consul_bin)
    rows = run(opts)
    table = write_results(out, command, lines, rows, time.monotonic() - opts.started)
    if json_out is not None:
        json_out.write_text(json.dumps([r.__dict__ for r in rows], indent=1, default=str))
    print("\n".join(f"# {m}" for m in lines))
    print(table)
    print("\n".join(summary(rows)))
    print(f"(written to {out})")
    return rows


if __name__ == "__main__":
    main()
