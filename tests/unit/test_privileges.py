"""``jailsyncd.privileges``: who ``run`` becomes (names and numbers to an identity).

The switch itself changes the calling process for good, so the tests that switch run
it in a forked child: tests/integration/test_privileges_switch.py. The full daemon
after a switch is tested in tests/integration/test_privileges.py.
"""

from __future__ import annotations

import grp
import os
import pwd

import pytest

from jailsyncd import privileges
from jailsyncd.errors import ConfigError, ExitCode
from jailsyncd.privileges import Identity


def test_no_user_means_no_identity() -> None:
    assert privileges.resolve("", "", "x.toml") is None


def test_resolve_by_name_and_by_number(nobody: Identity) -> None:
    pw = pwd.getpwnam("nobody")
    assert (nobody.user, nobody.uid, nobody.gid) == ("nobody", pw.pw_uid, pw.pw_gid)
    assert nobody.groups[0] == pw.pw_gid
    assert privileges.resolve(str(pw.pw_uid), "", "x.toml") == nobody


def test_group_overrides_the_primary_group(nobody: Identity) -> None:
    root_group = grp.getgrgid(0).gr_name
    identity = privileges.resolve("nobody", root_group, "x.toml")
    assert identity is not None and identity.gid == 0 and identity.groups[0] == 0


@pytest.mark.parametrize("user, group, key", [("no-such-user-jsd", "", "daemon.user"), ("nobody", "no-such-group-jsd", "daemon.group")])
def test_unknown_user_or_group_names_the_key(user: str, group: str, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        privileges.resolve(user, group, "/etc/x.toml")
    assert str(err.value).startswith(f"/etc/x.toml: {key}: no such ")
    assert err.value.exit_code == ExitCode.CONFIG


def test_no_identity_is_no_switch() -> None:
    me = os.getresuid()
    privileges.drop(None)
    assert os.getresuid() == me
