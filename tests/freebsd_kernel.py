"""Sockets that answer like FreeBSD's kernel, for tests that run on Linux.

Only the answers that differ are reproduced, at the call where FreeBSD gives them;
everything else is the real Linux socket underneath (real packets, real replies).
Sources (freebsd-src, 14.x):

- sys/kern/uipc_sockbuf.c: ``sbreserve_locked()`` refuses a buffer larger than
  ``sb_max_adj = sb_max * MCLBYTES / (MSIZE + MCLBYTES)`` (``sb_max`` is
  ``kern.ipc.maxsockbuf``, 2 MiB by default: 1,864,135 bytes), and ``sbsetopt()``
  turns that into ENOBUFS for ``setsockopt(SO_RCVBUF)``; ``getsockopt(SO_RCVBUF)``
  reports ``sb_hiwat`` as set (no doubling, unlike Linux).
- sys/netinet/raw_ip.c: a raw socket starts with ``net.inet.raw.recvspace`` (9,216
  bytes) and ``rip_attach()`` needs ``PRIV_NETINET_RAW`` (root): EPERM otherwise.
- sys/kern/uipc_socket.c (``socreate``) with sys/netinet/in_proto.c: no protocol
  switch entry takes ``(SOCK_DGRAM, IPPROTO_ICMP)``, so socket() answers
  EPROTONOSUPPORT: FreeBSD has no unprivileged ICMP ("ping") sockets. ICMP reaches
  userland only through raw sockets: sys/netinet/ip_icmp.c's ``icmp_input`` hands
  echo replies to ``rip_input`` (raw_ip.c), the raw listeners.
- Linux's option 33 (SO_RCVBUFFORCE) does not exist there: ENOPROTOOPT.
"""

from __future__ import annotations

import errno
import os
import socket

from jailsyncd.platform import Platform

SB_MAX = 2 * 1024 * 1024  # SB_MAX in sys/sys/sockbuf.h, kern.ipc.maxsockbuf's default
MSIZE, MCLBYTES = 256, 2048  # sys/sys/param.h (amd64)
SB_MAX_ADJ = SB_MAX * MCLBYTES // (MSIZE + MCLBYTES)
RAW_RECVSPACE = 9216

#: ``sysctl -n`` answers of a stock FreeBSD 14.
SYSCTL = {
    "net.inet.icmp.icmplim": "200",
    "net.inet.icmp.icmplim_jitter": "16",
    "net.inet.raw.recvspace": str(RAW_RECVSPACE),
    "kern.ipc.maxsockbuf": str(SB_MAX),
}


def _fail(code: int) -> OSError:
    return OSError(code, os.strerror(code))


class FreeBSDSocket(socket.socket):
    """A real socket whose receive-buffer options answer like FreeBSD's."""

    def __init__(self, *args, limit: int = SB_MAX_ADJ, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.limit = limit
        self.hiwat = RAW_RECVSPACE
        self.asked: list[int] = []
        super().setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RAW_RECVSPACE)

    def setsockopt(self, level, option, value, *rest):  # noqa: D102
        if level == socket.SOL_SOCKET and option == socket.SO_RCVBUF:
            self.asked.append(value)
            if value > self.limit:
                raise _fail(errno.ENOBUFS)
            super().setsockopt(level, option, value)
            self.hiwat = value
            return None
        if level == socket.SOL_SOCKET and option == 33:
            raise _fail(errno.ENOPROTOOPT)
        return super().setsockopt(level, option, value, *rest)

    def getsockopt(self, level, option, *rest):  # noqa: D102
        if level == socket.SOL_SOCKET and option == socket.SO_RCVBUF and not rest:
            return self.hiwat
        return super().getsockopt(level, option, *rest)


class FreeBSDKernel:
    """``socket()`` as FreeBSD answers it, for root or for another user; keeps every
    socket it opened so that tests can look at what was asked of them."""

    def __init__(self, *, root: bool = True, limit: int = SB_MAX_ADJ) -> None:
        self.root = root
        self.limit = limit
        self.opened: list[FreeBSDSocket] = []

    def __call__(self, family: int, type: int, proto: int) -> socket.socket:
        if type == socket.SOCK_DGRAM and proto in (socket.IPPROTO_ICMP, socket.IPPROTO_ICMPV6):
            raise _fail(errno.EPROTONOSUPPORT)
        if type == socket.SOCK_RAW and not self.root:
            raise _fail(errno.EPERM)
        sock = FreeBSDSocket(family, type, proto, limit=self.limit)
        self.opened.append(sock)
        return sock

    def platform(self, sysctl: dict[str, str] | None = None) -> Platform:
        values = {**SYSCTL, **(sysctl or {})}
        return Platform("freebsd", sysctl=values.get, socket=self, euid=lambda: 0 if self.root else 1001)
