"""A stand-in for FreeBSD 14's daemon(8) in supervision mode, for tests of rc.d/jailsyncd.

Run as ``python standin_daemon8.py [options] command [args...]`` by the stand-in
rc.subr in tests/integration/test_rc_script.py, in place of /usr/sbin/daemon. It follows
usr.sbin/daemon/daemon.c of FreeBSD 14 (the kqueue rewrite) where rc.d/jailsyncd
depends on it; it is written from that file's behaviour, not copied from it:

- options as daemon.c's getopt string ``+cfHSp:P:ru:o:s:l:t:m:R:T:h``; ``-R`` below 1
  exits 6 with "invalid restart delay" before anything else happens;
- ``main()`` sets SIGTERM and SIGHUP to SIG_IGN; it backgrounds itself (daemon(3):
  the caller gets exit status 0 at once; with ``-f`` its stdin, stdout and stderr go
  to /dev/null, else it keeps the caller's), writes the supervisor pidfile (``-P``), and
  shows as ``daemon: <title>[<child pid>]`` in ps(1) (setproctitle(3); here argv[0]
  is set by re-exec, once, so the pid in it is the first child's);
- ``daemon_eventloop()`` registers SIGTERM with kqueue before it forks, so SIGTERM is
  seen while a child lives: the first one sets restart off and is passed on to the
  child, later ones are ignored ("user is impatient"); the loop ends when the child
  is reaped. The child writes the child pidfile (``-p``, the pid without a newline,
  as pidfile_write(3) does), gets SIGTERM back to SIG_DFL and execs the command;
- ``daemon_sleep()`` then sleeps ``-R`` seconds with the kqueue closed and SIGTERM
  still SIG_IGN: a SIGTERM sent during that sleep is lost, and the next child starts;
- when restart is off after a child exited, both pidfiles are removed and it exits.

Output of the child goes to ``$FAKE_DAEMON_LOG`` (appended) instead of syslog. With
``$FAKE_DAEMON_ARGV`` set it only writes its argv there (JSON) and exits 0.
"""

from __future__ import annotations

import getopt
import json
import os
import signal
import sys
import time

SHORTOPTS = "cfHSp:P:ru:o:s:l:t:m:R:T:h"


def main(argv: list[str]) -> int:
    if os.environ.get("FAKE_DAEMON_ARGV"):
        with open(os.environ["FAKE_DAEMON_ARGV"], "a") as fh:
            fh.write(json.dumps(argv) + "\n")
        return 0
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        opts, command = getopt.getopt(argv, SHORTOPTS)  # stops at the first non-option, like "+"
    except getopt.GetoptError as exc:
        print(f"daemon: {exc}", file=sys.stderr)
        return 1
    options = dict(opts)
    restart = "-r" in options or "-R" in options
    delay = 1
    if "-R" in options:
        try:
            delay = int(options["-R"], 0)
        except ValueError:
            delay = 0
        if delay < 1:
            print("daemon: invalid restart delay", file=sys.stderr)
            return 6
    if not command:
        return 1
    if os.environ.get("FAKE_DAEMON_DETACHED") != "1":
        if os.fork() > 0:  # daemon(3): the parent returns to the caller at once
            return 0
        os.setsid()
        if "-f" in options:  # daemon(3) with noclose = 0: stdin, stdout, stderr on /dev/null
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
        os.environ["FAKE_DAEMON_DETACHED"] = "1"
        title = options.get("-t", command[0])
        # setproctitle(3): what ps(1) shows, so that rc.subr's check_pidfile finds "daemon:"
        os.execv(sys.executable, [f"daemon: {title}[]", os.path.abspath(__file__), *argv])
    return supervise(options, command, restart, delay)


def supervise(options: dict[str, str], command: list[str], restart: bool, delay: int) -> int:
    supervisor_pidfile, child_pidfile = options.get("-P"), options.get("-p")
    if supervisor_pidfile:
        with open(supervisor_pidfile, "w") as fh:
            fh.write(str(os.getpid()))
    log = os.open(os.environ.get("FAKE_DAEMON_LOG", os.devnull), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    state = {"mode": "supervise", "restart": restart, "child": 0}

    def on_term(_signum, _frame) -> None:  # the kqueue's EVFILT_SIGNAL for SIGTERM
        if state["mode"] != "supervise":
            return  # "user is impatient": ignored
        state["mode"] = "terminating"
        state["restart"] = False
        if state["child"] > 0:
            os.kill(state["child"], signal.SIGTERM)

    while True:
        state["mode"] = "supervise"
        signal.signal(signal.SIGTERM, on_term)  # registered before the fork
        # Held back until the child's pid is known, as kqueue events wait for the loop.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGHUP, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
            if child_pidfile:
                with open(child_pidfile, "w") as fh:
                    fh.write(str(os.getpid()))
            os.dup2(log, 1)
            os.dup2(log, 2)
            try:
                os.execvp(command[0], command)
            finally:
                os._exit(1)
        state["child"] = pid
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
        os.waitpid(pid, 0)
        state["child"] = -1
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the kqueue is closed; main()'s SIG_IGN again
        if not state["restart"]:
            break
        time.sleep(delay)  # daemon_sleep(): a SIGTERM now is lost
    for path in (child_pidfile, supervisor_pidfile):
        if path:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
