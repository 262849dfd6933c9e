"""The dev Consul the tests, the demo and the benchmark start (``testing/devconsul.py``).

CI once failed because a dev agent restarted by the stateful test exited with
"address already in use": its HTTP and DNS ports are kept across restarts (clients
know them), and they came from the kernel's ephemeral range, which the kernel also
hands to every outgoing connection while the agent is down.
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path

from harness import ConsulServer, consul_binary, free_port


def test_free_ports_are_below_the_ephemeral_range_and_free_for_tcp_and_udp() -> None:
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = [free_port() for _ in range(20)]
    assert len(set(ports)) == len(ports), "a port was handed out twice"
    for port in ports:
        assert 1024 <= port < low, f"{port} is in the ephemeral range starting at {low}"
        for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
            with socket.socket(socket.AF_INET, kind) as s:
                s.bind(("127.0.0.1", port))  # raises if taken


def test_a_restart_waits_until_its_kept_port_is_free_again() -> None:
    """Someone holds the agent's DNS port (UDP) while it is down; it is released a
    moment later. The restart must succeed instead of failing on the first try."""
    server = ConsulServer(consul_binary()).start()
    try:
        server.stop()
        squatter = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        squatter.bind(("127.0.0.1", server.dns_port))
        release = threading.Timer(1.0, squatter.close)  # the other program lets go
        release.start()
        try:
            server.start()
            assert server.get("/v1/status/leader")
        finally:
            release.cancel()
            squatter.close()
    finally:
        server.stop()


def test_a_start_that_cannot_succeed_names_the_cause() -> None:
    server = ConsulServer(consul_binary(), hcl="this is not HCL {")
    try:
        server.start()
    except AssertionError as exc:
        assert "exited with" in str(exc) and "its log ends" in str(exc), str(exc)
    else:
        raise AssertionError("a broken config file started an agent")
    finally:
        server.stop()
