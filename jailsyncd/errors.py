"""The error hierarchy of jailsyncd.

Every error says whether retrying later can help (``retryable``) and which exit code
the CLI maps it to. Adapters wrap third-party exceptions in these and chain the
original (``raise ... from exc``); only ``cli`` turns them into an exit status.
Messages are one line and name the file, key, jail or endpoint concerned. They never
contain a secret: the Consul token is never passed into any of them.
"""

from __future__ import annotations


class ExitCode:
    """Exit statuses of the ``jailsyncd`` command (sysexits(3) numbers where one fits)."""

    OK = 0
    FAILURE = 1  # unexpected internal error
    USAGE = 2  # bad command line (argparse's own convention)
    NOT_RUNNING = 3  # ``kick``: no running daemon to signal (as LSB's "status")
    ALREADY_RUNNING = 73  # ``run --pidfile``: another jailsyncd holds it, or it cannot be created (EX_CANTCREAT)
    SAFETY_REFUSED = 65  # the plan was refused by a safety rail (EX_DATAERR)
    SOURCE_UNAVAILABLE = 66  # CBSD state could not be read (EX_NOINPUT)
    CONSUL_UNAVAILABLE = 69  # Consul unreachable, timed out or failing (EX_UNAVAILABLE)
    PROBE_UNAVAILABLE = 71  # health probes impossible: no ICMP socket (EX_OSERR)
    CONSUL_REFUSED = 77  # Consul said no: ACL denied, bad token (EX_NOPERM)
    NO_PERMISSION = 77  # daemon.user cannot read a file it needs, or the switch failed (EX_NOPERM)
    CONFIG = 78  # bad configuration (EX_CONFIG)


class JailsyncdError(Exception):
    """Base of every error jailsyncd raises on purpose."""

    retryable: bool = False
    exit_code: int = ExitCode.FAILURE


class ConfigError(JailsyncdError):
    """The settings file or environment is invalid. Fix the config; retrying won't help."""

    exit_code = ExitCode.CONFIG


class SourceError(JailsyncdError):
    """CBSD state could not be read completely. Never means "no jails"."""

    retryable = True
    exit_code = ExitCode.SOURCE_UNAVAILABLE


class SourceMissing(SourceError):
    """The node DB (or a per-VM DB) does not exist at the expected path."""


class SourceUnreadable(SourceError):
    """The DB exists but cannot be opened: permissions, or a read-only WAL folder."""


class SourceCorrupt(SourceError):
    """The DB is not a database, is truncated, or lacks the ``jails`` table."""


class SourceLocked(SourceError):
    """A writer held the DB longer than the busy timeout."""


class ConsulError(JailsyncdError):
    """Consul could not be reached, timed out, or failed (5xx). Retry later."""

    retryable = True
    exit_code = ExitCode.CONSUL_UNAVAILABLE


class ConsulRefused(ConsulError):
    """Consul refused the request (403 ACL denied, 401, or 400 for our payload)."""

    retryable = False
    exit_code = ExitCode.CONSUL_REFUSED


class ConsulRejected(ConsulRefused):
    """Consul rejected one write's payload (a 4xx, or a 500 naming the payload) or
    refused it for the one name it writes. Only that one action failed."""


class ConsulDenied(ConsulRefused):
    """A 403 "Permission denied": the token lacks a permission, maybe only for the
    one name written (a narrowed policy), maybe for every name. The store decides
    which (``adapters.consul``); reads raise it as it is."""


class PrivilegeError(JailsyncdError):
    """``run`` could not switch to ``daemon.user`` for good, or that user cannot read a
    file it needs. Fix the user, the groups or the file modes; retrying won't help."""

    exit_code = ExitCode.NO_PERMISSION


class SafetyRefusal(JailsyncdError):
    """A safety rail refused (part of) the plan; ``--force`` overrides it."""

    exit_code = ExitCode.SAFETY_REFUSED


class PidfileError(JailsyncdError):
    """``run --pidfile``: another process holds the pidfile's lock, or it cannot be created."""

    exit_code = ExitCode.ALREADY_RUNNING


class NotRunning(JailsyncdError):
    """``kick``: the pidfile names no running jailsyncd (missing, unreadable, stale)."""

    exit_code = ExitCode.NOT_RUNNING


class DaemonUnreachable(JailsyncdError):
    """``status``: the running daemon's metrics endpoint did not answer (or answered
    something that is not Prometheus metrics)."""

    exit_code = ExitCode.NOT_RUNNING
