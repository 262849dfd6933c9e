"""Every way the ICMP library can fail to open its socket ends as ``ProbeUnavailable``
(exit 71) with a message that fits the platform, never as an internal error. The
socket() answers are reproduced at the boundary (no socket is opened)."""

from __future__ import annotations

import errno
import os
import socket

import pytest

from jailsyncd.adapters.probe import Prober, ProbeUnavailable
from jailsyncd.errors import ExitCode
from jailsyncd.platform import Platform


def refusing(code: int):
    def open_socket(family: int, type: int, proto: int) -> socket.socket:
        raise OSError(code, os.strerror(code))

    return open_socket


@pytest.mark.parametrize(
    "code",
    [
        errno.EPROTONOSUPPORT,  # FreeBSD, not root: no ping sockets (sys/kern/uipc_socket.c, socreate)
        errno.EPERM,  # raw socket without root (sys/netinet/raw_ip.c, rip_attach)
        errno.EACCES,  # Linux, group not in net.ipv4.ping_group_range
        errno.EMFILE,
        errno.EADDRNOTAVAIL,
        errno.EAFNOSUPPORT,
    ],
)
@pytest.mark.parametrize("system", ["freebsd", "linux"])
@pytest.mark.parametrize("root", [True, False])
def test_every_socket_error_is_exit_71(code: int, system: str, root: bool) -> None:
    prober = Prober(platform=Platform(system, sysctl=lambda name: None, socket=refusing(code), euid=lambda: 0 if root else 1001))
    with pytest.raises(ProbeUnavailable) as caught:
        prober.check()
    message = str(caught.value)
    assert caught.value.exit_code == ExitCode.PROBE_UNAVAILABLE == 71
    assert "\n" not in message and os.strerror(code) in message and "health.enabled = false" in message
    assert ("ping_group_range" in message) == (system == "linux" and not root)
    if system == "freebsd" and not root:
        assert "no unprivileged ICMP sockets" in message and "as root" in message


def test_freebsd_nonroot_asks_for_a_datagram_socket() -> None:
    asked = []

    def open_socket(family: int, type: int, proto: int) -> socket.socket:
        asked.append((family, type, proto))
        raise OSError(errno.EPROTONOSUPPORT, os.strerror(errno.EPROTONOSUPPORT))

    with pytest.raises(ProbeUnavailable):
        Prober(platform=Platform("freebsd", socket=open_socket, euid=lambda: 1001)).check()
    assert asked == [(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)]


def _as_icmplib_raises(error: OSError) -> Exception:
    """An exception chained as icmplib raises it from a failed sendto (text only, the
    OSError as its context)."""
    from icmplib.exceptions import ICMPSocketError

    try:
        try:
            raise error
        except OSError as err:
            raise ICMPSocketError(str(err))
    except ICMPSocketError as exc:
        return exc


@pytest.mark.parametrize(
    ("error", "jails"),
    [
        (OSError(errno.ENETUNREACH, "no route"), True),
        (OSError(errno.EHOSTUNREACH, "host unreachable"), True),
        (OSError(errno.EPERM, "firewall"), True),
        (socket.gaierror(socket.EAI_NONAME, "bad address"), True),
        (OSError(errno.ENOBUFS, "no buffer space"), False),
        (OSError(errno.ENOMEM, "out of memory"), False),
        (OSError(errno.EBADF, "bad fd"), False),
    ],
)
def test_whose_fault_is_a_failed_send(error: OSError, jails: bool) -> None:
    from jailsyncd.adapters.probe import _jails_fault

    assert _jails_fault(_as_icmplib_raises(error)) is jails
