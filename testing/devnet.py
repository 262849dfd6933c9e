"""Private network namespaces for health tests, the demo and benchmarks (Linux, root).

Used by ``tests/`` and ``bench/``; never by the daemon. A ``NetNS`` has only ``lo``:
"up" jails get their addresses on that ``lo``, "down" jails use addresses with no
route, so no probe can ever leave the namespace. Processes run inside it through
``ip netns exec``; Python code runs inside it on a thread that joined it with
setns(2) (network namespaces are per thread on Linux).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

CLONE_NEWNET = 0x40000000


def available() -> str | None:
    """None when namespaces can be made here, else why not."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if subprocess.run(["ip", "-V"], capture_output=True).returncode != 0:
        return "iproute2 (ip) is not installed"
    return None


class NetNS:
    def __init__(self, prefix: str = "jsd") -> None:
        self.name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        self._pool: ThreadPoolExecutor | None = None
        self._inside = threading.local()

    def __enter__(self) -> "NetNS":
        return self.create()

    def __exit__(self, *exc: object) -> None:
        self.delete()

    def ip(self, *args: str) -> None:
        subprocess.run(["ip", "-n", self.name, *args], check=True, capture_output=True)

    def create(self) -> "NetNS":
        subprocess.run(["ip", "netns", "add", self.name], check=True, capture_output=True)
        self.ip("link", "set", "lo", "up")
        return self

    def add_address(self, address: str) -> None:
        self.ip("addr", "add", f"{address}/{128 if ':' in address else 32}", "dev", "lo")

    def del_address(self, address: str) -> None:
        self.ip("addr", "del", f"{address}/{128 if ':' in address else 32}", "dev", "lo")

    def prefix(self) -> list[str]:
        """Prepend to an argv to run it inside the namespace."""
        return ["ip", "netns", "exec", self.name]

    def _enter(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(f"/var/run/netns/{self.name}", os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"setns into {self.name} failed")
        finally:
            os.close(fd)
        self._inside.yes = True

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``fn`` on a thread inside the namespace and return its result (directly,
        when called from that thread already)."""
        if getattr(self._inside, "yes", False):
            return fn(*args, **kwargs)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, initializer=self._enter, thread_name_prefix=self.name)
        return self._pool.submit(fn, *args, **kwargs).result()

    def delete(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        pids = subprocess.run(["ip", "netns", "pids", self.name], capture_output=True, text=True).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)


def join(host: NetNS, peer: NetNS, *, routed: str, net: str = "10.79.0") -> None:
    """A veth pair between two namespaces (``{net}.1/30`` in ``host``, ``{net}.2/30`` in
    ``peer``), and a route in ``host`` sending ``routed`` (a prefix whose addresses
    ``peer`` holds) through it. Packets stay inside the two namespaces."""
    host.ip("link", "add", "veth-h", "type", "veth", "peer", "name", "veth-p", "netns", peer.name)
    host.ip("addr", "add", f"{net}.1/30", "dev", "veth-h")
    host.ip("link", "set", "veth-h", "up")
    peer.ip("addr", "add", f"{net}.2/30", "dev", "veth-p")
    peer.ip("link", "set", "veth-p", "up")
    host.ip("route", "add", routed, "via", f"{net}.2")


def limit_echo_replies(ns: NetNS, per_second: int, burst: int) -> None:
    """Make the kernel of ``ns`` drop the echo replies it sends beyond ``per_second``
    (after a burst of ``burst``), as FreeBSD does beyond ``net.inet.icmp.icmplim``:
    Linux does it for the ICMP types in ``net.ipv4.icmp_ratemask`` (echo reply is type 0,
    not in it by default) from one bucket per namespace (``icmp_msgs_per_sec``,
    ``icmp_msgs_burst``); the per-destination limit (``icmp_ratelimit``) is turned off so
    that only that global one applies, like icmplim."""
    mask = int(sysctl(ns, "net.ipv4.icmp_ratemask")) | 1
    for name, value in (
        ("net.ipv4.icmp_ratemask", mask),
        ("net.ipv4.icmp_msgs_per_sec", per_second),
        ("net.ipv4.icmp_msgs_burst", burst),
        ("net.ipv4.icmp_ratelimit", 0),
    ):
        subprocess.run([*ns.prefix(), "sysctl", "-qw", f"{name}={value}"], check=True, capture_output=True)


def sysctl(ns: NetNS, name: str) -> str:
    return subprocess.run([*ns.prefix(), "sysctl", "-n", name], check=True, capture_output=True, text=True).stdout.strip()


def in_thread_of(netns: NetNS | None) -> Callable[[Callable[[], Any]], Any]:
    """A runner that calls a function inside ``netns`` (or directly when None)."""
    if netns is None:
        return lambda fn: fn()
    return netns.call

