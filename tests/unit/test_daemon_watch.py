"""The daemon's node DB watcher: a change asks for a cycle with reason ``change`` (and,
like a kick, ends a backoff wait), and a reload re-points the watcher when
``cbsd.workdir``, ``sync.watch`` or ``sync.watch_interval`` changed.

Orchestration with an in-memory reconciler (never run here) and plain files in
tmp_path standing in for the node DB: the watcher only stats them."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from jailsyncd.adapters.cbsd import node_db_path
from jailsyncd.daemon import Daemon
from jailsyncd.reconcile import CycleResult
from jailsyncd.settings import Settings, load_settings


class IdleReconciler:
    cycles = 0

    def cycle(self, reasons: object = None) -> CycleResult:
        raise AssertionError("no cycle runs in these tests")

    def carry_on(self, previous: object) -> None:
        """A reload hands over the old reconciler's state (nothing to take here)."""


def workdir(root: Path) -> Path:
    db = node_db_path(root)
    db.parent.mkdir(parents=True)
    db.write_bytes(b"db")
    return root


def settings_for(root: Path, **sync) -> Settings:
    s = load_settings(None, env={})
    return replace(s, cbsd=replace(s.cbsd, workdir=root), sync=replace(s.sync, **sync))


def test_a_db_change_is_a_kick_with_reason_change(tmp_path: Path) -> None:
    root = workdir(tmp_path / "a")
    daemon = Daemon(settings_for(root), lambda s, stop: IdleReconciler(), lambda: settings_for(root))
    daemon._start_watcher()
    try:
        assert daemon.watcher is not None and daemon.watcher.backend == "inotify"
        node_db_path(root).write_bytes(b"db, changed")
        assert daemon._kicked.wait(3), "the change was not reported within 3 s"
        assert daemon._wanted.is_set() and daemon._reasons == {"change"}
    finally:
        daemon._stop_watcher()


def test_a_reload_re_points_the_watcher_only_when_what_it_watches_changed(tmp_path: Path) -> None:
    first, second = workdir(tmp_path / "a"), workdir(tmp_path / "b")
    current = {"settings": settings_for(first)}
    daemon = Daemon(current["settings"], lambda s, stop: IdleReconciler(), lambda: current["settings"])
    daemon._start_watcher()
    try:
        watcher = daemon.watcher
        current["settings"] = replace(current["settings"], sync=replace(current["settings"].sync, interval=60.0))
        daemon.reload()
        assert daemon.watcher is watcher, "nothing it watches changed: the same watcher"
        current["settings"] = settings_for(second, interval=60.0)
        daemon.reload()
        assert daemon.watcher is not watcher and daemon.watcher is not None
        assert daemon.watcher.path == str(node_db_path(second))
        assert watcher is not None and watcher._thread is not None and not watcher._thread.is_alive()
        daemon._kicked.clear()
        daemon._reasons.clear()
        node_db_path(second).write_bytes(b"the new workdir's DB changed")
        assert daemon._kicked.wait(3), "the change was not reported within 3 s"
        assert "change" in daemon._reasons
        current["settings"] = settings_for(second, interval=60.0, watch="poll")
        daemon.reload()
        assert daemon.watcher.backend == "poll"
    finally:
        daemon._stop_watcher()
