"""Probe jails: ICMP echo (icmplib), TCP connect and HTTP GET (standard library).

Called by ``healthloop`` once per health round, and by ``reconcile`` for jails
about to be registered. The only module that imports icmplib.

ICMP: one socket per address family sends every echo request of the round at once
and collects replies until the timeout (or until every address answered), so a round
costs one timeout however many jails there are, and a dead jail never delays the
others. As root it is a raw socket (FreeBSD and Linux); otherwise an unprivileged
datagram ICMP socket (Linux needs the group in ``net.ipv4.ping_group_range``).
TCP and HTTP probes run concurrently in a small thread pool, each bounded by the
same timeout.
"""

from __future__ import annotations

import http.client
import os
import select
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from icmplib import ICMPRequest, ICMPv4Socket, ICMPv6Socket
from icmplib.exceptions import ICMPLibError, SocketPermissionError, TimeoutExceeded

from jailsyncd.errors import ExitCode, JailsyncdError
from jailsyncd.health import ProbeResult

_ECHO_REPLY = {4: 0, 6: 129}
#: ICMP errors that say the destination cannot be reached (v4: unreachable, time
#: exceeded; v6: unreachable, time exceeded).
_ERRORS = {4: {3: "destination unreachable", 11: "time exceeded"}, 6: {1: "destination unreachable", 3: "time exceeded"}}
_RCVBUF = 8 * 1024 * 1024


class ProbeUnavailable(JailsyncdError):
    """ICMP sockets cannot be opened (not root, and not allowed unprivileged)."""

    exit_code = ExitCode.PROBE_UNAVAILABLE


@dataclass(frozen=True)
class Probe:
    """One thing to probe: ``kind`` is ``ping``, ``tcp`` or ``http:/path``."""

    key: str
    kind: str
    address: str
    port: int = 0


class Prober:
    """Runs one round of probes. Holds no sockets between rounds."""

    def __init__(self, *, privileged: bool | None = None, max_threads: int = 32) -> None:
        self.privileged = os.geteuid() == 0 if privileged is None else privileged
        self.max_threads = max_threads
        self._ident = os.getpid() & 0xFFFF

    def check(self) -> None:
        """Raise ``ProbeUnavailable`` now if ICMP cannot work (for a start-up check)."""
        try:
            ICMPv4Socket(privileged=self.privileged).close()
        except SocketPermissionError:
            raise ProbeUnavailable(
                "health: cannot open an ICMP socket; run as root, add the group to "
                "net.ipv4.ping_group_range (Linux), or set health.enabled = false"
            ) from None

    def run(self, probes: list[Probe], *, count: int, timeout: float) -> dict[str, ProbeResult]:
        """Results by ``Probe.key``; every probe gets one."""
        pings = [p for p in probes if p.kind == "ping"]
        others = [p for p in probes if p.kind != "ping"]
        results: dict[str, ProbeResult] = {}
        with ThreadPoolExecutor(max_workers=max(1, min(self.max_threads, len(others)))) as pool:
            futures = {p.key: pool.submit(_probe_tcp_or_http, p, timeout) for p in others}
            by_address = self.ping({p.address for p in pings}, count=count, timeout=timeout)
            for p in pings:
                results[p.key] = by_address[p.address]
            for key, future in futures.items():
                results[key] = future.result()
        return results

    def ping(self, addresses: set[str], *, count: int, timeout: float) -> dict[str, ProbeResult]:
        results: dict[str, ProbeResult] = {}
        v4 = sorted(a for a in addresses if ":" not in a)
        v6 = sorted(a for a in addresses if ":" in a)
        for family, batch, cls in ((4, v4, ICMPv4Socket), (6, v6, ICMPv6Socket)):
            if batch:
                results.update(self._ping_family(family, cls, batch, count, timeout))
        return results

    def _ping_family(self, family: int, cls, addresses: list[str], count: int, timeout: float) -> dict[str, ProbeResult]:
        try:
            sock = cls(privileged=self.privileged)
        except SocketPermissionError:
            raise ProbeUnavailable("health: cannot open an ICMP socket (not root and not in ping_group_range)") from None
        except ICMPLibError as exc:
            return {a: ProbeResult(False, f"{a}: cannot open ICMPv{family} socket ({exc})") for a in addresses}
        try:
            return self._exchange(family, sock, addresses, count, timeout)
        finally:
            sock.close()

    def _exchange(self, family: int, sock, addresses: list[str], count: int, timeout: float) -> dict[str, ProbeResult]:
        raw = sock.sock
        try:  # replies from hundreds of jails arrive while we are still sending
            # Python has no SO_RCVBUFFORCE constant; 33 is Linux's (it lifts rmem_max as root).
            raw.setsockopt(socket.SOL_SOCKET, 33 if sys.platform.startswith("linux") else socket.SO_RCVBUF, _RCVBUF)
        except OSError:
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RCVBUF)
        sent_at: dict[int, float] = {}
        owner: dict[int, str] = {}
        rtts: dict[str, list[float]] = {a: [] for a in addresses}
        errors: dict[str, str] = {}
        ident = self._ident
        pending: set[int] = set()

        def take(reply) -> None:
            if reply.id != ident or reply.sequence not in pending:
                return  # another process's ping, or our own request seen by the raw socket
            address = owner[reply.sequence]
            if reply.type == _ECHO_REPLY[family] and reply.source == address:
                pending.discard(reply.sequence)
                rtts[address].append((time.monotonic() - sent_at[reply.sequence]) * 1000)
            elif reply.type in _ERRORS[family]:
                pending.discard(reply.sequence)
                errors.setdefault(address, f"{_ERRORS[family][reply.type]} (code {reply.code}) from {reply.source}")

        def drain() -> None:
            """Read what has arrived while still sending, so that a full receive buffer
            never drops replies (the buffer size is capped by the kernel)."""
            while select.select([raw], [], [], 0)[0]:
                try:
                    take(sock.receive(None, timeout=0.01))
                except ICMPLibError:
                    return

        for index, address in enumerate(addresses):
            for n in range(count):
                seq = (index * count + n) & 0xFFFF
                request = ICMPRequest(destination=address, id=ident, sequence=seq)
                try:
                    sock.send(request)
                except ICMPLibError as exc:
                    errors[address] = f"send failed: {exc}"
                    break
                ident = request.id  # unprivileged Linux sockets get an ID from the kernel
                sent_at[seq] = time.monotonic()
                owner[seq] = address
                pending.add(seq)
            if index % 32 == 31:
                drain()
        deadline = time.monotonic() + timeout
        while pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                reply = sock.receive(None, timeout=remaining)
            except TimeoutExceeded:
                break
            except ICMPLibError:
                continue
            take(reply)
        return {a: _ping_result(a, count, rtts[a], errors.get(a), timeout) for a in addresses}


def _ping_result(address: str, count: int, rtts: list[float], error: str | None, timeout: float) -> ProbeResult:
    if rtts:
        loss = 100 * (count - len(rtts)) / count
        return ProbeResult(True, f"{address}: {len(rtts)}/{count} replies, {loss:.0f}% loss, rtt min/avg/max {min(rtts):.2f}/{sum(rtts) / len(rtts):.2f}/{max(rtts):.2f} ms")
    if error:
        return ProbeResult(False, f"{address}: {error}")
    return ProbeResult(False, f"{address}: 0/{count} replies within {timeout:g}s, 100% loss")


def _probe_tcp_or_http(probe: Probe, timeout: float) -> ProbeResult:
    target = f"{probe.address}:{probe.port}" if ":" not in probe.address else f"[{probe.address}]:{probe.port}"
    started = time.monotonic()
    try:
        if probe.kind == "tcp":
            with socket.create_connection((probe.address, probe.port), timeout=timeout):
                pass
            return ProbeResult(True, f"tcp {target}: connected in {(time.monotonic() - started) * 1000:.1f} ms")
        path = probe.kind.removeprefix("http:")
        conn = http.client.HTTPConnection(probe.address, probe.port, timeout=timeout)
        try:
            conn.request("GET", path, headers={"User-Agent": "jailsyncd-health"})
            status = conn.getresponse().status
        finally:
            conn.close()
        ok = 200 <= status < 400
        return ProbeResult(ok, f"http://{target}{path}: HTTP {status} in {(time.monotonic() - started) * 1000:.1f} ms")
    except (OSError, http.client.HTTPException) as exc:
        return ProbeResult(False, f"{probe.kind} {target}: {type(exc).__name__}: {exc}"[:300])
