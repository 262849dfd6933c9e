"""Test harness: CLI runs, log parsing and configs; re-exports the dev Consul helpers.

Used by ``tests/conftest.py`` and the integration tests. Nothing here fakes Consul:
``ConsulServer`` (from ``testing.devconsul``) runs the real binary.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from testing.devconsul import ConsulCluster, ConsulServer, free_port, wait_for  # noqa: F401 - re-exported for tests

REPO = Path(__file__).resolve().parent.parent


def consul_binary() -> str:
    """The Consul binary (``$CONSUL_BIN``, PATH, or fetched into the repo's cache)."""
    out = subprocess.run([str(REPO / "scripts" / "get-consul")], check=True, capture_output=True, text=True)
    return out.stdout.strip().splitlines()[-1]


class RunningDaemon:
    """``jailsyncd run`` as a subprocess (inside ``prefix``, e.g. ``ip netns exec NS``),
    logging JSON at debug level into ``tmp/daemon-N.log``."""

    def __init__(self, config: Path, tmp: Path, prefix: list[str] | None = None) -> None:
        n = len(list(tmp.glob("daemon-*.log")))
        self.log_path = tmp / f"daemon-{n}.log"
        self.pidfile = tmp / f"jailsyncd-{n}.pid"
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONSUL_")}
        argv = [sys.executable, "-m", "jailsyncd", "--config", str(config), "--log-level", "debug", "run", "--pidfile", str(self.pidfile)]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([*(prefix or []), *argv], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(REPO))

    def events(self, name: str | None = None) -> list[dict]:
        events = log_events(self.log_path.read_text())
        return [e for e in events if name is None or e["event"] == name]

    def finished_cycles(self) -> int:
        return len(self.events("cycle_finished")) + len(self.events("cycle_failed")) + len(self.events("cycle_skipped"))

    def kick(self) -> None:
        subprocess.run([sys.executable, "-m", "jailsyncd", "kick", "--pidfile", str(self.pidfile)], check=True, cwd=str(REPO))

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def run_cli(*args: str, config: Path | None = None, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run ``python -m jailsyncd`` as a user would, with no CONSUL_* from the caller."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CONSUL_")}
    clean.update(env or {})
    argv = [sys.executable, "-m", "jailsyncd"]
    if config is not None:
        argv += ["--config", str(config)]
    return subprocess.run([*argv, *args], capture_output=True, text=True, env=clean, timeout=timeout, cwd=str(REPO))


def log_events(stderr: str) -> list[dict]:
    """The JSON log lines of a run (stderr lines that parse as objects with an event)."""
    events = []
    for line in stderr.splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict) and "event" in obj:
            events.append(obj)
    return events


def write_config(
    path: Path, *, workdir: Path, consul: ConsulServer, host: str = "node1", extra: str = "", consul_extra: str = "", health: str | None = None
) -> Path:
    """A config for one test. Health is off unless ``health`` gives the ``[health]``
    table's body: only the health tests probe, and only addresses they own."""
    health_table = f"[health]\n{health}\n" if health is not None else "[health]\nenabled = false\n"
    path.write_text(
        f'[host]\nname = "{host}"\n\n[cbsd]\nworkdir = "{workdir}"\n\n'
        f'[consul]\naddress = "{consul.address}"\ntimeout = "5s"\n{consul_extra}\n{health_table}\n{extra}\n'
    )
    return path
