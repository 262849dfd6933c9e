"""Unit tests for transport.connect_failure: what the line says when no connection to
Consul could be made, read from the OS error at the root of the exception chain."""

from __future__ import annotations

import errno
import socket

from jailsyncd.adapters.consul.transport import connect_failure

ENDPOINT = "http://consul.example:8500"


def chained(root: BaseException) -> Exception:
    """``root`` two levels down, as requests wraps urllib3's error (in ``args``, with
    the OS error as the ``__cause__`` of the next one)."""
    middle = Exception("HTTPConnection(...): Failed to resolve or connect")
    middle.__cause__ = root
    return Exception(Exception(middle))


def test_a_name_that_does_not_resolve_is_named_as_such() -> None:
    """Before, an unresolvable consul.address said "cannot connect (is the Consul agent
    running at ...?)", which sent the operator to the agent instead of the name."""
    text = connect_failure(chained(socket.gaierror(socket.EAI_NONAME, "Name or service not known")), ENDPOINT, "consul.example")
    assert text == "cannot resolve consul.example (Name or service not known): check consul.address (or CONSUL_HTTP_ADDR)"


def test_refused_and_unreachable_keep_cannot_connect_and_say_which() -> None:
    refused = connect_failure(chained(ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")), ENDPOINT, "consul.example")
    assert refused == f"cannot connect: connection refused (is the Consul agent running at {ENDPOINT}?)"
    unreachable = connect_failure(chained(OSError(errno.EHOSTUNREACH, "No route to host")), ENDPOINT, "consul.example")
    assert unreachable == f"cannot connect: No route to host (is {ENDPOINT} reachable from this host?)"
    assert connect_failure(Exception("?"), ENDPOINT, "consul.example") == f"cannot connect (is the Consul agent running at {ENDPOINT}?)"


def test_a_chain_that_loops_ends() -> None:
    a, b = Exception("a"), Exception("b")
    a.__context__, b.__context__ = b, a
    assert connect_failure(a, ENDPOINT, "h").startswith("cannot connect")
