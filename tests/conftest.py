"""Shared fixtures: a session-wide real Consul dev agent, CBSD workdirs, configs."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import structlog
from harness import ConsulServer, RunningDaemon, consul_binary, wait_for, write_config

from testing.devnet import NetNS
from testing.sample import Workdir, create_sample


@pytest.fixture(scope="session")
def consul_bin() -> str:
    return consul_binary()


@pytest.fixture(scope="session")
def consul_server(consul_bin: str):
    server = ConsulServer(consul_bin).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def acl_consul(consul_bin: str):
    """A dev agent with ACLs on and default deny, one per test module; the harness
    talks to it with the master token (``acl_consul.token``)."""
    master = str(uuid.uuid4())
    hcl = (
        "disable_update_check = true\n"
        f'acl {{\n  enabled = true\n  default_policy = "deny"\n  tokens {{\n    master = "{master}"\n    agent = "{master}"\n  }}\n}}\n'
    )
    server = ConsulServer(consul_bin, hcl=hcl, token=master).start()
    yield server
    server.stop()


@pytest.fixture
def consul(consul_server: ConsulServer) -> ConsulServer:
    """The session agent, emptied of services before each test."""
    consul_server.wipe()
    return consul_server


@pytest.fixture
def workdir(tmp_path: Path) -> Workdir:
    """An empty CBSD workdir (current schema, node name ``node1``)."""
    return Workdir.create(tmp_path / "cbsd")


@pytest.fixture
def sample(tmp_path: Path) -> Workdir:
    """A CBSD workdir holding one environment of every kind (``sample.SAMPLE_ENVIRONMENTS``)."""
    return create_sample(tmp_path / "cbsd")


@pytest.fixture
def config(tmp_path: Path, consul: ConsulServer, sample: Workdir) -> Path:
    return write_config(tmp_path / "jailsyncd.toml", workdir=sample.root, consul=consul)


@pytest.fixture
def start_daemon(tmp_path: Path):
    """Start ``jailsyncd run`` subprocesses (optionally inside a namespace prefix),
    each returned once its first cycle is logged; all are stopped at teardown."""
    daemons: list[RunningDaemon] = []

    def start(config: Path, prefix: list[str] | None = None) -> RunningDaemon:
        daemon = RunningDaemon(config, tmp_path, prefix)
        daemons.append(daemon)
        wait_for(lambda: daemon.finished_cycles() >= 1, timeout=15, what="the first cycle")
        return daemon

    yield start
    for daemon in daemons:
        daemon.stop()


@pytest.fixture
def netns():
    """A private network namespace with only ``lo`` up: health probes sent inside it
    never leave the machine. Modules that need more (a veth pair) override it."""
    with NetNS() as ns:
        yield ns


@pytest.fixture
def ns_consul(consul_bin: str, netns: NetNS):
    """A dev Consul agent running inside ``netns``, so jailsyncd runs there too."""
    server = ConsulServer(consul_bin, netns=netns).start()
    yield server
    server.stop()


@pytest.fixture
def catalog(consul: ConsulServer) -> ConsulServer:
    """The session agent with no catalog nodes but its own."""
    for node in consul.get("/v1/catalog/nodes"):
        if node["Node"] != "jailsyncd-test":
            consul.put("/v1/catalog/deregister", {"Node": node["Node"]})
    return consul


@pytest.fixture
def restore_logging():
    """For tests that configure structlog (``cli.main`` does, to the captured stderr):
    leave it as it was for the tests that run next."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


@pytest.fixture
def nobody():
    """The user ``nobody`` as a ``privileges.Identity`` (skips where there is none)."""
    from jailsyncd import privileges
    from jailsyncd.errors import ConfigError

    try:
        identity = privileges.resolve("nobody", "", "test.toml")
    except ConfigError:
        pytest.skip("no user nobody here")
    assert identity is not None
    return identity
