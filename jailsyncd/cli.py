"""The ``jailsyncd`` command: parses arguments, runs a command, maps errors to exit codes.

The only module that exits the process. Every ``JailsyncdError`` becomes one line on
stderr (``jailsyncd: ...``) and its ``exit_code``; no traceback is shown unless
``JAILSYNCD_DEBUG=1``. Commands:

- ``plan``: a dry run; a readable diff, or ``--json``;
- ``once``: one cycle, applied;
- ``check-config``: load and validate the settings, print them (no secrets);
- ``purge --yes``: deregister everything this host owns;
- ``run``: the service (``daemon.Daemon``); ``kick``: SIGUSR1 to a running one, after
  checking that the pidfile's PID is a ``jailsyncd run`` (``pidfile``);
- ``report``: drift reports from jailsyncd's JSON logs (``report``);
- ``status``: what the running daemon is doing, from its pidfile and metrics (``status``);
- ``version``.

This module stays light: ``kick`` and ``version`` run from here; every other command
is in ``commands``, imported only when one of them runs.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import traceback
from pathlib import Path

from jailsyncd import __version__, report
from jailsyncd import platform as platform_module
from jailsyncd.errors import ExitCode, JailsyncdError
from jailsyncd.pidfile import running_jailsyncd
from jailsyncd.settings import DEFAULT_CONFIG

DEFAULT_PIDFILE = Path("/var/run/jailsyncd.pid")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jailsyncd", description="Keep Consul in step with the jails and VMs of a CBSD host.")
    parser.add_argument("--config", type=Path, default=None, help=f"settings file (default {DEFAULT_CONFIG})")
    parser.add_argument("--log-format", choices=("json", "console"), help="override log.format")
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"), help="override log.level")
    parser.add_argument("--user", help="override daemon.user: the user run switches to after start (as root)")
    parser.add_argument("--group", help="override daemon.group")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("plan", help="show what a cycle would change (dry run)")
    p.add_argument("--json", action="store_true", help="print the plan as one JSON object")
    p.add_argument("--force", action="store_true", help="plan past the max_deregistrations rail")
    p.add_argument("--startup-grace", action="store_true", help="plan as run does right after it started (sync.startup_grace)")
    p = sub.add_parser("once", help="run one reconcile cycle and exit")
    p.add_argument("--force", action="store_true", help="apply deregistrations beyond sync.max_deregistrations")
    p.add_argument("--startup-grace", action="store_true", help="hold back deregistrations as run does right after it started (sync.startup_grace)")
    p = sub.add_parser("check-config", help="validate the settings and print them (secrets redacted)")
    p.add_argument("--online", action="store_true", help="also check Consul: reachable, leader, token, the mode's permissions")
    p.add_argument(
        "--service", action="store_true",
        help="also check, as daemon.user, what run needs at start: files readable, metrics.listen free (rc.d configtest)",
    )
    p.add_argument(
        "--pidfile", type=Path,
        help="with --service: the pidfile of the running jailsyncd run; a metrics.listen that process holds is not busy (rc.d reload)",
    )
    p = sub.add_parser("purge", help="deregister every service this host owns")
    p.add_argument("--yes", action="store_true", help="really do it")
    p = sub.add_parser("run", help="run as a service: reconcile every sync.interval and on CBSD changes")
    p.add_argument("--pidfile", type=Path, help="lock this file and write the process ID into it once started (removed on exit)")
    p = sub.add_parser("kick", help="ask the running daemon for a cycle now (SIGUSR1)")
    p.add_argument("--pidfile", type=Path, default=DEFAULT_PIDFILE, help=f"the daemon's pidfile (default {DEFAULT_PIDFILE})")
    p = sub.add_parser("status", help="show what the running daemon is doing (reads its pidfile and metrics; exit 3: not running)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--pidfile", type=Path, default=DEFAULT_PIDFILE, help=f"the daemon's pidfile (default {DEFAULT_PIDFILE})")
    report.add_parser(sub)
    sub.add_parser("version", help="print the version")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "version":
        print(f"jailsyncd {__version__}")
        return ExitCode.OK
    if args.command == "kick":
        return cmd_kick(args)
    if args.command == "report":  # reads logs only: works even with a broken config
        try:
            return report.run(args)
        except JailsyncdError as exc:
            print(f"jailsyncd: {exc}", file=sys.stderr)
            return exc.exit_code
    try:
        # Imported here, not at the top: ``kick`` (run by CBSD hooks under a 0.9 s
        # bound) and ``version`` need none of it, and it costs most of the start-up.
        from jailsyncd import commands

        return commands.run(args)
    except JailsyncdError as exc:
        print(f"jailsyncd: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - the last line of defence: one line, no traceback
        if os.environ.get("JAILSYNCD_DEBUG") == "1":
            traceback.print_exc()
        print(f"jailsyncd: internal error: {type(exc).__name__}: {exc} (set JAILSYNCD_DEBUG=1 for a traceback)", file=sys.stderr)
        return ExitCode.FAILURE


def cmd_kick(args: argparse.Namespace) -> int:
    """SIGUSR1 to the ``jailsyncd run`` the pidfile names, and only to one."""
    try:
        pid = running_jailsyncd(args.pidfile, platform_module.current())
    except JailsyncdError as exc:
        print(f"jailsyncd: {exc}", file=sys.stderr)
        return exc.exit_code
    try:
        os.kill(pid, signal.SIGUSR1)
    except ProcessLookupError:
        print(f"jailsyncd: {args.pidfile}: process {pid} is not running", file=sys.stderr)
        return ExitCode.NOT_RUNNING
    except PermissionError:
        print(f"jailsyncd: {args.pidfile}: not allowed to signal process {pid} (run as its user or root)", file=sys.stderr)
        return ExitCode.NOT_RUNNING
    return ExitCode.OK
