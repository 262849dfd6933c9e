"""The FreeBSD service files stay correct and in step with the code and the docs.

FreeBSD is not available to the test suite, so ``rc.d/jailsyncd`` is checked in two
ways: statically (``sh -n``, ``shellcheck -s sh``, its knobs, pidfiles and commands)
and by running it under ``/bin/sh`` against a small stand-in for ``/etc/rc.subr``
that records what the script hands to rc.subr and lets its own functions (configtest,
start_precmd, reload, kick) run for real against a fake ``jailsyncd`` and a process
that records the signals it receives. What real rc.subr and daemon(8) then do with
those values is not tested here.

Also: both man pages are ``mandoc -Tlint`` clean and document every setting and exit
status; the syslog.d and newsyslog snippets route and rotate /var/log/jailsyncd.log.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import time
from dataclasses import fields
from pathlib import Path

import pytest

from jailsyncd.errors import ExitCode
from jailsyncd.settings import Settings
from jailsyncd.tagspec import Rule

ROOT = Path(__file__).resolve().parents[2]
RC = ROOT / "rc.d" / "jailsyncd"
MAN8 = ROOT / "docs" / "man" / "jailsyncd.8"
MAN5 = ROOT / "docs" / "man" / "jailsyncd.toml.5"
CONFIGURATION = ROOT / "docs" / "configuration.md"
OPERATIONS = ROOT / "docs" / "operations.md"
NEWSYSLOG = ROOT / "etc" / "newsyslog.conf.d" / "jailsyncd.conf"
SYSLOG = ROOT / "etc" / "syslog.d" / "jailsyncd.conf"
LOGFILE = "/var/log/jailsyncd.log"

#: Every rc.conf knob of rc.d/jailsyncd and its default.
KNOBS = {
    "jailsyncd_enable": "NO",
    "jailsyncd_config": "/usr/local/etc/jailsyncd.toml",
    "jailsyncd_flags": "",
    "jailsyncd_user": "root",
    "jailsyncd_syslog_tag": "jailsyncd",
    "jailsyncd_syslog_facility": "daemon",
    "jailsyncd_syslog_priority": "info",
    "jailsyncd_pidfile": "/var/run/jailsyncd.pid",
    "jailsyncd_supervisor_pidfile": "/var/run/jailsyncd_daemon.pid",
    "jailsyncd_restart_delay": "5",
    "jailsyncd_bin": "/usr/local/bin/jailsyncd",
}


def rc_text() -> str:
    return RC.read_text()


# -- rc.d/jailsyncd: static checks -----------------------------------------------------


def test_rc_script_is_executable_and_parses() -> None:
    assert os.access(RC, os.X_OK), f"{RC} must be executable (installed with mode 555)"
    proc = subprocess.run(["sh", "-n", str(RC)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_rc_script_passes_shellcheck() -> None:
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (scripts/system-deps installs it)")
    proc = subprocess.run(["shellcheck", "-s", "sh", str(RC)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_rc_script_disables_shellcheck_only_for_rc_subr_idioms_with_a_reason() -> None:
    for line in rc_text().splitlines():
        m = re.search(r"#\s*shellcheck\s+disable=(\S+)(.*)", line)
        if m:
            assert set(m.group(1).split(",")) <= {"SC1091", "SC2034", "SC2086"}, line
            assert m.group(2).strip().startswith("#"), f"no reason given: {line}"


#: The rcorder(8) headers of the scripts jailsyncd orders itself after, as shipped
#: (cbsd: rc.d/cbsdd; freebsd-ports: sysutils/consul/files/consul.in).
RECORDED_RC_HEADERS = {
    "cbsdd": {"PROVIDE": ["cbsdd"], "REQUIRE": ["LOGIN", "FILESYSTEMS", "sshd"], "KEYWORD": ["shutdown"]},
    "consul": {"PROVIDE": ["consul"], "REQUIRE": ["LOGIN"], "KEYWORD": ["shutdown"]},
}


def test_rc_script_rcorder_header() -> None:
    """jailsyncd starts after CBSD's and Consul's rc.d scripts and, since rc.shutdown
    runs ``rcorder -k shutdown`` in reverse (libexec/rc/rc.shutdown), stops before
    them. A REQUIRE nobody PROVIDEs only makes rcorder warn and set its exit status
    (sbin/rcorder/rcorder.c, satisfy_req()); /etc/rc discards both (``2>/dev/null``)."""
    text = rc_text()
    header = dict(re.findall(r"^# (PROVIDE|REQUIRE|KEYWORD): (.*)$", text, re.M))
    assert header["PROVIDE"].split() == ["jailsyncd"]
    required = header["REQUIRE"].split()
    assert {"LOGIN", "NETWORKING", "cbsdd", "consul"} <= set(required)
    assert "shutdown" in header["KEYWORD"].split()
    for script, recorded in RECORDED_RC_HEADERS.items():
        assert set(recorded["PROVIDE"]) & set(required), f"{script}'s PROVIDE is not required"
        assert "shutdown" in recorded["KEYWORD"], f"{script} is not stopped at shutdown"
        assert "jailsyncd" not in recorded["REQUIRE"]  # no cycle
    # the comment paragraph right after the header says that both may be missing
    paragraph = text.split("# KEYWORD:", 1)[1].split("\n#\n", 2)[1]
    assert all(word in paragraph for word in ("cbsdd", "consul", "optional", "rcorder", "queues", "shutdown"))


def test_rc_script_defines_and_documents_every_knob() -> None:
    text = rc_text()
    defaults = dict(re.findall(r'^: "\$\{(jailsyncd_\w+):=([^}]*)\}"$', text, re.M))
    assert defaults == KNOBS
    for knob in KNOBS:
        assert re.search(rf"^# {knob} \(", text, re.M), f"{knob} is not documented in the header"
    assert re.search(r"^name=jailsyncd$", text, re.M)
    assert re.search(r"^rcvar=jailsyncd_enable$", text, re.M)
    assert re.search(r'^load_rc_config "\$name"$', text, re.M)
    assert text.rstrip().endswith('run_rc_command "$1"')


def test_rc_script_tracks_the_supervisor_and_knows_both_pidfiles() -> None:
    text = rc_text()
    assert re.search(r"^command=/usr/sbin/daemon$", text, re.M)
    assert re.search(r"^procname=daemon$", text, re.M)
    assert re.search(r"^pidfile=\$\{jailsyncd_supervisor_pidfile\}$", text, re.M)
    assert "-P ${jailsyncd_supervisor_pidfile}" in text
    assert "-p ${jailsyncd_child_pidfile}" in text
    assert re.search(r"^jailsyncd_child_pidfile=\$\{jailsyncd_pidfile\}$", text, re.M)


def test_rc_script_extra_commands() -> None:
    text = rc_text()
    extra = re.search(r'^extra_commands="([^"]*)"$', text, re.M)
    assert extra and {"reload", "configtest", "kick"} <= set(extra.group(1).split())
    for command in ("reload", "configtest", "kick"):
        assert re.search(rf"^{command}_cmd=jailsyncd_{command}$", text, re.M)
    assert re.search(r"^start_precmd=jailsyncd_prestart$", text, re.M)
    configtest = function_body(text, "jailsyncd_configtest")
    assert '--config "${jailsyncd_config}" check-config' in configtest
    assert "jailsyncd_configtest" in function_body(text, "jailsyncd_prestart")
    assert "jailsyncd_signal HUP" in function_body(text, "jailsyncd_reload")
    assert "jailsyncd_signal USR1" in function_body(text, "jailsyncd_kick")
    assert "${jailsyncd_child_pidfile}" in function_body(text, "jailsyncd_child_pid")


def function_body(text: str, name: str) -> str:
    m = re.search(rf"^{name}\(\)\n\{{\n(.*?)^\}}$", text, re.M | re.S)
    assert m, f"function {name} not found"
    return m.group(1)


# -- rc.d/jailsyncd: run against a stand-in rc.subr ------------------------------------

FAKE_RC_SUBR = r"""
# Stand-in for FreeBSD's /etc/rc.subr: just what rc.d/jailsyncd uses.
load_rc_config() { . "$FAKE_RC_CONF"; }
warn() { echo "$name: WARNING: $*" >&2; }
check_pidfile() {
	echo "check_pidfile $*" >>"$FAKE_TRACE"
	[ -r "$1" ] || return 0
	read -r _pid _junk <"$1"
	if [ -n "$_pid" ] && kill -0 "$_pid" 2>/dev/null; then echo "$_pid"; fi
}
run_rc_command() {
	case "$1" in
	show)
		for _v in command procname pidfile command_args extra_commands \
		    jailsyncd_flags jailsyncd_user jailsyncd_pidfile; do
			eval "printf '%s=%s\n' $_v \"\$$_v\""
		done
		;;
	start)
		eval "_pre=\$start_precmd"
		if ! $_pre; then echo "failed precmd routine for $name" >&2; return 1; fi
		echo "would run: $command $command_args"
		;;
	*)
		eval "_cmd=\$${1}_cmd"
		$_cmd
		;;
	esac
}
"""

FAKE_JAILSYNCD = """#!/bin/sh
echo "jailsyncd $*" >>"$FAKE_TRACE"
[ "$1 $3" = "--config check-config" ] || exit 64
if [ -n "$FAKE_BAD_CONFIG" ]; then echo "jailsyncd: $2: bad config" >&2; exit 78; fi
echo '{"host": {"name": "node1"}}'
"""

# Records the signals it gets; its pid goes into the child pidfile.
SIGNAL_RECORDER = """
trap 'echo HUP >>"$0.signals"' HUP
trap 'echo USR1 >>"$0.signals"' USR1
echo $$ >"$0"
i=0
while [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
"""


class RcHarness:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.trace = tmp / "trace"
        self.trace.touch()
        (tmp / "rc.subr").write_text(FAKE_RC_SUBR)
        script = rc_text().replace(". /etc/rc.subr", f". {tmp / 'rc.subr'}")
        assert script != rc_text(), "rc.d/jailsyncd must source /etc/rc.subr"
        self.script = tmp / "jailsyncd.rc"
        self.script.write_text(script)
        self.bin = tmp / "bin" / "jailsyncd"
        self.bin.parent.mkdir()
        self.bin.write_text(FAKE_JAILSYNCD)
        self.bin.chmod(0o755)
        self.child_pidfile = tmp / "jailsyncd.pid"
        self.conf = {"jailsyncd_bin": str(self.bin), "jailsyncd_pidfile": str(self.child_pidfile)}

    def run(self, command: str, bad_config: bool = False, **conf: str) -> subprocess.CompletedProcess[str]:
        rc_conf = self.tmp / "rc.conf"
        rc_conf.write_text("".join(f"{k}={shlex.quote(v)}\n" for k, v in {**self.conf, **conf}.items()))
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "FAKE_RC_CONF": str(rc_conf), "FAKE_TRACE": str(self.trace)}
        if bad_config:
            env["FAKE_BAD_CONFIG"] = "1"
        return subprocess.run(["sh", str(self.script), command], capture_output=True, text=True, env=env, timeout=30)

    def show(self, **conf: str) -> dict[str, str]:
        proc = self.run("show", **conf)
        assert proc.returncode == 0, proc.stderr
        return dict(line.split("=", 1) for line in proc.stdout.splitlines())

    def start_child(self) -> subprocess.Popen[bytes]:
        recorder = subprocess.Popen(["sh", "-c", SIGNAL_RECORDER, str(self.child_pidfile)])
        deadline = time.monotonic() + 10
        while not (self.child_pidfile.exists() and self.child_pidfile.read_text().strip()):
            assert time.monotonic() < deadline, "signal recorder did not start"
            time.sleep(0.02)
        return recorder

    def signals(self, expected: int) -> list[str]:
        path = Path(f"{self.child_pidfile}.signals")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            got = path.read_text().split() if path.exists() else []
            if len(got) >= expected:
                return got
            time.sleep(0.05)
        return path.read_text().split() if path.exists() else []


@pytest.fixture
def rc(tmp_path: Path):
    harness = RcHarness(tmp_path)
    yield harness


def test_rc_command_line_handed_to_daemon8(rc: RcHarness) -> None:
    shown = rc.show(jailsyncd_flags="--log-level debug")
    assert shown["command"] == "/usr/sbin/daemon"
    assert shown["procname"] == "daemon"
    assert shown["pidfile"] == KNOBS["jailsyncd_supervisor_pidfile"]
    args = shown["command_args"].split()
    program = args.index(str(rc.bin))
    daemon_opts, jailsyncd_args = args[:program], args[program + 1 :]
    assert jailsyncd_args == ["--config", KNOBS["jailsyncd_config"], "run", "--log-level", "debug"]
    pairs = {opt: daemon_opts[i + 1] for i, opt in enumerate(daemon_opts) if opt in ("-R", "-P", "-p", "-l", "-s", "-T")}
    assert pairs == {
        "-R": "5",
        "-P": KNOBS["jailsyncd_supervisor_pidfile"],
        "-p": str(rc.child_pidfile),
        "-l": "daemon",
        "-s": "info",
        "-T": "jailsyncd",
    }
    assert {"-r", "-S"} <= set(daemon_opts)
    assert "-u" not in daemon_opts, "root needs no daemon -u"
    # rc.subr would put ${name}_flags before $command_args, su(1) to ${name}_user and
    # track ${name}_pidfile: the script must hand none of them to rc.subr.
    assert shown["jailsyncd_flags"] == shown["jailsyncd_user"] == shown["jailsyncd_pidfile"] == ""
    assert shown["extra_commands"].split() == ["reload", "configtest", "kick"]


def test_rc_knobs_reach_daemon8(rc: RcHarness) -> None:
    shown = rc.show(
        jailsyncd_user="consulsync",
        jailsyncd_config="/etc/other.toml",
        jailsyncd_syslog_tag="js",
        jailsyncd_syslog_facility="local5",
        jailsyncd_restart_delay="9",
        jailsyncd_supervisor_pidfile="/var/run/other_daemon.pid",
    )
    args = shown["command_args"].split()
    program = args.index(str(rc.bin))
    daemon_opts = args[:program]
    assert daemon_opts[daemon_opts.index("-u") + 1] == "consulsync"
    assert daemon_opts[daemon_opts.index("-T") + 1] == "js"
    assert daemon_opts[daemon_opts.index("-l") + 1] == "local5"
    assert daemon_opts[daemon_opts.index("-R") + 1] == "9"
    assert daemon_opts[daemon_opts.index("-P") + 1] == shown["pidfile"] == "/var/run/other_daemon.pid"
    assert args[program + 1 : program + 4] == ["--config", "/etc/other.toml", "run"]
    assert shown["jailsyncd_user"] == ""


def test_rc_start_runs_configtest_first(rc: RcHarness) -> None:
    bad = rc.run("start", bad_config=True)
    assert bad.returncode != 0
    assert "bad config" in bad.stderr and "not starting" in bad.stderr
    assert "would run" not in bad.stdout
    good = rc.run("start")
    assert good.returncode == 0, good.stderr
    assert "would run: /usr/sbin/daemon" in good.stdout
    assert rc.trace.read_text().count(f"--config {KNOBS['jailsyncd_config']} check-config") == 2


def test_rc_configtest_prints_the_settings(rc: RcHarness) -> None:
    proc = rc.run("configtest")
    assert proc.returncode == 0 and '"host"' in proc.stdout
    assert rc.run("configtest", bad_config=True).returncode == 78


def test_rc_reload_and_kick_signal_the_child(rc: RcHarness) -> None:
    child = rc.start_child()
    try:
        proc = rc.run("reload")
        assert proc.returncode == 0, proc.stderr
        assert rc.signals(1) == ["HUP"]
        proc = rc.run("kick")
        assert proc.returncode == 0, proc.stderr
        assert rc.signals(2) == ["HUP", "USR1"]
        bad = rc.run("reload", bad_config=True)
        assert bad.returncode != 0 and "not reloading" in bad.stderr
        time.sleep(0.3)
        assert rc.signals(2) == ["HUP", "USR1"], "a bad config must not be signalled"
    finally:
        child.kill()
        child.wait()
    # The child is looked up in the child pidfile, as "<interpreter> <program>".
    checks = [line for line in rc.trace.read_text().splitlines() if line.startswith("check_pidfile")]
    assert checks and all(line == f"check_pidfile {rc.child_pidfile} {rc.bin} /bin/sh" for line in checks)


def test_rc_reload_without_a_running_child_fails(rc: RcHarness) -> None:
    for command in ("reload", "kick"):
        proc = rc.run(command)
        assert proc.returncode != 0
        assert "not running" in proc.stderr


# -- syslog and newsyslog --------------------------------------------------------------


def test_syslog_routes_the_tag_to_the_log_file() -> None:
    lines = [line.strip() for line in SYSLOG.read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert lines[0] == "!" + KNOBS["jailsyncd_syslog_tag"]
    selector, target = lines[1].split()
    assert (selector, target) == ("*.*", LOGFILE)
    assert lines[-1] == "!*"


def test_newsyslog_rotates_the_log_file() -> None:
    entries = [line.split() for line in NEWSYSLOG.read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert len(entries) == 1
    path, owner, mode, count, size, when, flags = entries[0]
    assert path == LOGFILE
    assert owner == "root:wheel" and mode == "640"
    assert int(count) >= 1
    assert size == "*" or int(size) > 0
    assert size != "*" or when != "*", "rotate by size or time"
    # report reads .gz (Z), .bz2 (J) and .xz (X) rotated files.
    assert re.search(r"[JZX]", flags) and "C" in flags
    assert re.search(r"^# .*Fields", NEWSYSLOG.read_text(), re.M)


# -- man pages -------------------------------------------------------------------------


@pytest.mark.parametrize("page", [MAN8, MAN5], ids=lambda p: p.name)
def test_man_page_is_mandoc_lint_clean(page: Path) -> None:
    if shutil.which("mandoc") is None:
        pytest.skip("mandoc is not installed (scripts/system-deps installs it)")
    proc = subprocess.run(["mandoc", "-Tlint", "-W", "warning", str(page)], capture_output=True, text=True)
    assert proc.stdout + proc.stderr == ""
    assert proc.returncode == 0


def toml5_keys() -> set[str]:
    """``section.key`` for every ``.It Cm key`` under a ``.Ss [section]`` of jailsyncd.toml.5."""
    keys: set[str] = set()
    section = None
    for line in MAN5.read_text().splitlines():
        if line.startswith((".Sh", ".Ss")):
            m = re.match(r"\.Ss \[\[?([a-z0-9_]+)\]\]?(?:\\&)?$", line)
            section = m.group(1) if m else None
        elif section and (m := re.match(r"\.It Cm ([a-z0-9_]+)", line)):
            keys.add(f"{section}.{m.group(1)}")
    return keys


def configuration_md_keys() -> set[str]:
    """Every key named in the first column of the tables of docs/configuration.md."""
    keys: set[str] = set()
    prefix = ""
    for line in CONFIGURATION.read_text().splitlines():
        if line.startswith("#"):
            prefix = "rule." if "[[rule]]" in line else ""
        elif line.startswith("| `"):
            first_cell = line.split("|")[1]
            keys.update(prefix + key for key in re.findall(r"`([a-z0-9_.]+)`", first_cell))
    return keys


def test_configuration_md_keys_are_in_the_toml_man_page() -> None:
    documented = configuration_md_keys()
    assert {"host.name", "consul.key_file", "sync.prefer_ipv6", "rule.match", "rule.enabled"} <= documented
    assert sorted(documented - toml5_keys()) == []


def test_every_settings_key_is_in_the_toml_man_page() -> None:
    expected = {f"rule.{key.name}" for key in fields(Rule)}
    for section in fields(Settings):
        if section.name in ("rules", "source"):
            continue
        expected.update(f"{section.name}.{key.name}" for key in fields(section.default_factory()) if key.name != "token")
    assert sorted(expected - toml5_keys()) == []


def test_every_exit_status_is_in_the_man_page() -> None:
    text = MAN8.read_text()
    exit_section = text.split(".Sh EXIT STATUS", 1)[1].split(".Sh ", 1)[0]
    listed = {int(n) for n in re.findall(r"^\.It (\d+)$", exit_section, re.M)}
    codes = {v for k, v in vars(ExitCode).items() if k.isupper()}
    assert codes <= listed


def test_man_page_synopsis_names_every_command() -> None:
    from jailsyncd.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices  # noqa: SLF001
    synopsis = MAN8.read_text().split(".Sh SYNOPSIS", 1)[1].split(".Sh ", 1)[0]
    assert {m for m in re.findall(r"^\.Cm (\S+)$", synopsis, re.M)} >= set(commands)


def test_operations_doc_covers_the_knobs_and_exit_codes() -> None:
    text = OPERATIONS.read_text()
    for knob in KNOBS:
        assert f"`{knob}`" in text, knob
    for code in {v for k, v in vars(ExitCode).items() if k.isupper()}:
        assert re.search(rf"^\| {code} \|", text, re.M), code
    assert "not tested on freebsd" in text.lower()
