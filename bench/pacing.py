"""A health round against a kernel that limits its echo replies, with and without pacing.

    scripts/setup && .venv/bin/python bench/pacing.py [--n 1000] [--limit 200] [--count 2]

FreeBSD's host answers the pings of every non-VNET jail and drops echo replies beyond
``net.inet.icmp.icmplim`` per second (200 by default). This reproduces that with Linux's
own echo-reply limit (``testing.devnet.limit_echo_replies``) in a peer namespace
holding N jail addresses, reached over a veth pair from the namespace where
jailsyncd's ``Prober`` runs, and prints one table row per rate: unpaced, jailsyncd's
FreeBSD default for that limit, and the limit itself. Needs root; every packet stays
inside the two namespaces created here.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from jailsyncd.adapters.probe import Probe, Prober  # noqa: E402
from testing.devnet import NetNS, available, join, limit_echo_replies  # noqa: E402
from jailsyncd.health import pace_of  # noqa: E402
from jailsyncd.platform import Platform  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/pacing.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=1000, help="jail addresses (default %(default)s)")
    p.add_argument("--limit", type=int, default=200, help="echo replies per second the jails' kernel sends (default %(default)s, icmplim's)")
    p.add_argument("--count", type=int, default=2, help="echo requests per address (default %(default)s, health.count's)")
    p.add_argument("--timeout", type=float, default=1.0, help="seconds to wait after the last request (default %(default)s)")
    p.add_argument("--interval", type=float, default=10.0, help="health.interval, to say whether a round fits (default %(default)s)")
    opts = p.parse_args(argv)
    why = available()
    if why:
        print(f"bench/pacing.py: {why}", file=sys.stderr)
        return 2
    freebsd_default = Platform("freebsd", sysctl={"net.inet.icmp.icmplim": str(opts.limit), "net.inet.icmp.icmplim_jitter": "16"}.get).default_rate_limit()
    addresses = [f"10.79.{16 + i // 250}.{i % 250 + 1}" for i in range(opts.n)]
    rows = []
    with NetNS("jbh") as host, NetNS("jbj") as jails, tempfile.TemporaryDirectory() as tmp:
        join(host, jails, routed="10.79.16.0/20")
        batch = Path(tmp) / "addresses"
        batch.write_text("".join(f"addr add {a}/32 dev lo\n" for a in addresses))
        subprocess.run(["ip", "-n", jails.name, "-batch", str(batch)], check=True, capture_output=True)
        limit_echo_replies(jails, opts.limit, burst=50)
        probes = [Probe(a, "ping", a) for a in addresses]
        for label, rate in (("no pacing", 0), (f"FreeBSD default for icmplim={opts.limit}", freebsd_default), ("at the limit", opts.limit)):
            time.sleep(1.0)  # let the kernel's bucket refill between rows
            prober = Prober(platform=Platform("linux"), rate=rate)
            started = time.monotonic()
            report = host.call(prober.run_round, probes, count=opts.count, timeout=opts.timeout)
            took = time.monotonic() - started
            ok = sum(r.ok for r in report.results.values())
            fits = pace_of(opts.n, count=opts.count, rate=rate, timeout=opts.timeout, interval=opts.interval).fits
            rows.append((label, f"{rate}/s" if rate else "none", f"{took:.1f} s", "yes" if took <= opts.interval else "no", fits, f"{ok:,} / {opts.n:,}"))
    print(f"Health round: {opts.n:,} jails x {opts.count} echo requests, kernel limit {opts.limit} replies/s, timeout {opts.timeout:g} s, interval {opts.interval:g} s\n")
    print("| rate_limit | requests/s | round | fits interval | predicted fit | jails passing |")
    print("|---|---|---|---|---|---|")
    for label, rate, took, fits, predicted, ok in rows:
        print(f"| {label} | {rate} | {took} | {fits} | {'yes' if predicted else 'no'} | {ok} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
