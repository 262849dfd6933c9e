"""The FreeBSD service files stay correct and in step with the code and the docs.

FreeBSD is not available to the test suite. Here ``rc.d/jailsyncd`` is checked
statically (its knobs, pidfiles, commands and rcorder header), both man pages
document every setting and exit status, and the syslog.d and newsyslog snippets
route and rotate /var/log/jailsyncd.log. The checks that run a program (``sh -n``,
``shellcheck -s sh``, ``mandoc -Tlint``) are in ``tests/static/test_shipped_files.py``;
running the script under ``/bin/sh`` against stand-ins for /etc/rc.subr and daemon(8)
is in ``tests/integration/test_rc_script.py``.
"""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

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
    "jailsyncd_user": "",
    "jailsyncd_group": "",
    "jailsyncd_syslog_tag": "jailsyncd",
    "jailsyncd_syslog_facility": "daemon",
    "jailsyncd_syslog_priority": "info",
    "jailsyncd_pidfile": "/var/run/jailsyncd.pid",
    "jailsyncd_supervisor_pidfile": "/var/run/jailsyncd_daemon.pid",
    "jailsyncd_restart_delay": "5",
    "jailsyncd_stop_timeout": "30",
    "jailsyncd_bin": "/usr/local/bin/jailsyncd",
}


def rc_text() -> str:
    return RC.read_text()


# -- rc.d/jailsyncd: static checks -----------------------------------------------------


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
    assert '-P $(jailsyncd_quote "${jailsyncd_supervisor_pidfile}")' in text
    assert '-p $(jailsyncd_quote "${jailsyncd_child_pidfile}")' in text
    assert re.search(r"^jailsyncd_child_pidfile=\$\{jailsyncd_pidfile\}$", text, re.M)


def test_rc_script_commands() -> None:
    text = rc_text()
    extra = re.search(r'^extra_commands="([^"]*)"$', text, re.M)
    assert extra and {"reload", "configtest", "kick"} <= set(extra.group(1).split())
    for command in ("reload", "configtest", "kick", "stop"):
        assert re.search(rf"^{command}_cmd=jailsyncd_{command}$", text, re.M)
    assert re.search(r"^start_precmd=jailsyncd_prestart$", text, re.M)
    assert "check-config --service" in function_body(text, "jailsyncd_configtest")
    assert "jailsyncd_configtest" in function_body(text, "jailsyncd_prestart")
    assert "jailsyncd_signal HUP" in function_body(text, "jailsyncd_reload")
    assert "jailsyncd_signal USR1" in function_body(text, "jailsyncd_kick")
    assert "${jailsyncd_child_pidfile}" in function_body(text, "jailsyncd_child_pid")


def test_rc_script_says_only_what_rc_subr_does() -> None:
    """rc.subr never reads ``${name}_pidfile`` (libexec/rc/rc.subr: ``_pidcmd`` uses
    ``$pidfile`` only): the script must not claim it replaces ``pidfile``."""
    text = rc_text()
    assert not re.search(r"_pidfile\}?\s+replaces", text)
    assert "jailsyncd_pidfile=\n" not in text  # nothing to hide from rc.subr


def function_body(text: str, name: str) -> str:
    m = re.search(rf"^{name}\(\)\n\{{\n(.*?)^\}}$", text, re.M | re.S)
    assert m, f"function {name} not found"
    return m.group(1)


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


def test_what_a_ping_means_is_said_where_operators_read_about_health() -> None:
    """Issue 11 item 4: a non-VNET jail's address is an alias on the host (jail(8):
    ``ip4.addr`` adds it to the host's interface, no stack of its own), so the host's
    kernel answers its ping; a VNET jail or a bhyve VM answers from its own stack.
    Said in the ``[health]`` section of jailsyncd.toml(5), in jailsyncd(8)'s
    description, in configuration.md's ``health.enabled`` row and in operations.md's
    FreeBSD section."""
    health5 = MAN5.read_text().split(".Ss [health]", 1)[1].split(".Ss ", 1)[0]
    description8 = MAN8.read_text().split(".Sh DESCRIPTION", 1)[1].split(".Sh ", 1)[0]
    enabled = next(line for line in CONFIGURATION.read_text().splitlines() if line.startswith("| `health.enabled`"))
    freebsd = OPERATIONS.read_text().split("## FreeBSD", 1)[1].split("\n## ", 1)[0]
    for where, text in (("jailsyncd.toml(5) [health]", health5), ("jailsyncd(8)", description8), ("configuration.md", enabled), ("operations.md", freebsd)):
        flat = " ".join(text.split())
        assert "non-VNET jail" in flat and "alias on the" in flat, where
        assert "VNET jail" in flat.replace("non-VNET jail", "") and "bhyve VM" in flat, where
