"""Where a cold converge spends its time, part by part (issue 13, target 4).

    .venv/bin/python bench/cold_parts.py [N] [--mode catalog|agent] [--runs 3] [--after-read]

Builds the bench workload of N environments (``workload.build``), then per run: an
empty dev Consul on loopback, jailsyncd's first cycle in this process (built as
``once`` builds it) with ``time.perf_counter`` around each part (``timed_parts``:
they overlap, since the cycle registers while it reads); and, in
catalog mode, the transport alone sending the very transactions that cycle sent,
one after the other, against the bench's tight ``/v1/txn`` client on another empty
Consul. Prints one table row per run. Health is off: nothing is pinged. Only
loopback is used.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]
import baselines  # noqa: E402
import run as bench  # noqa: E402
import workload  # noqa: E402

from jailsyncd import reconcile  # noqa: E402
from jailsyncd.adapters.consul.transport import txn_errors  # noqa: E402

PARTS = ("node db", "consul read", "desired", "records", "plan", "first write", "writes busy")


def timed_parts(reconciler: Any) -> dict[str, float]:
    """Wrap each part of ``reconciler``'s cycle so that its wall time adds up here.

    The cycle registers while it reads CBSD (docs/architecture.md, "Registering while
    reading"), so the parts overlap: "node db" is ``begin`` (the node DB and node
    name), "desired" and "records" add up every part's build, "consul read" the
    reads and the clash check, "first write" is when the first transaction went out
    (from the cycle's start), and "writes busy" the sum of the writing transactions'
    round trips (Consul's work plus jailsyncd's sending)."""
    spent = dict.fromkeys(PARTS, 0.0)
    started = [0.0]

    def wrap(owner: Any, attr: str, part: str) -> None:
        inner: Callable[..., Any] = getattr(owner, attr)

        def timed(*args: Any, **kwargs: Any) -> Any:
            begun = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                spent[part] += time.perf_counter() - begun

        setattr(owner, attr, timed)

    store = reconciler.store
    call = store._call

    def counted(method: str, path: str, callback: Any, **kwargs: Any) -> Any:
        begun = time.perf_counter()
        if kwargs.get("write") and not spent["first write"]:
            spent["first write"] = begun - started[0]
        try:
            return call(method, path, callback, **kwargs)
        finally:
            if kwargs.get("write"):
                spent["writes busy"] += time.perf_counter() - begun

    store._call = counted
    cycle = reconciler.cycle

    def timed_cycle(*args: Any, **kwargs: Any) -> Any:
        started[0] = time.perf_counter()
        return cycle(*args, **kwargs)

    reconciler.cycle = timed_cycle
    wrap(reconciler.source, "begin", "node db")
    wrap(reconcile, "build_desired", "desired")
    wrap(store, "records", "records")
    wrap(store, "read", "consul read")
    wrap(store, "places_taken", "consul read")
    wrap(reconciler, "plan", "plan")
    return spent


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("n", nargs="?", type=int, default=5000)
    p.add_argument("--mode", choices=("catalog", "agent"), default="catalog")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--after-read", action="store_true", help="register only after the whole read (reconcile.EARLY_MIN out of reach), for an A/B")
    a = p.parse_args(argv)
    if a.after_read:
        reconcile.EARLY_MIN = 1 << 30
    opts = bench.Options(consul_bin=bench.consul_binary())
    tmp = Path(tempfile.mkdtemp(prefix="jailsyncd-coldparts-"))
    load = workload.build(tmp / "workdir", a.n)
    how = "registering after the whole read" if a.after_read else "registering while reading"
    print(f"cold converge, N = {a.n:,}, {a.mode} mode, health off, {how} (ms)\n")
    print("| run | total | CPU | " + " | ".join(PARTS) + " | transport alone | tight client |")
    print("|" + "---|" * (len(PARTS) + 5))
    for i in range(a.runs):
        with bench.fresh_consul(opts, None) as consul:
            config = bench.write_config(tmp / f"run{i}.toml", workdir=load.workdir.root, consul=consul, mode=a.mode, health=False)
            reconciler, _ = bench.in_process(config, tmp / "log.json")
            spent = timed_parts(reconciler)
            with baselines.capture() as captured:
                result, wall, cpu = bench.timed(reconciler.cycle)
            if result.error is not None or result.failures:
                raise SystemExit(f"cold cycle failed: {result.error or result.failures[0]}")
        transport = tight = float("nan")
        ops = captured.txn_ops()
        if ops:
            batches = [ops[k : k + baselines.TXN_OPS] for k in range(0, len(ops), baselines.TXN_OPS)]
            with bench.fresh_consul(opts, None) as consul:
                config = bench.write_config(tmp / f"send{i}.toml", workdir=load.workdir.root, consul=consul, mode=a.mode, health=False)
                store = bench.in_process(config, tmp / "log.json")[0].store
                started = time.perf_counter()
                for batch in batches:
                    store._call("PUT", "/v1/txn", txn_errors, body=batch, write=True)
                transport = time.perf_counter() - started
            with bench.fresh_consul(opts, None) as consul:
                tight = baselines.tight_txn(consul, ops)[0]
        cells = [wall, cpu, *(spent[part] for part in PARTS), transport, tight]
        print(f"| {i + 1} | " + " | ".join(f"{1000 * c:,.0f}" for c in cells) + " |", flush=True)


if __name__ == "__main__":
    main()
