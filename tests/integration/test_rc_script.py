"""``rc.d/jailsyncd`` run under ``/bin/sh`` against stand-ins for /etc/rc.subr and daemon(8).

FreeBSD is not available to the test suite, so the script is run against stand-ins that
follow the real programs where the script depends on them: ``STANDIN_RC_SUBR`` for
/etc/rc.subr (libexec/rc/rc.subr: ``${name}_flags``/``$flags`` put between
``$command`` and ``$command_args`` and the whole line run through ``eval``;
``check_pidfile`` matching ``procname`` against the first word ps(1) shows; the default
stop's SIGTERM and ``wait_for_pids``, which waits with no timeout, and its silence under
``faststop`` when nothing runs; ``restart`` as a stop then a start in subshells; the
``fast`` prefix of /etc/rc and rc.shutdown; custom ``*_cmd`` and ``*_precmd``) and
``standin_daemon8.py`` for daemon(8) (usr.sbin/daemon/daemon.c of FreeBSD 14: its options, pidfiles, restarts and the SIGTERM it ignores while it sleeps
before a restart). The programs they start are small fakes of ``jailsyncd`` that record
their arguments and the signals they get, including one installed the way pip does
when the interpreter's path has a blank (a ``#!/bin/sh`` exec wrapper).

These start real processes and wait for them (a stop bounded by seconds, a crash loop
with daemon(8)'s restart delay), so they live here and not in tests/unit; the static
checks of the script (its knobs, pidfiles, commands, ``sh -n``, shellcheck) stay in
``tests/unit/test_ops_files.py``. No Consul is needed.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from harness import wait_for

ROOT = Path(__file__).resolve().parents[2]
RC = ROOT / "rc.d" / "jailsyncd"

#: The default of ``jailsyncd_config`` (tests/unit/test_ops_files.py checks the script's
#: defaults against its ``KNOBS``).
DEFAULT_CONFIG = "/usr/local/etc/jailsyncd.toml"


def rc_text() -> str:
    return RC.read_text()


STANDIN_RC_SUBR = r"""
# Stand-in for FreeBSD's /etc/rc.subr (libexec/rc/rc.subr): what rc.d/jailsyncd uses,
# with the same variables and the same way of running commands.
load_rc_config() { . "$FAKE_RC_CONF"; }
warn() { echo "$0: WARNING: $*" >&2; }
err() { echo "$0: ERROR: $2" >&2; exit "$1"; }
# check_pidfile pidfile procname: the pid in the file, if ps(1) shows that process
# with procname, its basename or "basename:" as its first word.
check_pidfile() {
	echo "check_pidfile $*" >>"$FAKE_TRACE"
	[ -f "$1" ] || return 0
	read _pid _junk <"$1"
	[ -n "$_pid" ] || return 0
	_procnamebn=${2##*/}
	ps -o pid= -o command= -p "$_pid" 2>/dev/null | while read _npid _arg0 _argv; do
		case "$_arg0" in
		$2|$_procnamebn|${_procnamebn}:|"(${_procnamebn})"|"[${_procnamebn}]") echo "$_npid" ;;
		esac
	done
}
# The real one waits with pwait(1), with no timeout; this one polls, also without.
wait_for_pids() {
	for _j in "$@"; do
		while kill -0 "$_j" 2>/dev/null; do sleep 0.1; done
	done
}
run_rc_command() {
	rc_arg=$1
	# The prefixes: rc.shutdown stops every script with "faststop", /etc/rc starts
	# them with "faststart" (rc_fast: no pid check before start); "one" and "force"
	# only matter for ${rcvar}, which this stand-in does not check.
	_rc_prefix=
	case "$rc_arg" in
	fast*) rc_arg=${rc_arg#fast}; rc_fast=yes; rc_quiet=yes ;;
	force*) _rc_prefix=force; rc_arg=${rc_arg#force}; rc_force=yes ;;
	one*) _rc_prefix=one; rc_arg=${rc_arg#one} ;;
	quiet*) _rc_prefix=quiet; rc_arg=${rc_arg#quiet}; rc_quiet=yes ;;
	esac
	if [ -n "$flags" ]; then rc_flags=$flags; else eval rc_flags=\$${name}_flags; fi
	eval _user=\$${name}_user
	_procname=${procname:-${command}}
	rc_pid=$(check_pidfile "$pidfile" "$_procname")
	case "$rc_arg" in
	show)
		for _v in command procname pidfile command_args rc_flags _user extra_commands; do
			eval "printf '%s=%s\n' $_v \"\$$_v\""
		done
		return 0
		;;
	esac
	eval _cmd=\$${rc_arg}_cmd _precmd=\$${rc_arg}_precmd
	if [ -n "$_cmd" ]; then
		if [ -n "$_precmd" ]; then eval "$_precmd" || return 1; fi
		eval "$_cmd"
		return $?
	fi
	case "$rc_arg" in
	start)
		if [ -z "$rc_fast" ] && [ -n "$rc_pid" ]; then echo "${name} already running? (pid=$rc_pid)." >&2; return 1; fi
		if [ -n "$_precmd" ] && ! eval "$_precmd"; then warn "failed precmd routine for ${name}"; return 1; fi
		[ -z "$_user" ] || { echo "would su(1) to $_user" >&2; return 1; }
		echo "Starting ${name}."
		eval "$command $rc_flags $command_args"
		;;
	stop)
		if [ -z "$rc_pid" ]; then [ -n "$rc_fast" ] && return 0; echo "${name} not running? (check $pidfile)." >&2; return 1; fi
		echo "Stopping ${name}."
		kill -TERM $rc_pid
		wait_for_pids $rc_pid
		;;
	status)
		if [ -n "$rc_pid" ]; then echo "${name} is running as pid $rc_pid."; else echo "${name} is not running."; return 1; fi
		;;
	restart)
		# Both halves in subshells, the start whatever the stop returned.
		( run_rc_command ${_rc_prefix}stop )
		( run_rc_command ${_rc_prefix}start )
		;;
	*)
		echo "unknown directive $rc_arg" >&2; return 1
		;;
	esac
}
"""

#: A fake ``jailsyncd`` (Python): records its argv; ``check-config`` prints settings or
#: fails as told; ``run`` records HUP and USR1, exits 0 on TERM, or at once with 1
#: (``FAKE_CRASH``: a crash loop), or ignores TERM (``FAKE_HANG``).
FAKE_JAILSYNCD_PY = r"""
import json, os, signal, sys, time
with open(os.environ["FAKE_TRACE"], "a") as fh:
    fh.write("jailsyncd " + json.dumps(sys.argv[1:]) + "\n")
args = sys.argv[1:]
command = next((a for a in args if a in ("check-config", "run")), None)
if command is None or args[:1] != ["--config"]:
    sys.exit(64)
if command == "check-config":
    if os.environ.get("FAKE_BAD_CONFIG"):
        print(f"jailsyncd: {args[1]}: bad config", file=sys.stderr)
        sys.exit(78)
    print('{"host": {"name": "node1"}}')
    sys.exit(0)
if os.environ.get("FAKE_CRASH"):
    time.sleep(0.3)  # a Python start-up, then the error
    sys.exit(1)
record = os.environ["FAKE_SIGNALS"]
def note(signum, _frame):
    with open(record, "a") as fh:
        fh.write(signal.Signals(signum).name.removeprefix("SIG") + "\n")
signal.signal(signal.SIGHUP, note)
signal.signal(signal.SIGUSR1, note)
signal.signal(signal.SIGTERM, signal.SIG_IGN if os.environ.get("FAKE_HANG") else lambda *_: sys.exit(0))
with open(record, "a") as fh:
    fh.write("STARTED\n")
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    time.sleep(0.05)
"""

#: What pip writes instead of a "#!" line when the interpreter's path cannot be one
#: (it has a blank, or is too long): sh re-executes the interpreter on the script.
PIP_SH_WRAPPER = "#!/bin/sh\n'''exec' \"{python}\" \"$0\" \"$@\"\n' '''\n"


class RcHarness:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.trace = tmp / "trace"
        self.trace.touch()
        self.signal_file = tmp / "signals"
        self.daemon_log = tmp / "daemon.log"
        (tmp / "rc.subr").write_text(STANDIN_RC_SUBR)
        daemon8 = Path(__file__).with_name("standin_daemon8.py")
        script = rc_text().replace(". /etc/rc.subr", f". {tmp / 'rc.subr'}")
        script = script.replace("command=/usr/sbin/daemon", f"command='{sys.executable} {daemon8}'")
        assert script.count(str(daemon8)) == 1 and str(tmp) in script, "rc.d/jailsyncd must source /etc/rc.subr and run /usr/sbin/daemon"
        self.script = tmp / "jailsyncd.rc"
        self.script.write_text(script)
        self.bin = self.install("bin", f"#!{sys.executable}\n")
        self.child_pidfile = tmp / "jailsyncd.pid"
        self.supervisor_pidfile = tmp / "jailsyncd_daemon.pid"
        self.conf = {
            "jailsyncd_bin": str(self.bin),
            "jailsyncd_pidfile": str(self.child_pidfile),
            "jailsyncd_supervisor_pidfile": str(self.supervisor_pidfile),
            "jailsyncd_restart_delay": "1",
        }
        self.started: list[int] = []

    def install(self, folder: str, header: str) -> Path:
        """The fake jailsyncd as ``<tmp>/<folder>/jailsyncd``, starting with ``header``."""
        path = self.tmp / folder / "jailsyncd"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(header + FAKE_JAILSYNCD_PY)
        path.chmod(0o755)
        return path

    def pip_wrapper(self) -> Path:
        """The fake installed as pip does for an interpreter whose path has a blank."""
        venv = self.tmp / "my venv" / "bin"
        venv.mkdir(parents=True)
        (venv / "python").symlink_to(sys.executable)
        return self.install("wrapped", PIP_SH_WRAPPER.format(python=venv / "python"))

    def run(self, command: str, *, timeout: float = 30, env: dict[str, str] | None = None, **conf: str) -> subprocess.CompletedProcess[str]:
        rc_conf = self.tmp / "rc.conf"
        rc_conf.write_text("".join(f"{k}={shlex.quote(v)}\n" for k, v in {**self.conf, **conf}.items()))
        full_env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "FAKE_RC_CONF": str(rc_conf),
            "FAKE_TRACE": str(self.trace),
            "FAKE_SIGNALS": str(self.signal_file),
            "FAKE_DAEMON_LOG": str(self.daemon_log),
            **(env or {}),
        }
        proc = subprocess.run(["sh", str(self.script), command], capture_output=True, text=True, env=full_env, timeout=timeout)
        if command == "start" and proc.returncode == 0 and "FAKE_DAEMON_ARGV" not in full_env:
            pid = self.supervisor()
            if pid:
                self.started.append(pid)
        return proc

    def show(self, **conf: str) -> dict[str, str]:
        proc = self.run("show", **conf)
        assert proc.returncode == 0, proc.stderr
        return dict(line.split("=", 1) for line in proc.stdout.splitlines())

    def daemon_argv(self, **conf: str) -> list[str]:
        """The argv that ``start`` hands to daemon(8), through rc.subr's eval."""
        record = self.tmp / "daemon-argv.json"
        record.unlink(missing_ok=True)
        proc = self.run("start", env={"FAKE_DAEMON_ARGV": str(record)}, **conf)
        assert proc.returncode == 0, proc.stderr
        return json.loads(record.read_text())

    def jailsyncd_calls(self) -> list[list[str]]:
        return [json.loads(line.split(" ", 1)[1]) for line in self.trace.read_text().splitlines() if line.startswith("jailsyncd ")]

    def runs(self) -> int:
        return len([call for call in self.jailsyncd_calls() if call[-1] == "run"])

    def supervisor(self) -> int | None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            text = self.supervisor_pidfile.read_text().strip() if self.supervisor_pidfile.exists() else ""
            if text:
                return int(text)
            time.sleep(0.02)
        return None

    def signals(self, expected: int) -> list[str]:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            got = self.signal_file.read_text().split() if self.signal_file.exists() else []
            if len(got) >= expected:
                return got
            time.sleep(0.05)
        return self.signal_file.read_text().split() if self.signal_file.exists() else []

    def cleanup(self) -> None:
        """Kill what a test left running: the supervisors it started, and their child."""
        pids = list(self.started)
        for pidfile in (self.supervisor_pidfile, self.child_pidfile):
            text = pidfile.read_text().strip() if pidfile.exists() else ""
            if text.isdigit():
                pids.append(int(text))
        for pid in pids:
            if pid != os.getpid() and alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def rc(tmp_path: Path):
    harness = RcHarness(tmp_path)
    yield harness
    harness.cleanup()


def alive(pid: int) -> bool:
    """The process exists and is not a zombie (the stand-in daemon(8) is reparented
    to init when it backgrounds itself, which reaps it)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_rc_command_line_handed_to_daemon8(rc: RcHarness) -> None:
    argv = rc.daemon_argv(jailsyncd_flags="--log-level debug")
    program = argv.index(str(rc.bin))
    daemon_opts, jailsyncd_args = argv[:program], argv[program + 1 :]
    # Global options go before the command: `run` itself takes only --pidfile.
    assert jailsyncd_args == ["--config", DEFAULT_CONFIG, "--log-level", "debug", "run"]
    pairs = {opt: daemon_opts[i + 1] for i, opt in enumerate(daemon_opts) if opt in ("-R", "-P", "-p", "-l", "-s", "-T")}
    assert pairs == {
        "-R": "1",
        "-P": str(rc.supervisor_pidfile),
        "-p": str(rc.child_pidfile),
        "-l": "daemon",
        "-s": "info",
        "-T": "jailsyncd",
    }
    assert {"-f", "-r", "-S"} <= set(daemon_opts)
    assert "-u" not in daemon_opts
    shown = rc.show(jailsyncd_flags="--log-level debug", jailsyncd_user="jailsyncd")
    assert (shown["procname"], shown["pidfile"]) == ("daemon", str(rc.supervisor_pidfile))
    # rc.subr would put ${name}_flags among daemon(8)'s options and su(1) to ${name}_user.
    assert shown["rc_flags"] == shown["_user"] == ""
    assert shown["extra_commands"].split() == ["reload", "configtest", "kick"]


def test_rc_flags_from_the_environment_also_reach_jailsyncd(rc: RcHarness) -> None:
    """rc.subr prefers ``$flags`` from the environment to ``${name}_flags``."""
    record = rc.tmp / "argv.json"
    proc = rc.run("start", env={"FAKE_DAEMON_ARGV": str(record), "flags": "--log-format console"}, jailsyncd_flags="--log-level debug")
    assert proc.returncode == 0, proc.stderr
    argv = json.loads(record.read_text())
    assert argv[argv.index(str(rc.bin)) + 1 :] == ["--config", DEFAULT_CONFIG, "--log-format", "console", "run"]


def test_rc_user_and_group_go_to_jailsyncd_not_to_daemon8(rc: RcHarness) -> None:
    argv = rc.daemon_argv(jailsyncd_user="jailsyncd", jailsyncd_group="cbsd", jailsyncd_flags="--log-level debug")
    program = argv.index(str(rc.bin))
    assert "-u" not in argv[:program]
    expected = ["--config", DEFAULT_CONFIG, "--user", "jailsyncd", "--group", "cbsd", "--log-level", "debug"]
    assert argv[program + 1 :] == [*expected, "run"]
    # configtest checks as the same user, with the same options.
    checks = [call for call in rc.jailsyncd_calls() if "check-config" in call]
    assert checks[-1] == [*expected, "check-config", "--service", "--pidfile", str(rc.child_pidfile)]


def test_rc_command_lines_are_accepted_by_jailsyncds_own_parser(rc: RcHarness) -> None:
    """What daemon(8) runs and what configtest runs, with the documented
    ``sysrc jailsyncd_flags="--log-level debug"``, a user, a group and a settings path
    with a blank, parse with jailsyncd's real command line (the fake jailsyncd above
    does not): global options before the command, which takes only its own."""
    from jailsyncd.cli import build_parser

    conf = rc.tmp / "my etc" / "jailsyncd.toml"
    knobs = {"jailsyncd_config": str(conf), "jailsyncd_flags": "--log-level debug --log-format console", "jailsyncd_user": "jailsyncd", "jailsyncd_group": "cbsd"}
    argv = rc.daemon_argv(**knobs)
    checks = [call for call in rc.jailsyncd_calls() if "check-config" in call]
    for words, command in ((argv[argv.index(str(rc.bin)) + 1 :], "run"), (checks[-1], "check-config")):
        args = build_parser().parse_args(words)
        assert (args.command, args.config, args.log_level, args.log_format) == (command, conf, "debug", "console")
        assert (args.user, args.group) == ("jailsyncd", "cbsd")
    parsed = build_parser().parse_args(checks[-1])
    assert parsed.service is True and parsed.pidfile == rc.child_pidfile


def test_rc_knobs_reach_daemon8(rc: RcHarness) -> None:
    argv = rc.daemon_argv(
        jailsyncd_config="/etc/other.toml",
        jailsyncd_syslog_tag="js",
        jailsyncd_syslog_facility="local5",
        jailsyncd_restart_delay="9",
    )
    program = argv.index(str(rc.bin))
    opts = argv[:program]
    assert opts[opts.index("-T") + 1] == "js"
    assert opts[opts.index("-l") + 1] == "local5"
    assert opts[opts.index("-R") + 1] == "9"
    assert argv[program + 1 :] == ["--config", "/etc/other.toml", "run"]


def test_rc_paths_with_blanks_and_quotes_arrive_whole(rc: RcHarness) -> None:
    odd = rc.tmp / "my conf" / "jailsyncd's \"$HOME\" `id`.toml"
    child_pidfile = rc.tmp / "run dir" / "jailsyncd.pid"
    argv = rc.daemon_argv(jailsyncd_config=str(odd), jailsyncd_pidfile=str(child_pidfile), jailsyncd_syslog_tag="js tag")
    program = argv.index(str(rc.bin))
    assert argv[program + 1 : program + 3] == ["--config", str(odd)]
    assert argv[argv.index("-p") + 1] == str(child_pidfile)
    assert argv[argv.index("-T") + 1] == "js tag"
    assert rc.jailsyncd_calls()[-1] == ["--config", str(odd), "check-config", "--service", "--pidfile", str(child_pidfile)]
    assert rc.run("configtest", jailsyncd_config=str(odd)).returncode == 0
    assert rc.jailsyncd_calls()[-1] == ["--config", str(odd), "check-config", "--service", "--pidfile", str(rc.child_pidfile)]


@pytest.mark.parametrize(
    "knob, value",
    [
        ("jailsyncd_restart_delay", "0"),
        ("jailsyncd_restart_delay", "1.5"),
        ("jailsyncd_restart_delay", "5s"),
        ("jailsyncd_restart_delay", "010"),
        ("jailsyncd_stop_timeout", "0"),
        ("jailsyncd_supervisor_pidfile", "/var/run/a b.pid"),
    ],
)
def test_rc_start_refuses_what_daemon8_or_rc_subr_would_get_wrong(rc: RcHarness, knob: str, value: str) -> None:
    """Refused before daemon(8) starts, naming the knob: a restart delay daemon(8)
    would refuse (usr.sbin/daemon/daemon.c: ``-R`` below 1 is ``errx(6, ...)``; the
    script also wants plain digits), a stop timeout of 0, and a supervisor pidfile with
    a blank, which rc.subr would split into words (libexec/rc/rc.subr: ``_pidcmd`` is
    built from ``$pidfile`` unquoted and run through ``eval``)."""
    record = rc.tmp / "argv.json"
    proc = rc.run("start", env={"FAKE_DAEMON_ARGV": str(record)}, **{knob: value})
    assert proc.returncode != 0
    assert knob in proc.stderr and "WARNING" in proc.stderr
    assert not record.exists(), "daemon(8) must not be started"


def test_standin_daemon8_refuses_a_restart_delay_of_0() -> None:
    """What the check above prevents: daemon(8) exits 6 with a terse message
    (usr.sbin/daemon/daemon.c: ``restart_delay < 1`` -> ``errx(6, ...)``)."""
    daemon8 = Path(__file__).with_name("standin_daemon8.py")
    proc = subprocess.run([sys.executable, str(daemon8), "-r", "-R", "0", "true"], capture_output=True, text=True, timeout=10)
    assert (proc.returncode, proc.stderr.strip()) == (6, "daemon: invalid restart delay")


def test_rc_start_runs_configtest_first(rc: RcHarness) -> None:
    record = rc.tmp / "argv.json"
    bad = rc.run("start", env={"FAKE_BAD_CONFIG": "1", "FAKE_DAEMON_ARGV": str(record)})
    assert bad.returncode != 0
    assert "bad config" in bad.stderr and "not starting" in bad.stderr
    assert not record.exists()
    rc.daemon_argv()
    checks = [call for call in rc.jailsyncd_calls() if "check-config" in call]
    assert checks == [["--config", DEFAULT_CONFIG, "check-config", "--service", "--pidfile", str(rc.child_pidfile)]] * 2


def test_rc_configtest_prints_the_settings(rc: RcHarness) -> None:
    proc = rc.run("configtest")
    assert proc.returncode == 0 and '"host"' in proc.stdout
    assert rc.run("configtest", env={"FAKE_BAD_CONFIG": "1"}).returncode == 78


@pytest.mark.parametrize("install", ["python shebang", "pip sh wrapper"])
def test_rc_start_status_reload_kick_stop(rc: RcHarness, install: str) -> None:
    """The whole life under the stand-ins, with jailsyncd installed either way: the
    child is found through its pidfile for reload and kick (SIGHUP and SIGUSR1 reach
    jailsyncd itself), and stop ends both processes."""
    if install == "pip sh wrapper":
        rc.conf["jailsyncd_bin"] = str(rc.pip_wrapper())
    proc = rc.run("start")
    assert proc.returncode == 0, proc.stderr
    supervisor = rc.supervisor()
    assert supervisor and rc.signals(1) == ["STARTED"]
    status = rc.run("status")
    assert status.stdout.strip() == f"jailsyncd is running as pid {supervisor}."
    reload = rc.run("reload")
    assert reload.returncode == 0
    # jailsyncd refuses, in its log only, a file that changes what needs a restart: the
    # reload must not read as done for those (health.enabled, [consul], ...).
    assert "restart" in reload.stdout and "config_reload_failed" in reload.stdout, reload.stdout
    assert rc.signals(2) == ["STARTED", "HUP"]
    assert rc.run("kick").returncode == 0
    assert rc.signals(3) == ["STARTED", "HUP", "USR1"]
    child = int(rc.child_pidfile.read_text())
    started = time.monotonic()
    stop = rc.run("stop", timeout=20)
    assert stop.returncode == 0, stop.stderr
    assert time.monotonic() - started < 5
    assert not alive(supervisor) and not alive(child)
    assert not rc.child_pidfile.exists() and not rc.supervisor_pidfile.exists()
    assert rc.run("status").returncode != 0


def test_rc_reload_and_kick_without_a_running_child_fail(rc: RcHarness) -> None:
    for command in ("reload", "kick"):
        proc = rc.run(command)
        assert proc.returncode != 0
        assert "not running" in proc.stderr
    other = subprocess.Popen(["sleep", "30"])  # a live process that is not jailsyncd
    try:
        rc.child_pidfile.write_text(str(other.pid))
        assert "not running" in rc.run("kick").stderr
    finally:
        rc.child_pidfile.unlink()
        other.kill()
        other.wait()


def crash_loop(rc: RcHarness, delay: int) -> int:
    """Start jailsyncd crash-looping under the stand-in daemon(8); return the supervisor's
    pid once it has restarted jailsyncd at least once."""
    proc = rc.run("start", env={"FAKE_CRASH": "1"}, jailsyncd_restart_delay=str(delay))
    assert proc.returncode == 0, proc.stderr
    supervisor = rc.supervisor()
    assert supervisor
    wait_for(lambda: rc.runs() >= 2, timeout=delay * 3 + 5, what="a restart")
    return supervisor


def test_standin_daemon8_loses_sigterm_while_it_sleeps(rc: RcHarness) -> None:
    """Why rc.subr's default stop hangs: one SIGTERM, then wait_for_pids (which waits
    with no timeout) while daemon(8) sleeps before a restart. The SIGTERM is lost and
    the supervisor keeps restarting jailsyncd (usr.sbin/daemon/daemon.c, FreeBSD 14:
    daemon_sleep() runs with SIGTERM ignored and no kqueue)."""
    delay = 2
    supervisor = crash_loop(rc, delay)
    runs = rc.runs()
    wait_for(lambda: rc.runs() > runs, timeout=delay * 3 + 5, what="the next run")
    time.sleep(0.8)  # that run's 0.3 s are over: daemon(8) sleeps now
    default_stop = f". {rc.tmp / 'rc.subr'}; kill -TERM {supervisor}; wait_for_pids {supervisor}"
    with pytest.raises(subprocess.TimeoutExpired):
        subprocess.run(["sh", "-c", default_stop], timeout=delay * 3, capture_output=True)
    assert alive(supervisor) and rc.runs() > runs + 1


def test_rc_stop_ends_a_crash_loop(rc: RcHarness) -> None:
    """The rc.d stop against the SIGTERM that daemon(8) loses while it sleeps before
    a restart (usr.sbin/daemon/daemon.c of FreeBSD 14: ``daemon_sleep()`` with SIGTERM
    at SIG_IGN): sent again until the supervisor is gone, it ends a crash loop within
    about one restart delay, without SIGKILL."""
    delay = 2
    supervisor = crash_loop(rc, delay)
    started = time.monotonic()
    proc = rc.run("stop", timeout=delay * 5 + 10)
    took = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr
    assert not alive(supervisor)
    assert took < delay + 3, f"stop took {took:.1f}s"
    assert "SIGKILL" not in proc.stderr


def test_rc_stop_is_bounded_and_says_so(rc: RcHarness) -> None:
    """A jailsyncd that ignores SIGTERM: stop gives up after jailsyncd_stop_timeout,
    kills both with SIGKILL, says so, and removes the pidfiles."""
    proc = rc.run("start", env={"FAKE_HANG": "1"})
    assert proc.returncode == 0, proc.stderr
    supervisor = rc.supervisor()
    assert supervisor and rc.signals(1) == ["STARTED"]
    child = int(rc.child_pidfile.read_text())
    started = time.monotonic()
    proc = rc.run("stop", timeout=30, jailsyncd_stop_timeout="2")
    took = time.monotonic() - started
    assert proc.returncode != 0
    expected = f"daemon(8) (pid {supervisor}) still runs 2s after SIGTERM: sending SIGKILL to it and to jailsyncd (pid {child})"
    assert expected in proc.stderr
    assert 2 <= took < 8
    assert not alive(supervisor) and not alive(child)
    assert not rc.child_pidfile.exists() and not rc.supervisor_pidfile.exists()


def test_rc_stop_when_nothing_runs(rc: RcHarness) -> None:
    """As rc.subr's own stop (libexec/rc/rc.subr, run_rc_command): ``stop`` says
    "not running?" and fails; ``faststop``, what rc.shutdown runs for every script
    with ``KEYWORD: shutdown`` (libexec/rc/rc.shutdown), is silent and succeeds, so
    an enabled jailsyncd that is not running adds no error to the shutdown."""
    stop = rc.run("stop")
    assert stop.returncode != 0 and f"jailsyncd not running? (check {rc.supervisor_pidfile})." in stop.stderr
    fast = rc.run("faststop")
    assert (fast.returncode, fast.stdout, fast.stderr) == (0, "", "")


def test_rc_restart_stops_then_starts_again(rc: RcHarness) -> None:
    """rc.subr's restart runs ``stop`` (here the bounded stop_cmd) and then ``start``
    (configtest first, then daemon(8)): a new supervisor and a new jailsyncd, the old
    ones gone."""
    assert rc.run("start").returncode == 0
    first = rc.supervisor()
    assert first and rc.signals(1) == ["STARTED"]
    first_child = int(rc.child_pidfile.read_text())
    proc = rc.run("restart", timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert "Stopping jailsyncd." in proc.stdout and "Starting jailsyncd." in proc.stdout
    second = rc.supervisor()
    assert second and second != first
    rc.started.append(second)
    assert rc.signals(2) == ["STARTED", "STARTED"]
    assert not alive(first) and not alive(first_child)
    checks = [call for call in rc.jailsyncd_calls() if "check-config" in call]
    assert len(checks) == 2
    assert rc.run("stop", timeout=20).returncode == 0
    assert not alive(second)
