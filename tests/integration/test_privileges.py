"""``daemon.user``: ``jailsyncd run`` started as root switches for good to another user.

Real processes only: the daemon is started as root in a network namespace that has
only ``lo`` (the jails' addresses live there, so every ping stays inside it), next to a
real Consul agent, switches to ``nobody``/``nogroup`` and is then checked from the
outside through ``/proc/<pid>/task/*/status``. CBSD's files are set up the way CBSD
keeps them (group-owned, 0660 files, 0770 folders), with ``nogroup`` in CBSD's place.

FreeBSD behaviour this relies on, reproduced by the same calls on Linux: a raw ICMP
socket is checked for privilege only when it is created (``rip_attach`` in
sys/netinet/raw_ip.c; sbin/ping/ping.c opens its sockets, then calls setuid(2)), so
sockets opened before the switch keep working after it.

The interpreter must be readable by the user after the switch (modules are imported
lazily). On a real host it is (/usr/local/lib/python3.11 on FreeBSD); where the test's
interpreter lives under a folder the user cannot search (pyenv in /root), the daemon
runs in a private mount namespace in which only the interpreter's folders are laid
over that folder (``exposed``); the host's own mounts are not touched.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

import pytest
from harness import REPO, ConsulServer, log_events, wait_for

from testing.devnet import NetNS, available
from jailsyncd.errors import ExitCode
from testing.sample import Workdir

pytestmark = [pytest.mark.integration, pytest.mark.skipif(available() is not None, reason=str(available()))]

USER = "nobody"
UP, SECOND = "10.78.0.1", "10.78.0.2"
METRICS = 9311
HEALTH = 'interval = "1s"\ntimeout = "300ms"\ncount = 1\nfailures_before_critical = 2\nheartbeat_ttl = "3s"'


@pytest.fixture
def target() -> tuple[str, int, str, int]:
    """The user to switch to, its uid, its primary group and that group's gid."""
    try:
        pw = pwd.getpwnam(USER)
    except KeyError:
        pytest.skip(f"no user {USER!r} on this machine")
    return pw.pw_name, pw.pw_uid, grp.getgrgid(pw.pw_gid).gr_name, pw.pw_gid


@pytest.fixture
def base(target):
    """A folder everyone may search (pytest's own tmp folder is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="jailsyncd-priv-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def group_owned(path: Path, gid: int, *, file_mode: int = 0o660, dir_mode: int = 0o770) -> None:
    """chown root:<gid> and chmod like CBSD's own files, recursively."""
    for p in [path, *path.rglob("*")]:
        if p.is_symlink():
            continue
        os.chown(p, 0, gid)
        p.chmod(dir_mode if p.is_dir() else file_mode)


def searchable_by(path: Path, uid: int, gids: set[int]) -> bool:
    st = path.stat()
    if st.st_uid == uid:
        return bool(st.st_mode & 0o100)
    if st.st_gid in gids:
        return bool(st.st_mode & 0o010)
    return bool(st.st_mode & 0o001)


def exposed(base: Path, uid: int, gids: set[int]) -> str:
    """Shell commands (for a private mount namespace) that make the interpreter's
    folders reachable by ``uid``: each folder on their way that it cannot search is
    covered by a tmpfs (mode 755) holding only the needed subfolders, bound from a
    reference to the original. Empty when nothing is in the way."""
    needed = {Path(os.path.realpath(sys.executable)).parent, Path(sys.base_prefix), Path(sys.prefix), REPO}
    blocked: dict[Path, set[str]] = {}
    for path in needed:
        for parent, child in zip(path.parents[::-1][1:], path.parts[2:]):
            if not searchable_by(parent, uid, gids):
                blocked.setdefault(parent, set()).add(child)
                break
        else:
            if not searchable_by(path.parents[0], uid, gids):
                blocked.setdefault(path.parents[0], set()).add(path.name)
    commands = []
    for n, (folder, children) in enumerate(sorted(blocked.items())):
        keep = base / f"keep-{n}"
        keep.mkdir(exist_ok=True)
        q = shlex.quote
        commands += [f"mount --bind {q(str(folder))} {q(str(keep))}", f"mount -t tmpfs -o mode=0755 tmpfs {q(str(folder))}"]
        for child in sorted(children):
            commands += [f"mkdir {q(str(folder / child))}", f"mount --bind {q(str(keep / child))} {q(str(folder / child))}"]
    return " && ".join(commands)


def jailsyncd_argv(netns: NetNS, base: Path, uid: int, gid: int, *args: str) -> list[str]:
    """``python -m jailsyncd ARGS`` as root, in ``netns``, where ``uid`` can read the interpreter."""
    command = shlex.join([*netns.prefix(), sys.executable, "-m", "jailsyncd", *args])
    setup = exposed(base, uid, {gid})
    if not setup:
        return ["sh", "-c", f"exec {command}"]
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", f"{setup} && exec {command}"]


def ids(pid: int) -> list[dict[str, list[int]]]:
    """Uid, Gid (real, effective, saved, file system) and Groups of every thread."""
    result = []
    for task in sorted(Path(f"/proc/{pid}/task").iterdir()):
        fields = dict(line.split(":", 1) for line in (task / "status").read_text().splitlines() if ":" in line)
        result.append({k: [int(v) for v in fields[k].split()] for k in ("Uid", "Gid", "Groups")})
    return result


def statuses(consul: ConsulServer) -> dict[str, str]:
    return {c["CheckID"]: c["Status"] for c in consul.get("/v1/agent/checks").values()}


def setup_host(base: Path, gid: int, consul: ConsulServer, *, token_mode: int = 0o640, extra: str = "") -> tuple[Workdir, Path]:
    """A CBSD workdir, a token file and a settings file, all root:<gid> like a real install."""
    workdir = Workdir.create(base / "cbsd")
    token = base / "jailsyncd.token"
    token.write_text("00000000-0000-0000-0000-000000000000\n")  # ACLs are off: any token will do
    config = base / "jailsyncd.toml"
    config.write_text(
        f'[host]\nname = "node1"\n\n[cbsd]\nworkdir = "{workdir.root}"\n\n'
        f'[consul]\naddress = "{consul.address}"\ntimeout = "5s"\ntoken_file = "{token}"\n\n'
        f'[health]\n{HEALTH}\n\n[sync]\ninterval = "1h"\n\n[metrics]\nlisten = "127.0.0.1:{METRICS}"\n{extra}'
    )
    for path, mode in ((token, token_mode), (config, 0o640)):
        os.chown(path, 0, gid)
        path.chmod(mode)
    return workdir, config


def test_run_switches_to_the_user_for_good_and_keeps_working(netns: NetNS, ns_consul: ConsulServer, base: Path, target) -> None:
    user, uid, group, gid = target
    netns.add_address(UP)
    netns.add_address(SECOND)
    workdir, config = setup_host(base, gid, ns_consul)
    workdir.add("web1", jid=3, status=1, ip4_addr=UP)
    group_owned(workdir.root, gid)
    log_path = base / "daemon.log"
    argv = jailsyncd_argv(netns, base, uid, gid, "--config", str(config), "--log-level", "debug", "--user", user, "--group", group, "run", "--pidfile", str(base / "jailsyncd.pid"))
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=str(REPO))
    try:
        def events(name: str) -> list[dict]:
            return [e for e in log_events(log_path.read_text()) if e["event"] == name]

        wait_for(lambda: events("cycle_finished") or proc.poll() is not None, timeout=20, what="the first cycle")
        assert proc.poll() is None, log_path.read_text()

        # Every thread: real, effective, saved and file-system IDs are the user's, and
        # no other group is left (root's group 0 in particular).
        for thread in ids(proc.pid):
            assert thread["Uid"] == [uid] * 4, thread
            assert thread["Gid"] == [gid] * 4, thread
            assert set(thread["Groups"]) <= {gid}, thread
        assert events("privileges_dropped")[0]["uid"] == uid

        # Pings go out on the sockets opened as root: a jail that answers passes, one
        # that stops answering turns critical.
        wait_for(lambda: statuses(ns_consul).get("jailsyncd-web1:ping") == "passing", timeout=10, what="web1 passing")
        # A CBSD change (written by root, as CBSD does) is still seen.
        workdir.add("web2", jid=4, status=1, ip4_addr=SECOND)
        wait_for(lambda: statuses(ns_consul).get("jailsyncd-web2:ping") == "passing", timeout=10, what="web2 registered and passing")
        netns.del_address(SECOND)
        wait_for(lambda: statuses(ns_consul).get("jailsyncd-web2:ping") == "critical", timeout=10, what="web2 critical")

        # /healthz answers (from inside the namespace, where the daemon listens).
        def healthz() -> tuple[int, bytes]:
            with urllib.request.urlopen(f"http://127.0.0.1:{METRICS}/healthz", timeout=5) as response:
                return response.status, response.read()

        assert netns.call(healthz) == (200, b"ok\n")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, log_path.read_text()


@pytest.mark.parametrize("what", ["token", "db", "config"])
def test_a_file_the_user_cannot_read_stops_run_and_configtest(what: str, netns: NetNS, ns_consul: ConsulServer, base: Path, target) -> None:
    """``run`` exits 77 at start naming the file, and ``check-config --service`` (what
    ``service jailsyncd configtest`` runs, as root) says the same beforehand: the token
    file, CBSD's node DB, and the settings file (read again on SIGHUP, as the user)."""
    user, uid, group, gid = target
    workdir, config = setup_host(base, gid, ns_consul, token_mode=0o600 if what == "token" else 0o640)
    db_unreadable = what == "db"
    group_owned(workdir.root, gid, file_mode=0o640 if db_unreadable else 0o660, dir_mode=0o750 if db_unreadable else 0o770)
    if what == "config":
        config.chmod(0o600)  # root's alone
    culprit = {"token": str(base / "jailsyncd.token"), "db": str(workdir.root / "var" / "db" / "local.sqlite"), "config": str(config)}[what]
    for args in (["check-config", "--service"], ["run"]):
        argv = jailsyncd_argv(netns, base, uid, gid, "--config", str(config), "--user", user, *args)
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=str(REPO))
        assert proc.returncode == ExitCode.NO_PERMISSION, (args, proc.stdout, proc.stderr)
        line = proc.stderr.strip().splitlines()[-1]
        assert line.startswith("jailsyncd: ") and culprit in line and user in line, line
        assert "Traceback" not in proc.stderr


def test_configtest_catches_a_metrics_port_run_could_not_bind(netns: NetNS, ns_consul: ConsulServer, base: Path, target) -> None:
    """``check-config --service`` binds ``metrics.listen`` as the user, the way ``run``
    will after its switch: a port in use, or one below 1024 (only root may bind those,
    on FreeBSD as on Linux), is exit 78 naming the key, before daemon(8) could restart
    a ``run`` that fails on it forever."""
    user, uid, group, gid = target
    workdir, config = setup_host(base, gid, ns_consul)
    group_owned(workdir.root, gid)

    def configtest(listen: str) -> subprocess.CompletedProcess:
        text = config.read_text()
        config.write_text(re.sub(r'listen = "[^"]*"', f'listen = "{listen}"', text))
        argv = jailsyncd_argv(netns, base, uid, gid, "--config", str(config), "--user", user, "check-config", "--service")
        return subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=str(REPO))

    assert configtest(f"127.0.0.1:{METRICS}").returncode == 0
    busy = netns.call(lambda: socket.create_server(("127.0.0.1", METRICS)))
    try:
        proc = configtest(f"127.0.0.1:{METRICS}")
    finally:
        netns.call(busy.close)
    assert proc.returncode == ExitCode.CONFIG, proc.stderr
    assert f"metrics.listen: cannot listen on 127.0.0.1:{METRICS}" in proc.stderr
    proc = configtest("127.0.0.1:80")
    assert proc.returncode == ExitCode.CONFIG, proc.stderr
    assert "metrics.listen: cannot listen on 127.0.0.1:80: Permission denied" in proc.stderr


def test_configtest_while_run_holds_the_metrics_port(netns: NetNS, ns_consul: ConsulServer, base: Path, target, start_daemon) -> None:
    """``service jailsyncd reload`` and ``configtest`` run ``check-config --service``
    while jailsyncd runs and holds ``metrics.listen`` itself: that port is not "busy"
    when ``--pidfile`` names the running ``jailsyncd run`` (the rc.d script passes its
    child pidfile), so a reload is not refused for it. Without ``--pidfile`` (or with
    a pidfile naming no running jailsyncd, as before a start) a held port still fails,
    exit 78: a second jailsyncd could not bind it."""
    user, uid, group, gid = target
    workdir, config = setup_host(base, gid, ns_consul)
    group_owned(workdir.root, gid)
    daemon = start_daemon(config, netns.prefix())

    def configtest(*extra: str) -> subprocess.CompletedProcess:
        argv = jailsyncd_argv(netns, base, uid, gid, "--config", str(config), "--user", user, "check-config", "--service", *extra)
        return subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=str(REPO))

    held = configtest("--pidfile", str(daemon.pidfile))
    assert held.returncode == 0, held.stderr
    assert f"metrics.listen: 127.0.0.1:{METRICS} is held by the running jailsyncd (pid {daemon.proc.pid})" in held.stderr
    strict = configtest()
    assert strict.returncode == ExitCode.CONFIG and f"metrics.listen: cannot listen on 127.0.0.1:{METRICS}" in strict.stderr
    stale = base / "stale.pid"
    stale.write_text("999999")
    assert configtest("--pidfile", str(stale)).returncode == ExitCode.CONFIG
