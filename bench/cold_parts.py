"""Where a cold converge spends its time, part by part (issue 13, target 4).

    .venv/bin/python bench/cold_parts.py [N] [--mode catalog|agent] [--runs 3]

Builds the bench workload of N environments (``workload.build``), then per run: an
empty dev Consul on loopback, jailsyncd's first cycle in this process (built as
``once`` builds it) with ``time.perf_counter`` around each part (CBSD read, desired
state, the mode's records, the read of Consul, plan, the write phase); and, in
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

PARTS = ("cbsd read", "desired", "records", "consul read", "plan", "writes")


def timed_parts(reconciler: Any) -> dict[str, float]:
    """Wrap each part of ``reconciler``'s cycle so that its wall time adds up here."""
    spent = dict.fromkeys(PARTS, 0.0)

    def wrap(owner: Any, attr: str, part: str) -> None:
        inner: Callable[..., Any] = getattr(owner, attr)

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                spent[part] += time.perf_counter() - started

        setattr(owner, attr, timed)

    wrap(reconciler.source, "read", "cbsd read")
    wrap(reconcile, "build_desired", "desired")
    wrap(reconciler.store, "records", "records")
    wrap(reconciler.store, "read", "consul read")
    wrap(reconciler, "plan", "plan")
    wrap(reconciler, "apply", "writes")
    return spent


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("n", nargs="?", type=int, default=5000)
    p.add_argument("--mode", choices=("catalog", "agent"), default="catalog")
    p.add_argument("--runs", type=int, default=3)
    a = p.parse_args(argv)
    opts = bench.Options(consul_bin=bench.consul_binary())
    tmp = Path(tempfile.mkdtemp(prefix="jailsyncd-coldparts-"))
    load = workload.build(tmp / "workdir", a.n)
    print(f"cold converge, N = {a.n:,}, {a.mode} mode, health off (ms)\n")
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
