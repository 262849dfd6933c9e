"""The commands that read settings: ``plan``, ``once``, ``purge``, ``check-config``,
``run`` and ``status``.

Called by ``cli.main`` only (which maps their errors to exit codes and exits); kept
apart so that ``jailsyncd kick``, run by CBSD hooks under a 0.9 s bound, does not pay
for importing SQLAlchemy, structlog, APScheduler and the Consul client.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import os
import sys
from pathlib import Path
from typing import Any

from jailsyncd import aclcheck, privileges
from jailsyncd import platform as platform_module
from jailsyncd.adapters.cbsd import CbsdSource
from jailsyncd.app import App, freeze_startup
from jailsyncd.health import check_name, targets_of
from jailsyncd.healthloop import HealthLoop
from jailsyncd.errors import ConfigError, ConsulRefused, ExitCode, JailsyncdError, NotRunning, PrivilegeError, SafetyRefusal, SourceError, SourceUnreadable
from jailsyncd.logs import configure, get_logger, register_secret, route_library_logs
from jailsyncd.model import META_ADDRESS_SOURCE, Plan, Record
from jailsyncd.pidfile import running_jailsyncd
from jailsyncd.plan import field_changes
from jailsyncd.reconcile import CycleResult, StartupWindow
from jailsyncd.settings import DEFAULT_CONFIG, DaemonSettings, Settings, load_settings, token_file_problem



def run(args: argparse.Namespace) -> int:
    """Load the settings, set up logging, and run ``args.command``; raises
    ``JailsyncdError`` for ``cli.main`` to print."""
    settings = _load(args)
    configure(args.log_format or settings.log.format, args.log_level or settings.log.level)
    route_library_logs()
    if settings.consul.token is not None:
        register_secret(settings.consul.token.reveal())
    problem = token_file_problem(settings.consul.token_file, privileges.uid_of(settings.daemon.user))
    if problem is not None:
        get_logger().warning("token_file_insecure", path=str(settings.consul.token_file), problem=problem)
    return _COMMANDS[args.command](settings, args)


def _load(args: argparse.Namespace) -> Settings:
    """The settings file, with ``--user``/``--group`` over ``daemon.user``/``daemon.group``."""
    settings = load_settings(args.config or DEFAULT_CONFIG, required=args.config is not None)
    if args.user is None and args.group is None:
        return settings
    daemon = DaemonSettings(
        user=settings.daemon.user if args.user is None else args.user,
        group=settings.daemon.group if args.group is None else args.group,
    )
    return dataclasses.replace(settings, daemon=daemon)


def _identity(settings: Settings, args: argparse.Namespace) -> privileges.Identity | None:
    where = "--user/--group" if args.user is not None or args.group is not None else str(settings.source or "defaults")
    return privileges.resolve(settings.daemon.user, settings.daemon.group, where)


def _service_check(settings: Settings, *, bind_metrics: bool, held_by: int | None = None) -> None:
    """What ``run`` needs once it runs as ``daemon.user`` (call as that user): every file
    it reads (CBSD's node DB opened read-only the way each cycle does, which needs its
    ``-shm``), and, for ``check-config --service``, the metrics address free to bind.
    ``held_by``: the PID of the running ``jailsyncd run`` this check is about (rc.d
    ``reload``); the address in use is then that process's, said on stderr, not an error."""
    privileges.check_readable(privileges.needed_files(settings))
    try:
        CbsdSource(settings.cbsd.workdir, settings.cbsd.busy_timeout).read()
    except SourceUnreadable as exc:
        raise PrivilegeError(f"{exc} (as {privileges.describe_self()})") from None
    except SourceError:
        pass  # missing, locked or corrupt: run retries those like any cycle would
    if bind_metrics and settings.metrics.listen:
        from jailsyncd.metrics import Metrics  # imported by the caller already: see cmd_check_config

        metrics = Metrics()
        try:
            metrics.start(settings.metrics.listen, lambda: True)
        except ConfigError as exc:
            cause = exc.__context__  # the OSError of the bind (raised "from None")
            if held_by is None or not isinstance(cause, OSError) or cause.errno != errno.EADDRINUSE:
                raise
            print(f"jailsyncd: metrics.listen: {settings.metrics.listen} is held by the running jailsyncd (pid {held_by}); not bound again", file=sys.stderr, flush=True)
            return
        metrics.stop()


def _running(pidfile: Path | None) -> int | None:
    """The PID of the ``jailsyncd run`` that ``pidfile`` names (read as root, before any
    switch: daemon(8) writes it 0600), or None: no file, a stale one, not jailsyncd."""
    if pidfile is None:
        return None
    try:
        return running_jailsyncd(pidfile, platform_module.current())
    except NotRunning:
        return None


def _health(settings: Settings) -> HealthLoop | None:
    """The health loop when health is on; fails now if ICMP cannot work here."""
    return App(settings).health_loop()


def _startup(args: argparse.Namespace) -> StartupWindow | None:
    """``plan``/``once`` have no start time and hold nothing back, unless asked to act
    as a ``run`` that starts now (``--startup-grace``)."""
    return StartupWindow() if getattr(args, "startup_grace", False) else None


def _finish(result: CycleResult) -> int:
    """Raise the cycle's error, if any, so ``main`` prints it and exits with its code:
    the cycle's own error; else failed actions (naming every jail concerned, with
    the first failure's code); else a refusal by a safety rail; else collisions."""
    if result.error is not None:
        raise result.error
    if result.failed:
        jails = sorted({act.service.jail for act, _ in result.failed})
        first = result.failed[0][1]
        total = result.plan.writes if result.plan else len(result.failed)
        error = type(first)(
            f"{len(result.failed)} of {total} actions failed, for {', '.join(jails)} "
            f"(the others were applied); first: {first}"
        )
        raise error
    plan = result.plan
    if plan is not None and plan.refused:
        raise SafetyRefusal(f"refused {len(plan.refused)} deregistrations: {plan.refused_why}")
    if plan is not None and plan.collisions:
        other = sorted({s.cbsd_host for s in plan.collisions})
        this = result.desired.host if result.desired is not None else "?"
        raise SafetyRefusal(
            f"{len(plan.collisions)} entries in Consul carry this host.name but CBSD node {', '.join(other)}, "
            f"and this is CBSD node {this}: two hosts share host.name; they were left as they are"
        )
    return ExitCode.OK


def cmd_plan(settings: Settings, args: argparse.Namespace) -> int:
    app = App(settings)
    result = app.reconciler(startup=_startup(args)).cycle(apply=False, force=args.force)
    if result.error is not None:
        raise result.error
    assert result.plan is not None
    health = _health_rows(app, result)
    if args.json:
        print(json.dumps({**plan_as_json(result.plan), "health": health}, indent=2))
    else:
        print(plan_as_text(result.plan))
        for row in health:
            mark = " " if row["consul"] == row["probe"] else "h"
            print(f"{mark} {row['jail']:<20} health     {row['check']}: consul={row['consul']} probe={row['probe']} ({row['output']})")
    return _finish(result)


def _health_rows(app: App, result: CycleResult) -> list[dict[str, str]]:
    """Each check's status in Consul next to what a probe says now (health on only).
    A probe result is what the check would become once the anti-flap thresholds agree."""
    health = app.health_loop()
    if health is None or result.desired is None or result.observed is None:
        return []
    targets = targets_of(result.desired.records)
    results = health.probe(targets)
    in_consul = {check_id: status for check_id, status, _ in result.observed.check_status}
    return [
        {
            "jail": t.jail,
            "check": check_name(t.check_id),
            "check_id": t.check_id,
            "consul": in_consul.get(t.check_id, "absent"),
            "probe": "passing" if results[t.check_id].ok else "critical",
            "output": results[t.check_id].output,
        }
        for t in targets
    ]


#: The heartbeat's output when ``once`` wrote it with no daemon running.
ONCE_HEARTBEAT = "written by jailsyncd once, no daemon running: statuses hold until their TTL (health.ttl)"


def cmd_once(settings: Settings, args: argparse.Namespace) -> int:
    app = App(settings)
    health = app.health_loop()
    reconciler = app.reconciler(health=True, startup=_startup(args))
    freeze_startup()
    result = reconciler.cycle(force=args.force)
    if health is not None and result.error is None:
        if result.daemon_running:
            # The daemon owns health: its anti-flap state and its heartbeat stay as they are.
            get_logger().info("health_left_to_daemon", reason="a jailsyncd daemon's heartbeat is passing in Consul")
        else:
            # One health round, so that Consul's statuses are true now. In agent mode
            # every probed check is written (its TTL starts now) and the heartbeat,
            # registered with health.ttl, is set passing: the jails that answered stay
            # passing until that TTL (docs/architecture.md, "once and the daemon").
            stats = health.round(refresh_all=health.checks.checks_expire)
            get_logger().info("health_round", probed=stats.probed, writes=stats.writes, changes=stats.changes, failed=stats.failed)
            if health.checks.has_heartbeat:
                health.heartbeat(ONCE_HEARTBEAT)
    return _finish(result)


def cmd_purge(settings: Settings, args: argparse.Namespace) -> int:
    if not args.yes:
        result = App(settings).reconciler().cycle(apply=False, purge=True)
        if result.error is not None:
            raise result.error
        assert result.plan is not None
        print(plan_as_text(result.plan))
        print(f"purge would deregister {len(result.plan.deregister)} services owned by {result.owner}; add --yes to do it", file=sys.stderr)
        return ExitCode.USAGE
    return _finish(App(settings).reconciler().cycle(purge=True))


def cmd_check_config(settings: Settings, args: argparse.Namespace) -> int:
    app = App(settings)
    app.health_loop()  # with health on, fails (exit 71) where no ICMP socket can be opened
    identity = _identity(settings, args)
    if args.service:
        import jailsyncd.metrics  # noqa: F401 - before the switch: the interpreter's files may be root's alone

        held_by = _running(args.pidfile)
        privileges.as_user(identity, lambda: _service_check(settings, bind_metrics=True, held_by=held_by))
    print(json.dumps(settings.redacted(), indent=2))
    if not args.online:
        return ExitCode.OK
    try:
        found, acl_on = app.store.preflight()
        if acl_on:
            found += _permissions(app)
    finally:
        app.close()
    for ok, text in found:
        print(f"{'ok' if ok else 'FAIL' if ok is False else 'note'}: {text}")
    missing = [text for ok, text in found if ok is False]
    if missing:
        raise ConsulRefused(f"check-config --online: {missing[0]}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    return ExitCode.OK


def _permissions(app: App) -> list[tuple[bool | None, str]]:
    """The ACL findings for what this host's mode needs now (the mode's ``acl_needs``): the names
    come from a dry-run cycle (CBSD and Consul read, nothing written); when it
    fails, example names stand in and a note says why."""
    notes: list[tuple[bool | None, str]] = []
    desired = owned = None
    store = app.store
    result = app.reconciler().cycle(apply=False)
    if result.error is None and result.desired is not None and result.observed is not None:
        desired, owned = result.desired.records, result.observed.owned
    else:
        notes.append((None, f"this host's names are unknown ({result.error}); checked example names instead"))
    asked = store.acl_needs(desired, owned or ())
    answers = store.authorize([(n.resource, n.segment, n.access) for n in asked])
    if answers is None:
        return [*notes, (None, "cannot ask Consul which permissions the token has (/v1/internal/acl/authorize); skipped")]
    return [*notes, *aclcheck.findings(asked, answers)]


def cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    from jailsyncd.daemon import PROBE_TIMEOUT, Daemon  # APScheduler is only needed by this command
    from jailsyncd.metrics import Metrics

    def load() -> Settings:
        return _load(args)

    identity = _identity(settings, args)
    app = App(settings)
    health = app.health_loop()
    metrics = Metrics() if settings.metrics.listen else None
    startup = StartupWindow()  # one for the whole process: a reload keeps it
    if app.prober is not None:
        app.prober.keep_open()  # raw sockets can only be opened as root

    def drop_privileges() -> None:
        privileges.drop(identity)
        if identity is not None:
            _service_check(settings, bind_metrics=False)
            get_logger().info("privileges_dropped", user=identity.user, uid=identity.uid, gid=identity.gid, groups=list(identity.groups))

    daemon = Daemon(
        settings,
        lambda s, should_stop: app.reconciler(s, should_stop, quiet_noop=True, health=True, startup=startup, standalone=False, watch=True),
        load,
        log_overrides=(args.log_format, args.log_level),
        metrics=metrics,
        health=health,
        startup=startup,
        drop_privileges=drop_privileges,
        probe=lambda _consul: app.consul_answers(PROBE_TIMEOUT),
        watch=app.consul_watch(),
    )
    if metrics is not None:
        metrics.watch(lambda: daemon.settings, health)
    freeze_startup()
    try:
        return daemon.run(args.pidfile)
    finally:
        app.close()


def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    import time

    from jailsyncd import status

    state = status.gather(settings.metrics.listen, args.pidfile, platform_module.current(), now=time.time(),
                          source=settings.source or f"{DEFAULT_CONFIG} (absent: the defaults)")
    print(json.dumps(state, indent=2) if args.json else status.as_text(state))
    return ExitCode.OK if state["running"] else ExitCode.NOT_RUNNING


_COMMANDS = {"plan": cmd_plan, "once": cmd_once, "purge": cmd_purge, "check-config": cmd_check_config, "run": cmd_run, "status": cmd_status}


def plan_as_json(plan: Plan) -> dict[str, Any]:
    def service(s: Record) -> dict[str, Any]:
        # Every field of the mode's records, as the mode names them.
        # The heartbeat is the daemon's own service, not a jail: no jail in its row.
        return {"jail": None if s.is_self else s.jail, "service_id": s.service_id, **{name: _json_value(value) for name, value in s.fields}}

    return {
        "register": [service(s) for s in plan.register],
        "update": [
            {**service(u.new), "fields": list(u.fields), "changes": field_changes(u)}
            for u in plan.update
        ],
        "deregister": [service(s) for s in plan.deregister],
        "held": [{**service(s), "until": plan.held_until, "reason": "startup_grace"} for s in plan.held],
        "refused": [service(s) for s in plan.refused],
        "collisions": [service(s) for s in plan.collisions],
        "skipped": [{"jail": k.jail, "reason": k.reason, "detail": k.detail} for k in plan.skipped],
        "notes": [{"jail": n.jail, "kind": n.kind, "detail": n.detail} for n in plan.notes],
    }


def _who(s: Record) -> str:
    """The first column of a plan row: the jail, or ``(heartbeat)`` for the daemon's own
    service (it is not a jail)."""
    return "(heartbeat)" if s.is_self else s.jail


def plan_as_text(plan: Plan) -> str:
    lines: list[str] = []
    for s in plan.register:
        if s.is_self:
            lines.append(f"+ {_who(s):<20} register   {s.service_id} (the daemon's own service; the jails' alias checks follow it)")
            continue
        port = f":{s.port}" if s.port else ""
        source = dict(s.meta).get(META_ADDRESS_SOURCE)
        found = f" address-source={source}" if source else ""
        lines.append(f"+ {s.jail:<20} register   {s.name} {s.address}{port} tags={','.join(sorted(s.tags))}{found}")
    for u in plan.update:
        changes = "; ".join(_show_change(f, u.old.value(f), u.new.value(f)) for f in u.fields)
        lines.append(f"~ {_who(u.new):<20} update     {changes}")
    for s in plan.deregister:
        lines.append(f"- {_who(s):<20} deregister {s.service_id}")
    for s in plan.held:
        lines.append(f"= {s.jail:<20} held       {s.service_id}: astart=1 and not started yet; sync.startup_grace until {plan.held_until}")
    for k in plan.skipped:
        lines.append(f"! {k.jail:<20} skipped    {k.reason}: {k.detail}")
    for n in plan.notes:
        lines.append(f"# {n.jail:<20} note       {n.kind}: {n.detail}")
    if not plan.writes:
        lines.append(_nothing_to_write(plan))
    return "\n".join(lines)


def _nothing_to_write(plan: Plan) -> str:
    """The last line of a plan without writes: "Consul matches CBSD" only when it does;
    otherwise what is left undone and why (the rows marked ``=`` or ``!`` above)."""
    conflicts = sum(1 for k in plan.skipped if k.reason == "conflict")
    undone = [
        f"{count} {what}" for count, what in (
            (len(plan.held), "deregistrations held (=)"),
            (len(plan.refused), "deregistrations refused (!)"),
            (len(plan.collisions), "collisions with another CBSD node (!)"),
            (conflicts, "conflicts with another owner (!)"),
        ) if count
    ]
    return "no changes now: " + "; ".join(undone) if undone else "no changes: Consul matches CBSD"


def _json_value(value: object) -> Any:
    """A record's field in JSON types: sets sorted (checks as their IDs), pairs as an object."""
    if isinstance(value, frozenset):
        return sorted(v[0] if isinstance(v, tuple) else v for v in value)
    if isinstance(value, tuple):
        return dict(value)
    return value


def _show_change(field: str, old: Any, new: Any) -> str:
    """One field's change; checks that kept their IDs but not their definition (a TTL,
    a probe) say which and how, rather than the same IDs on both sides."""
    if field == "checks" and isinstance(old, frozenset) and isinstance(new, frozenset):
        before = {v[0]: v[1:] for v in old if isinstance(v, tuple)}
        after = {v[0]: v[1:] for v in new if isinstance(v, tuple)}
        if set(before) == set(after):
            redefined = [f"{i} ({' '.join(before[i])} -> {' '.join(after[i])})" for i in sorted(after) if before[i] != after[i]]
            return f"checks: redefined {', '.join(redefined)}"
    return f"{field}: {_show(old)} -> {_show(new)}"


def _show(value: Any) -> str:
    """A compared field's value on one line: tags, meta pairs, and checks (their IDs)."""
    if isinstance(value, frozenset):
        return ",".join(sorted(v[0] if isinstance(v, tuple) else str(v) for v in value)) or "(none)"
    if isinstance(value, tuple):
        return ",".join(f"{k}={v}" for k, v in value) or "(none)"
    return str(value)
