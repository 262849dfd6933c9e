"""The rule of tests/unit, enforced: a unit test starts no process, uses no network
and does not sleep (real time is the daemon's ``clock``/``wait`` seam or a test's own
clock). Files under ``tmp_path`` are its only I/O. A test that needs more belongs in
tests/integration (real processes, a real Consul, network namespaces) or, if it runs
a tool over a file of the repository, in tests/static."""

from __future__ import annotations

import os
import socket
import subprocess
import time

import pytest


def _refused(what: str):
    def refuse(*args, **kwargs):
        raise AssertionError(f"a unit test {what} (tests/unit/conftest.py): move it to tests/integration or tests/static")

    return refuse


@pytest.fixture(autouse=True)
def _no_process_network_or_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(subprocess, "Popen", _refused("starts a process"))
    for name in ("system", "fork", "posix_spawn", "posix_spawnp"):
        if hasattr(os, name):
            monkeypatch.setattr(os, name, _refused("starts a process"))
    for name in ("connect", "connect_ex", "bind", "sendto"):
        monkeypatch.setattr(socket.socket, name, _refused("uses the network"))
    monkeypatch.setattr(time, "sleep", _refused("sleeps"))
