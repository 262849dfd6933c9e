"""Config problems, end to end (issue 10, items 8, 13 and 14): every one is exit 78
with one line naming the file or variable and the key at start, and
``config_reload_failed`` with the old settings kept on SIGHUP; the CONSUL_*
variables behave as the Consul CLI's, against a real Consul.
"""

from __future__ import annotations

import signal
import urllib.request
from pathlib import Path

import pytest
from harness import ConsulServer, free_port, log_events, run_cli, wait_for, write_config

from jailsyncd.errors import ExitCode
from testing.sample import Workdir

pytestmark = pytest.mark.integration

QUIET = '[sync]\ninterval = "1h"\njitter = "0s"\n'

#: (name, how to spoil a good config file, the key or text the one line must name)
BAD = [
    ("not-utf8", lambda good: good.encode() + "\n# Köln\n".encode("latin-1"), "not UTF-8"),
    ("template-attribute", lambda good: (good + '[catalog]\nnode_name = "{fqdn.x}"\n').encode(), "catalog.node_name: {fqdn.x} is not allowed"),
    ("template-static", lambda good: (good + '[catalog]\nnode_name = "static"\n').encode(), "catalog.node_name: 'static' gives every jail the same node name"),
    ("listen-no-port", lambda good: (good + '[metrics]\nlisten = "9311"\n').encode(), "metrics.listen: missing port"),
    ("address-space", lambda good: good.replace('address = "127.0.0.1:', 'address = "127.0.0.1 :').encode(), "consul.address: white space"),
    ("interval-1ms", lambda good: good.replace('interval = "1h"', 'interval = "1ms"').encode(), "sync.interval: must be at least 1s"),
    ("backoff-10ms", lambda good: good.replace('jitter = "0s"', 'jitter = "0s"\nbackoff_max = "10ms"').encode(), "sync.backoff_max: must be at least 1s"),
    ("datacenter-upper", lambda good: good.replace('timeout = "5s"', 'timeout = "5s"\ndatacenter = "DC1"').encode(), "consul.datacenter: Consul's datacenter names use only"),
]


@pytest.mark.parametrize(("name", "spoil", "named"), BAD, ids=[b[0] for b in BAD])
def test_every_config_problem_is_exit_78_with_one_line(consul: ConsulServer, tmp_path: Path, workdir: Workdir, name, spoil, named) -> None:
    """At start: ``check-config``, ``once`` and ``run`` (which the item names: it used
    to exit 1) each exit 78 with one line; ``run`` leaves no pidfile."""
    config = write_config(tmp_path / "c.toml", workdir=workdir.root, consul=consul, extra=QUIET)
    config.write_bytes(spoil(config.read_text()))
    pidfile = tmp_path / "run.pid"
    for command in (["check-config"], ["once"], ["run", "--pidfile", str(pidfile)]):
        proc = run_cli(*command, config=config, timeout=20)
        assert proc.returncode == ExitCode.CONFIG, proc.stderr
        [line] = proc.stderr.strip().splitlines()
        assert line.startswith(f"jailsyncd: {config}: ") and named in line, line
    assert consul.services() == {} and not pidfile.exists()


def test_sighup_with_any_config_problem_keeps_the_daemon_and_its_settings(consul: ConsulServer, tmp_path: Path, workdir: Workdir, start_daemon) -> None:
    """A non-UTF-8 file or ``{fqdn.x}`` used to raise past the reload handler and kill
    ``run``. Each spoiled file is refused with its one line; a good file still reloads."""
    workdir.add("web1", jid=3, status=1, ip4_addr="127.0.31.1")
    config = write_config(tmp_path / "c.toml", workdir=workdir.root, consul=consul, extra=QUIET)
    good = config.read_text()
    daemon = start_daemon(config)
    for count, (name, spoil, named) in enumerate(BAD, start=1):
        config.write_bytes(spoil(good))
        daemon.proc.send_signal(signal.SIGHUP)
        failed = wait_for(lambda: len(daemon.events("config_reload_failed")) >= count and daemon.events("config_reload_failed"), timeout=5, what=f"refusal of {name}")
        assert named in failed[-1]["error"], failed[-1]
        assert daemon.proc.poll() is None, name
    config.write_text(good + '\n[[rule]]\nmatch = "web*"\nname = "www"\n')
    daemon.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: consul.services().get("jailsyncd-web1", {}).get("Service") == "www", timeout=5, what="the good file applied")
    assert not daemon.events("cycle_crashed")


def test_token_variable_with_a_trailing_newline(acl_consul: ConsulServer, tmp_path: Path, workdir: Workdir) -> None:
    """``CONSUL_HTTP_TOKEN="$(cat file)"`` keeps no newline, but ``export
    CONSUL_HTTP_TOKEN=$(...)`` from some tools and rc scripts does. It used to be sent
    as is: requests refused the header (InvalidHeader), retried forever. Now it is
    trimmed like a token file."""
    acl_consul.wipe()
    workdir.add("web1", jid=3, status=1, ip4_addr="127.0.31.2")
    config = write_config(tmp_path / "c.toml", workdir=workdir.root, consul=acl_consul)
    proc = run_cli("once", config=config, env={"CONSUL_HTTP_TOKEN": acl_consul.token + "\n"})
    assert proc.returncode == 0, proc.stderr
    assert acl_consul.services()["jailsyncd-web1"]["Address"] == "127.0.31.2"
    # A BOM and CRLF in a token file (an editor on another OS) work the same way.
    token_file = tmp_path / "token"
    token_file.write_bytes(b"\xef\xbb\xbf" + acl_consul.token.encode() + b"\r\n")
    token_file.chmod(0o600)
    workdir.set("web1", ip4_addr="127.0.31.3")
    config = write_config(tmp_path / "f.toml", workdir=workdir.root, consul=acl_consul, consul_extra=f'token_file = "{token_file}"')
    proc = run_cli("once", config=config)
    assert proc.returncode == 0, proc.stderr
    assert acl_consul.services()["jailsyncd-web1"]["Address"] == "127.0.31.3"
    assert acl_consul.token not in proc.stderr


def test_metrics_listen_on_ipv6_loopback(consul: ConsulServer, tmp_path: Path, workdir: Workdir, start_daemon) -> None:
    """``metrics.listen = "[::1]:PORT"`` passed check-config but the IPv4-only server
    could not bind it: the daemon now serves on IPv6."""
    port = free_port()
    extra = QUIET + f'\n[metrics]\nlisten = "[::1]:{port}"\n'
    start_daemon(write_config(tmp_path / "c.toml", workdir=workdir.root, consul=consul, extra=extra))
    with urllib.request.urlopen(f"http://[::1]:{port}/healthz", timeout=5) as answer:
        assert answer.status == 200 and answer.read() == b"ok\n"


def test_unix_socket_address_is_refused_naming_the_variable(tmp_path: Path, workdir: Workdir) -> None:
    dead = ConsulServer(binary="unused")
    config = write_config(tmp_path / "c.toml", workdir=workdir.root, consul=dead)
    config.write_text("\n".join(line for line in config.read_text().splitlines() if not line.startswith("address")))
    proc = run_cli("once", config=config, env={"CONSUL_HTTP_ADDR": "unix:///var/run/consul/http.sock"})
    assert proc.returncode == ExitCode.CONFIG
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("jailsyncd: CONSUL_HTTP_ADDR (environment variable for consul.address") and "unix sockets are not supported" in line
    assert log_events(proc.stderr) == []


def test_consul_capath_is_refused_naming_the_variable(tmp_path: Path, workdir: Workdir) -> None:
    """``CONSUL_CAPATH`` (a folder of CA files, which the Consul CLI reads) with an
    https address and no CA file: refused at load, one line, before any request,
    rather than verifying against the system's CAs instead of the ones named."""
    dead = ConsulServer(binary="unused")
    config = write_config(tmp_path / "c.toml", workdir=workdir.root, consul=dead)
    config.write_text("\n".join(line for line in config.read_text().splitlines() if not line.startswith("address")))
    proc = run_cli("once", config=config, env={"CONSUL_HTTP_ADDR": "https://127.0.0.1:8501", "CONSUL_CAPATH": str(tmp_path)})
    assert proc.returncode == ExitCode.CONFIG, proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("jailsyncd: CONSUL_CAPATH (environment variable): ") and "CONSUL_CACERT" in line
    assert log_events(proc.stderr) == []
