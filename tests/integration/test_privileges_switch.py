"""``jailsyncd.privileges``: the switch to ``daemon.user``, its checks, the file checks.

The switch changes the calling process for good, so every test that switches does it
in a forked child (``in_child``) and reads back what the child saw; those need root
and are skipped otherwise. Real processes (a fork each), so they are not in
tests/unit (which keeps the pure part: tests/unit/test_privileges.py). The full
daemon after a switch is tested in tests/integration/test_privileges.py.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from jailsyncd import privileges
from jailsyncd.errors import ExitCode, JailsyncdError, PrivilegeError
from jailsyncd.privileges import Identity

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")


def in_child(fn) -> str:
    """Run ``fn`` in a forked child; what it returns (or the error it raised, as
    ``ERROR <exit code> <message>``) comes back as text."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            try:
                out = str(fn())
            except JailsyncdError as exc:
                out = f"ERROR {exc.exit_code} {exc}"
            os.write(write_end, out.encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as fh:
        text = fh.read().decode()
    os.waitpid(pid, 0)
    return text


@needs_root
def test_already_the_user_is_no_switch(nobody: Identity) -> None:
    def twice() -> str:
        privileges.drop(nobody)
        privileges.drop(nobody)  # e.g. started as the user already: nothing to do
        return str(os.getresuid())

    assert in_child(twice) == str((nobody.uid,) * 3)


@needs_root
def test_drop_sets_every_id_and_root_cannot_come_back(nobody: Identity) -> None:
    def switch() -> str:
        privileges.drop(nobody)
        try:
            os.setuid(0)
        except PermissionError:
            regained = "no"
        else:
            regained = "yes"
        return f"{os.getresuid()} {os.getresgid()} {sorted(os.getgroups())} {regained}"

    u, g = nobody.uid, nobody.gid
    assert in_child(switch) == f"{(u, u, u)} {(g, g, g)} {sorted(set(nobody.groups))} no"


@needs_root
def test_a_saved_root_uid_is_refused(nobody: Identity) -> None:
    """A half switch (real and effective uid changed, saved uid still 0: what seteuid()
    alone leaves) could become root again: verify() refuses it."""

    def half() -> str:
        os.setgroups(list(nobody.groups))
        os.setresgid(nobody.gid, nobody.gid, nobody.gid)
        os.setresuid(nobody.uid, nobody.uid, 0)
        privileges.verify(nobody)
        return "accepted"

    out = in_child(half)
    assert out.startswith(f"ERROR {ExitCode.NO_PERMISSION} daemon.user: after switching to nobody"), out


@needs_root
def test_kept_groups_are_refused(nobody: Identity) -> None:
    def extra_group() -> str:
        os.setgroups([*nobody.groups, 0])
        os.setresgid(nobody.gid, nobody.gid, nobody.gid)
        os.setresuid(nobody.uid, nobody.uid, nobody.uid)
        privileges.verify(nobody)
        return "accepted"

    assert "keeps groups" in in_child(extra_group)


def test_started_as_another_user_is_refused(nobody: Identity) -> None:
    other = Identity("someone", nobody.uid - 1, nobody.gid, nobody.groups)

    def as_nobody() -> str:
        if os.geteuid() == 0:
            os.setresuid(nobody.uid, nobody.uid, nobody.uid)
        privileges.drop(other)
        return "switched"

    assert "not root: cannot switch to someone" in in_child(as_nobody)


@needs_root
def test_as_user_runs_the_check_as_the_user_and_passes_its_error_back(nobody: Identity) -> None:
    seen: list[str] = []

    def check() -> None:
        raise PrivilegeError(f"uid {os.geteuid()}")

    with pytest.raises(JailsyncdError) as err:
        privileges.as_user(nobody, check)
    assert (str(err.value), err.value.exit_code) == (f"uid {nobody.uid}", ExitCode.NO_PERMISSION)
    assert os.geteuid() == 0  # this process kept its privileges
    privileges.as_user(nobody, lambda: seen.append("ran"))  # ran in the child: nothing here
    assert seen == []
    privileges.as_user(None, lambda: seen.append("ran"))
    assert seen == ["ran"]


@needs_root
def test_unreadable_names_the_file_the_key_and_the_user(nobody: Identity) -> None:
    tmp_path = Path(tempfile.mkdtemp(prefix="jailsyncd-unit-"))  # pytest's own is root's alone
    tmp_path.chmod(0o755)
    readable, secret = tmp_path / "ok", tmp_path / "secret"
    readable.write_text("x")
    readable.chmod(0o644)
    secret.write_text("x")
    secret.chmod(0o600)
    missing = tmp_path / "missing"
    files = [("config", readable), ("consul.token_file", missing), ("consul.ca_file", secret)]
    assert privileges.unreadable(files) is None  # root reads everything
    try:
        out = in_child(lambda: (privileges.drop(nobody), privileges.unreadable(files))[1])
    finally:
        shutil.rmtree(tmp_path)
    assert out == f"{secret} (consul.ca_file) is not readable by nobody (uid {nobody.uid}): permission denied on the file or a folder above it"
