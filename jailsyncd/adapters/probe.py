"""Probe jails: ICMP echo (icmplib), TCP connect and HTTP GET (standard library).

Called by ``healthloop`` once per health round, and by ``reconcile`` for jails
about to be registered. The only module that imports icmplib.

ICMP: one socket per address family sends every echo request of the round and
collects replies until the timeout (or until every address answered), so a round
costs one timeout however many jails there are, and a dead jail never delays the
others. With a rate limit (``rate``, requests per second; FreeBSD's kernel drops
echo replies above ``net.inet.icmp.icmplim``) requests are spaced evenly and replies
are read while waiting, so the round takes ``requests / rate`` longer. As root it is
a raw socket (FreeBSD and Linux); otherwise an unprivileged datagram ICMP socket
(Linux only, with the group in ``net.ipv4.ping_group_range``; FreeBSD has none).
Platform differences come from ``platform``; its socket seam lets tests answer like
FreeBSD's kernel. ``run`` calls ``keep_open()`` before it switches to ``daemon.user``
(``privileges``): the sockets are then opened once and kept, because a raw socket can
only be created as root but keeps working afterwards.

Failures of the prober itself (a socket that cannot be opened mid-run, a socket
option or a read that fails) are never a jail's failure: the affected probes get no
result (their checks keep their status) and the round reports a ``problem``.
TCP and HTTP probes run concurrently in a small thread pool, each bounded by the
same timeout as a whole (an HTTP answer that trickles in is cut at it).
"""

from __future__ import annotations

import contextlib
import errno
import http.client
import os
import select
import socket
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from icmplib import ICMPRequest, ICMPv4Socket, ICMPv6Socket
from icmplib.exceptions import ICMPLibError, TimeoutExceeded

from jailsyncd.errors import ExitCode, JailsyncdError
from jailsyncd.health import Probe, ProbeResult, RoundReport
from jailsyncd.platform import Platform, current

#: ``Probe`` and ``RoundReport`` are core values (``health``); re-exported here.
__all__ = ["Probe", "ProbeResult", "ProbeUnavailable", "Prober", "RoundReport"]

_ECHO_REPLY = {4: 0, 6: 129}
#: ICMP errors that say the destination cannot be reached (v4: unreachable, time
#: exceeded; v6: unreachable, time exceeded).
_ERRORS = {4: {3: "destination unreachable", 11: "time exceeded"}, 6: {1: "destination unreachable", 3: "time exceeded"}}
#: The receive buffer asked for first (halved until the kernel accepts).
_RCVBUF = 8 * 1024 * 1024
#: Send errors that say the destination cannot be reached: the jail's failure. Any
#: other error (ENOBUFS, ENOMEM, EBADF...) is the prober's own problem.
_UNREACHABLE = {
    errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EHOSTDOWN, errno.ENETDOWN,  # no route, host down
    errno.EADDRNOTAVAIL, errno.EINVAL, errno.EAFNOSUPPORT,  # an address no packet can go to
    errno.EACCES, errno.EPERM,  # a firewall rule, a broadcast address
}


def _jails_fault(exc: BaseException) -> bool:
    """Whether a failed send says something about the destination (its failure) rather
    than about the prober (ENOBUFS, ENOMEM, EBADF...: ours, never a jail's)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, socket.gaierror):  # the address does not even parse
            return True
        seen = seen.__cause__ or seen.__context__
    code = _errno_of(exc)
    return code is None or code in _UNREACHABLE


class ProbeUnavailable(JailsyncdError):
    """ICMP sockets cannot be opened (not root, and not allowed unprivileged)."""

    exit_code = ExitCode.PROBE_UNAVAILABLE


def _errno_of(exc: BaseException) -> int | None:
    """The OSError errno behind an exception (icmplib keeps only the text, the original
    is its context)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno is not None:
            return seen.errno
        seen = seen.__cause__ or seen.__context__
    return None


def _why(exc: BaseException) -> str:
    """The system's words for an error (icmplib's own texts hide the errno)."""
    code = _errno_of(exc)
    if code is None:
        return str(exc)
    return f"{os.strerror(code)}, {errno.errorcode.get(code, code)}"


def _socket_classes(platform: Platform) -> dict[int, type]:
    """icmplib's socket classes, opening their socket through ``platform.socket`` (the
    seam where a test answers like FreeBSD's socket())."""

    class V4(ICMPv4Socket):  # type: ignore[misc]  # icmplib has no type information
        __slots__ = ()

        def _create_socket(self, type: int) -> socket.socket:
            return platform.socket(socket.AF_INET, type, socket.IPPROTO_ICMP)

    class V6(ICMPv6Socket):  # type: ignore[misc]
        __slots__ = ()

        def _create_socket(self, type: int) -> socket.socket:
            return platform.socket(socket.AF_INET6, type, socket.IPPROTO_ICMPV6)

    return {4: V4, 6: V6}


class _Pace:
    """Evenly spaced send slots shared by every thread using one prober (a round and a
    cycle's probe of new jails may run at once): at most ``rate`` per second."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._next = 0.0
        self._clock = clock

    def slot(self, rate: float) -> float:
        """Reserve the next slot; returns when it is (monotonic seconds)."""
        with self._lock:
            now = self._clock()
            at = max(now, self._next)
            self._next = at + 1.0 / rate
            return at


class Prober:
    """Runs one round of probes. Holds no sockets between rounds, unless ``keep_open()``
    was called."""

    def __init__(self, *, privileged: bool | None = None, max_threads: int = 32, platform: Platform | None = None, rate: float = 0) -> None:
        self.platform = platform or current()
        self.privileged = self.platform.euid() == 0 if privileged is None else privileged
        self.max_threads = max_threads
        #: Echo requests per second, all addresses together; 0: no limit.
        self.rate = rate
        self._ident = os.getpid() & 0xFFFF
        self._classes = _socket_classes(self.platform)
        self._pace = _Pace()
        #: What the kernel granted each socket already sized: a socket kept across
        #: rounds is sized once (as root: later, without privileges, asking again
        #: could only shrink it).
        self._granted: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()
        self._seq_lock = threading.Lock()
        self._next_seq = 0
        #: Sockets kept for the process's life by family (4, 6), or the reason one
        #: could not be opened; empty: each round opens and closes its own.
        self._kept: dict[int, Any] = {}
        self._kept_locks = {4: threading.Lock(), 6: threading.Lock()}

    def keep_open(self) -> None:
        """Open the ICMPv4 and ICMPv6 sockets now (as root) and use them in every
        round. Raises ``ProbeUnavailable`` like ``check()`` when ICMPv4 cannot work;
        an ICMPv6 socket that cannot be opened is reported by each round."""
        self.check()
        for family in (4, 6):
            try:
                sock = self._classes[family](privileged=self.privileged)
            except (ICMPLibError, OSError) as exc:
                self._kept[family] = f"cannot open a socket ({_why(exc)})"
                continue
            self._kept[family] = sock
            with contextlib.suppress(OSError):  # sized now, while root may; a round retries
                self._granted[sock.sock] = self._grow_buffer(sock.sock)

    def check(self) -> None:
        """Raise ``ProbeUnavailable`` now if ICMP cannot work (for a start-up check).
        Every error of the ICMP library ends here: on FreeBSD a non-root socket() is
        refused with EPROTONOSUPPORT (no ping sockets), not EPERM."""
        try:
            self._classes[4](privileged=self.privileged).close()
        except (ICMPLibError, OSError) as exc:
            raise ProbeUnavailable(
                f"health: cannot open an ICMP socket ({_why(exc)}); {self.platform.icmp_unavailable_hint(self.privileged)}"
            ) from exc

    def run(self, probes: list[Probe], *, count: int, timeout: float, rate: float | None = None) -> dict[str, ProbeResult]:
        """Results by ``Probe.key``; a probe the prober itself could not run has none."""
        return self.run_round(probes, count=count, timeout=timeout, rate=rate).results

    def run_round(self, probes: list[Probe], *, count: int, timeout: float, rate: float | None = None) -> RoundReport:
        """``rate``: echo requests per second for this round (default: ``self.rate``)."""
        rate = self.rate if rate is None else rate
        pings = [p for p in probes if p.kind == "ping"]
        others = [p for p in probes if p.kind != "ping"]
        report = RoundReport()
        with ThreadPoolExecutor(max_workers=max(1, min(self.max_threads, len(others)))) as pool:
            futures = {p.key: pool.submit(_probe_tcp_or_http, p, timeout) for p in others}
            by_address = self._ping({p.address for p in pings}, count, timeout, report, rate)
            for p in pings:
                if p.address in by_address:
                    report.results[p.key] = by_address[p.address]
            for key, future in futures.items():
                try:
                    report.results[key] = future.result()
                except Exception as exc:  # noqa: BLE001 - a bug in one probe is not the jail's failure
                    report.problems.append(f"{key}: {type(exc).__name__}: {exc}")
        return report

    def ping(self, addresses: set[str], *, count: int, timeout: float, rate: float | None = None) -> dict[str, ProbeResult]:
        return self._ping(addresses, count, timeout, RoundReport(), self.rate if rate is None else rate)

    def _ping(self, addresses: set[str], count: int, timeout: float, report: RoundReport, rate: float) -> dict[str, ProbeResult]:
        results: dict[str, ProbeResult] = {}
        v4 = sorted(a for a in addresses if ":" not in a)
        v6 = sorted(a for a in addresses if ":" in a)
        for family, batch in ((4, v4), (6, v6)):
            if not batch:
                continue
            try:
                results.update(self._ping_family(family, batch, count, timeout, report, rate))
            except Exception as exc:  # noqa: BLE001 - any failure of ours is a problem, never a crash
                report.problems.append(f"ICMPv{family}: {len(batch)} addresses not probed: {type(exc).__name__}: {_why(exc)}")
        return results

    def _ping_family(self, family: int, addresses: list[str], count: int, timeout: float, report: RoundReport, rate: float) -> dict[str, ProbeResult]:
        if self._kept:
            kept = self._kept[family]
            if isinstance(kept, str):
                report.problems.append(f"ICMPv{family}: {len(addresses)} addresses not probed: {kept}")
                return {}
            # One exchange at a time on a shared socket: a round and a cycle's probe of
            # new jails running at once would each read, and drop, the other's replies.
            with self._kept_locks[family]:
                _discard_queued(kept.sock)
                return self._exchange(family, kept, addresses, count, timeout, report, rate)
        try:
            sock = self._classes[family](privileged=self.privileged)
        except (ICMPLibError, OSError) as exc:
            report.problems.append(
                f"ICMPv{family}: {len(addresses)} addresses not probed: cannot open a socket ({_why(exc)}); "
                f"{self.platform.icmp_unavailable_hint(self.privileged)}"
            )
            return {}
        try:
            return self._exchange(family, sock, addresses, count, timeout, report, rate)
        finally:
            sock.close()

    def _grow_buffer(self, raw: socket.socket) -> int:
        """Enlarge the receive buffer as far as the kernel allows, return its size.

        Replies from hundreds of jails arrive while we are still sending. FreeBSD
        refuses a size above sb_max_adj with ENOBUFS (and RLIMIT_SBSIZE the same way):
        ask for half as much until it accepts. Linux clamps SO_RCVBUF silently;
        SO_RCVBUFFORCE (root) does not."""
        for option in self.platform.receive_buffer_options(self.privileged):
            size = _RCVBUF
            while size >= 4096:
                try:
                    raw.setsockopt(socket.SOL_SOCKET, option, size)
                except OSError as exc:
                    if exc.errno != errno.ENOBUFS:
                        break  # not this option (EPERM without root, ENOPROTOOPT): the next one
                    size //= 2
                    continue
                return int(raw.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))
        return int(raw.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))  # the kernel's default

    def _exchange(self, family: int, sock: Any, addresses: list[str], count: int, timeout: float, report: RoundReport, rate: float) -> dict[str, ProbeResult]:
        raw = sock.sock
        try:
            granted = self._granted.get(raw)
            if granted is None:
                granted = self._granted[raw] = self._grow_buffer(raw)
        except OSError as exc:
            report.problems.append(f"ICMPv{family}: cannot size the receive buffer ({_why(exc)}); draining after every request")
            granted = 0
        # Read what has arrived before the buffer can be half full: how often depends on
        # what the kernel granted (9,216 bytes by default on FreeBSD: ~90 replies).
        drain_every = max(1, self.platform.replies_fit(granted) // 2) if granted else 1
        sent_at: dict[int, float] = {}
        owner: dict[int, str] = {}
        rtts: dict[str, list[float]] = {a: [] for a in addresses}
        errors: dict[str, str] = {}
        unprobed: set[str] = set()
        ident = self._ident
        pending: set[int] = set()
        receive_failures: list[str] = []

        def take(reply: Any) -> None:
            if reply.id != ident or reply.sequence not in pending:
                return  # another process's ping, or our own request seen by the raw socket
            address = owner[reply.sequence]
            if reply.type == _ECHO_REPLY[family] and reply.source == address:
                pending.discard(reply.sequence)
                rtts[address].append((time.monotonic() - sent_at[reply.sequence]) * 1000)
            elif reply.type in _ERRORS[family]:
                pending.discard(reply.sequence)
                errors.setdefault(address, f"{_ERRORS[family][reply.type]} (code {reply.code}) from {reply.source}")

        def receive(until: float, *, until_answered: bool = False) -> None:
            """Take the replies that arrive until ``until`` (monotonic; a past time:
            only those already queued), or until none is pending if ``until_answered``."""
            while not receive_failures and not (until_answered and not pending):
                remaining = until - time.monotonic()
                if not select.select([raw], [], [], max(0.0, remaining))[0]:
                    return
                try:
                    take(sock.receive(None, timeout=0.05))
                except TimeoutExceeded:
                    continue
                except ICMPLibError as exc:
                    receive_failures.append(_why(exc))

        since_drain = 0
        # Sequence numbers go on from round to round (and between concurrent rounds),
        # so that a reply that comes after its round's timeout is never taken for a
        # later round's (a raw socket sees every echo reply to the host).
        with self._seq_lock:
            seq, self._next_seq = self._next_seq, (self._next_seq + len(addresses) * count) & 0xFFFF
        for address in addresses:
            for _ in range(count):
                if rate > 0:
                    at = self._pace.slot(rate)
                    waited = at - time.monotonic()
                    if waited > 0:
                        report.paced += waited
                        receive(at)  # replies are read while waiting for the slot
                        since_drain = 0
                request = ICMPRequest(destination=address, id=ident, sequence=seq)
                try:
                    sock.send(request)
                except ICMPLibError as exc:
                    if _jails_fault(exc):
                        errors[address] = f"send failed: {exc}"
                    else:  # ENOBUFS and the like: ours, not the jail's
                        unprobed.add(address)
                        report.problems.append(f"{address}: send failed: {_why(exc)}")
                    break
                ident = request.id  # unprivileged Linux sockets get an ID from the kernel
                sent_at[seq] = time.monotonic()
                owner[seq] = address
                pending.add(seq)
                seq = (seq + 1) & 0xFFFF
                since_drain += 1
                if since_drain >= drain_every:
                    receive(0)
                    since_drain = 0
        receive(time.monotonic() + timeout, until_answered=True)
        if receive_failures:
            report.problems.append(f"ICMPv{family}: reading replies failed ({receive_failures[0]}); unanswered addresses not judged")
            unprobed |= {owner[s] for s in pending}
        return {a: _ping_result(a, count, rtts[a], errors.get(a), timeout) for a in addresses if a not in unprobed or rtts[a]}


def _discard_queued(raw: socket.socket) -> None:
    """Throw away what a kept socket received since the last round (a raw socket gets a
    copy of every ICMP packet the host receives), so that it cannot fill the buffer."""
    while select.select([raw], [], [], 0)[0]:
        try:
            raw.recv(65535)
        except OSError:
            return


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
        # The socket's timeout bounds each read, not the answer: a server that sends a
        # line every so often would hold the probe (and the round) as long as it
        # likes. At the deadline the connection is shut down, ending any read.
        late = threading.Event()

        def cut() -> None:
            late.set()
            with contextlib.suppress(OSError, AttributeError):
                conn.sock.shutdown(socket.SHUT_RDWR)

        try:
            conn.connect()  # bounded by the timeout itself
            watchdog = threading.Timer(max(0.0, started + timeout - time.monotonic()), cut)
            watchdog.daemon = True
            watchdog.start()
            try:
                conn.request("GET", path, headers={"User-Agent": "jailsyncd-health"})
                status = conn.getresponse().status
            except (OSError, http.client.HTTPException):
                if not late.is_set():
                    raise
            finally:
                watchdog.cancel()
            # Cut: an error, or headers that seemed to end where the shutdown ended them.
            if late.is_set():
                return ProbeResult(False, f"{probe.kind} {target}: no complete answer within {timeout:g}s")
        finally:
            conn.close()
        ok = 200 <= status < 400
        return ProbeResult(ok, f"http://{target}{path}: HTTP {status} in {(time.monotonic() - started) * 1000:.1f} ms")
    except (OSError, http.client.HTTPException) as exc:
        return ProbeResult(False, f"{probe.kind} {target}: {type(exc).__name__}: {exc}"[:300])
