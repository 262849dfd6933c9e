"""What differs between FreeBSD (where jailsyncd runs) and Linux (where it is tested).

The one module that knows about operating-system differences; everything else asks a
``Platform``. Called by ``adapters/probe`` (ICMP sockets, receive buffers),
``adapters/discovery`` (the neighbor table), ``cli``
(the ICMP rate limit, messages that fit the system), ``pidfile`` (which program a
process ID belongs to) and by anything else that must read a sysctl or run a system
command.

A ``Platform`` is a frozen value whose outside calls are seams: ``sysctl`` (read one
value), ``run`` (run a command, capture its output) and ``socket`` (open a socket).
``current()`` wires the real ones; tests build ``Platform("freebsd", ...)`` with
recorded sysctl answers and a socket that answers like FreeBSD's kernel, so FreeBSD
behaviour is reproduced at the boundary where it happens. The FreeBSD facts below are
from freebsd-src (14.x): sys/kern/uipc_sockbuf.c, sys/kern/uipc_socket.c,
sys/netinet/ip_icmp.c, sys/netinet/raw_ip.c.
"""

from __future__ import annotations

import math
import os
import socket as _socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from jailsyncd.leases import Neighbor, parse_arp_libxo, parse_ip_neigh, parse_ndp

#: Linux's SO_RCVBUFFORCE (asm-generic/socket.h): as root it lifts net.core.rmem_max.
#: Python has no constant for it; the number means something else elsewhere.
_LINUX_SO_RCVBUFFORCE = 33


def _read_sysctl(name: str) -> str | None:
    """The real sysctl reader: ``sysctl -n`` where sysctl(8) exists (FreeBSD),
    /proc/sys on Linux. None when the name is unknown or unreadable."""
    if sys.platform.startswith("linux"):
        try:
            return Path("/proc/sys", *name.split(".")).read_text().strip()
        except OSError:
            return None
    try:
        done = subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _run(argv: list[str]) -> str | None:
    """The real command runner: stdout of ``argv``, None when it fails or is missing."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


_DISPLAY = {"freebsd": "FreeBSD", "linux": "Linux"}


def _system_name(platform: str) -> str:
    for name in ("freebsd", "linux"):
        if platform.startswith(name):
            return name
    return platform


@dataclass(frozen=True)
class EchoLimit:
    """The kernel's limit on the echo replies the host sends, per second."""

    #: Average replies per second the kernel allows.
    limit: int
    #: Random variation of that limit, either way (FreeBSD's ``icmplim_jitter``).
    jitter: int
    #: The sysctl to raise, as an operator would type it.
    sysctl: str


@dataclass(frozen=True)
class Platform:
    #: ``freebsd``, ``linux``, or whatever else ``sys.platform`` says (treated like Linux
    #: minus its Linux-only options).
    system: str
    #: Reads one sysctl by its dotted name; None when unknown.
    sysctl: Callable[[str], str | None] = _read_sysctl
    #: Runs a command, returns its stdout (None when it failed).
    run: Callable[[list[str]], str | None] = _run
    #: Opens a socket: ``socket(family, type, proto)``.
    socket: Callable[..., _socket.socket] = _socket.socket
    #: The effective user ID (0: root, raw sockets allowed).
    euid: Callable[[], int] = os.geteuid

    @property
    def freebsd(self) -> bool:
        return self.system == "freebsd"

    # -- processes ----------------------------------------------------------------

    def process_args(self, pid: int) -> list[str] | None:
        """The command line of process ``pid`` as a list of words; None when no such
        process exists (or this user cannot see it).

        Linux: /proc/PID/cmdline, NUL-separated. FreeBSD mounts no procfs by default,
        so ps(1) answers: ``-ww`` because without a terminal ps cuts its lines at 79
        columns (bin/ps/ps.c: ``termwidth = 79`` when no TIOCGWINSZ answers; ``-w``
        twice makes it UNLIMITED), ``command=`` for the command and its arguments with
        no header. ps joins the arguments with blanks, so they are split on blanks:
        enough to recognise a program, not to rebuild an argument holding a space."""
        if self.system == "linux":
            try:
                raw = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                return None
            return [word.decode(errors="replace") for word in raw.split(b"\0") if word]
        out = self.run(["ps", "-ww", "-o", "command=", "-p", str(pid)])
        if out is None or not out.strip():
            return None
        return out.split()

    # -- neighbor table -------------------------------------------------------------

    def neighbor_table(self) -> tuple[Neighbor, ...] | None:
        """The complete entries of the host's ARP and NDP tables (read-only: the
        commands only list them); None when a command failed.

        FreeBSD: ``arp -an --libxo json`` (usr.sbin/arp/arp.c: container ``arp``,
        list ``arp-cache``) and ``ndp -an`` (usr.sbin/ndp/ndp.c, its text columns,
        which every version prints); a failing ``ndp`` (a kernel without INET6)
        leaves the ARP entries, a failing ``arp`` fails the table. Linux: ``ip -json
        neigh`` (iproute2), both families at once."""
        if self.freebsd:
            arp = self.run(["arp", "-an", "--libxo", "json"])
            if arp is None:
                return None
            return parse_arp_libxo(arp) + parse_ndp(self.run(["ndp", "-an"]) or "")
        out = self.run(["ip", "-json", "neigh", "show"])
        return None if out is None else parse_ip_neigh(out)

    # -- ICMP sockets -------------------------------------------------------------

    @property
    def ping_sockets(self) -> bool:
        """Whether unprivileged ICMP datagram ("ping") sockets can exist here. FreeBSD
        has none: no protocol switch entry takes (SOCK_DGRAM, IPPROTO_ICMP), so
        socket() fails with EPROTONOSUPPORT (sys/kern/uipc_socket.c, socreate), and
        raw sockets need root (sys/netinet/raw_ip.c, rip_attach: PRIV_NETINET_RAW)."""
        return self.system == "linux"

    def icmp_unavailable_hint(self, privileged: bool) -> str:
        """What the operator can do when no ICMP socket can be opened."""
        if not privileged and not self.ping_sockets:
            return (
                f"{_DISPLAY.get(self.system, self.system)} has no unprivileged ICMP sockets: start jailsyncd as root "
                "(with daemon.user it switches to that user once its sockets are open), or set health.enabled = false"
            )
        if not privileged:
            return (
                "start jailsyncd as root (with daemon.user it switches to that user once its sockets are open), "
                "add its group to net.ipv4.ping_group_range, or set health.enabled = false"
            )
        return (
            "as root this means raw sockets are not allowed here (in a jail: allow.raw_sockets) "
            "or a resource limit was hit; or set health.enabled = false"
        )

    # -- receive buffers ------------------------------------------------------------

    def receive_buffer_options(self, privileged: bool) -> tuple[int, ...]:
        """Socket options to try, best first, to enlarge a receive buffer.

        Linux clamps SO_RCVBUF to net.core.rmem_max silently; as root SO_RCVBUFFORCE
        goes past it. FreeBSD has no such option: SO_RCVBUF fails with ENOBUFS above
        sb_max_adj (sys/kern/uipc_sockbuf.c, sbreserve_locked), so the caller must ask
        for less until the kernel accepts."""
        if self.system == "linux" and privileged:
            return (_LINUX_SO_RCVBUFFORCE, _socket.SO_RCVBUF)
        return (_socket.SO_RCVBUF,)

    def replies_fit(self, granted: int) -> int:
        """How many echo replies a receive buffer of ``granted`` bytes (as getsockopt
        reports it) holds before the kernel drops the next one; on the low side, so
        that the prober drains early rather than late.

        FreeBSD: a raw socket's record is its sockaddr plus the packet (~100 bytes for a
        64-byte echo) counted in sb_ccc against the buffer, and two mbufs (2 x MSIZE =
        512 bytes) counted in sb_mbcnt against min(8 x buffer, kern.ipc.maxsockbuf)
        (sballoc, sbreserve_locked and sbspace in sys/kern/uipc_sockbuf.c): the default
        9,216 bytes (net.inet.raw.recvspace) hold ~90 replies. Linux: getsockopt reports
        twice what was set and each reply costs its skb's truesize (~770 bytes)."""
        if not self.freebsd:
            return max(1, granted // 1024)
        sb_max = _int(self.sysctl("kern.ipc.maxsockbuf")) or 2 * 1024 * 1024
        return max(1, min(granted // 100, min(8 * granted, sb_max) // 512))

    # -- ICMP echo rate -------------------------------------------------------------

    def echo_limit(self) -> EchoLimit | None:
        """The kernel's limit on the echo replies this host sends, or None (unlimited).

        Only FreeBSD limits echo replies by default: net.inet.icmp.icmplim (200 per
        second, per VNET; 0 disables it), plus or minus net.inet.icmp.icmplim_jitter
        (16), counted per one-second window by badport_bandlim(BANDLIM_ICMP_ECHO) in
        icmp_input (sys/netinet/ip_icmp.c). Non-VNET jails' addresses are the host's own
        aliases, so the host answers their pings and this limit applies to all of them.
        Linux limits echo replies only if net.ipv4.icmp_ratemask says so (not by
        default)."""
        if not self.freebsd:
            return None
        limit = _int(self.sysctl("net.inet.icmp.icmplim"))
        if not limit:
            return None
        jitter = _int(self.sysctl("net.inet.icmp.icmplim_jitter"))
        return EchoLimit(limit, 16 if jitter is None else jitter, "net.inet.icmp.icmplim")

    def default_rate_limit(self) -> int:
        """Echo requests per second jailsyncd sends when ``health.rate_limit`` is unset:
        below the kernel's limit less its jitter, leaving a tenth for other pingers
        (monitoring, consul-esm); 0 (unlimited) where the kernel sets no limit."""
        return _rate_below(self.echo_limit())


    def raise_limit_hint(self, needed: float, explicit: bool) -> str:
        """What to change so that ``needed`` echo requests per second are allowed;
        ``explicit``: the rate in force comes from ``health.rate_limit``."""
        rate = math.ceil(needed)
        limit = self.echo_limit()
        if limit is None:  # only health.rate_limit paces (0 = unlimited would always fit)
            return f"raise health.rate_limit to {rate}"
        # the smallest icmplim whose default_rate_limit() reaches ``needed``
        value = math.ceil(needed * 10 / 9) + limit.jitter + 1
        if explicit and _rate_below(limit) >= rate:
            return f"raise health.rate_limit to {rate} (below {limit.sysctl}={limit.limit})"
        fix = f"sysctl {limit.sysctl}={value} (and in /etc/sysctl.conf)"
        return f"{fix}, and raise health.rate_limit to {rate} or remove it" if explicit else fix


def _rate_below(limit: EchoLimit | None) -> int:
    """``default_rate_limit`` for a kernel limit already read (each read of a sysctl
    is a process on FreeBSD)."""
    if limit is None:
        return 0
    return max(1, (limit.limit - limit.jitter) * 9 // 10)


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def current() -> Platform:
    """The platform jailsyncd runs on, with the real seams."""
    return Platform(_system_name(sys.platform))
