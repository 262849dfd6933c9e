"""The FreeBSD port skeleton in packaging/freebsd/sysutils/py-jailsyncd stays in step
with the project and follows the Porter's Handbook's layout.

No FreeBSD ports tree is available to the suite, so this checks what can be checked
from here: the Makefile's variables and their order, USES/USE_PYTHON, that each
Python dependency of pyproject.toml has a RUN_DEPENDS line with the same lower bound
and the ports origin it has in the ports tree (checked by hand against
freebsd/freebsd-ports: databases/py-sqlalchemy20, sysutils/py-python-consul2,
devel/py-apscheduler, devel/py-structlog, net-mgmt/py-prometheus-client,
net/py-icmplib, databases/py-sqlite3), that pkg-plist lists exactly what
post-install installs, and that the rc.d template is the project's own rc.d script.
That every file the port installs is in the sdist (built with setuptools, a process
of its own) is checked in tests/static/test_shipped_files.py.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import fields

import pytest
from freebsd_port import MAKEFILE, PORT, ROOT, installed_files, variables

from jailsyncd.settings import Settings

#: pyproject.toml dependency -> (package name after ${PYTHON_PKGNAMEPREFIX}, ports origin)
ORIGINS = {
    "python-consul2": ("python-consul2", "sysutils/py-python-consul2"),
    "sqlalchemy": ("sqlalchemy20", "databases/py-sqlalchemy20"),
    "apscheduler": ("apscheduler", "devel/py-apscheduler"),
    "structlog": ("structlog", "devel/py-structlog"),
    "prometheus-client": ("prometheus-client", "net-mgmt/py-prometheus-client"),
    "icmplib": ("icmplib", "net/py-icmplib"),
}


def test_makefile_layout_follows_the_porters_handbook() -> None:
    text = MAKEFILE.read_text()
    names = [m[1] for m in re.finditer(r"^([A-Z_]+)=", text, re.M)]
    # The order of the Handbook's "Order of Variables in Port Makefiles" blocks.
    order = ["PORTNAME", "DISTVERSION", "CATEGORIES", "MASTER_SITES", "PKGNAMEPREFIX", "MAINTAINER", "COMMENT", "LICENSE",
             "BUILD_DEPENDS", "RUN_DEPENDS", "USES", "USE_PYTHON", "USE_RC_SUBR", "NO_ARCH", "USERS", "GROUPS"]
    assert [n for n in names if n in order] == order
    for line in text.splitlines():
        if re.match(r"^[A-Z_]+=", line):
            assert re.match(r"^[A-Z_]+=\t", line), f"a tab, not a space, after '=': {line!r}"
        assert line == line.rstrip(), f"trailing white space: {line!r}"
    assert text.endswith("\n.include <bsd.port.mk>\n")
    v = variables()
    assert v["PORTNAME"] == "jailsyncd"
    assert v["CATEGORIES"].split()[0] == "sysutils" and "python" in v["CATEGORIES"].split()
    assert v["USES"].split() == ["python"]
    assert set(v["USE_PYTHON"].split()) == {"autoplist", "concurrent", "pep517"}
    assert v["USE_RC_SUBR"] == "jailsyncd"
    assert v["USERS"] == v["GROUPS"] == "jailsyncd"
    assert v["PKGNAMEPREFIX"] == "${PYTHON_PKGNAMEPREFIX}"
    assert len(v["COMMENT"]) <= 70 and not v["COMMENT"].endswith(".") and v["COMMENT"][0].isupper()
    # As portlint asks: every command in a target through the framework's variables
    # (${INSTALL_DATA}, ${MKDIR}...), never a bare command or an absolute path.
    recipes = [line for line in text.splitlines() if line.startswith("\t") and not line.startswith("\t\t")]
    assert recipes and all(line.startswith("\t${") for line in recipes), recipes
    assert "/usr/local" not in text and "${MKDIR} -p" not in text


def test_version_matches_the_project() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert variables()["DISTVERSION"] == project["version"]
    assert variables()["LICENSE"] == "BSD2CLAUSE" and "BSD-2-Clause" in project["license"]["text"]


def test_every_python_dependency_has_a_run_depends_line() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    run = variables()["RUN_DEPENDS"].split()
    by_origin = {}
    for item in run:
        m = re.fullmatch(r"\$\{PYTHON_PKGNAMEPREFIX\}([\w.-]+?)((?:[<>=]+[\d.]+)+):([\w-]+/[\w.-]+)@\$\{PY_FLAVOR\}", item)
        assert m, f"RUN_DEPENDS item not in the form ${{PYTHON_PKGNAMEPREFIX}}name>=x:origin@${{PY_FLAVOR}}: {item}"
        by_origin[m[3]] = (m[1], m[2])
    for dep in project["dependencies"]:
        name, spec = re.fullmatch(r"([A-Za-z0-9_.-]+)(.*)", dep).groups()
        pkg, origin = ORIGINS[name.lower().replace("_", "-")]
        assert origin in by_origin, f"{dep}: no RUN_DEPENDS line for {origin}"
        assert by_origin[origin][0] == pkg
        lower = re.search(r">=([\d.]+)", spec)[1]
        assert f">={lower}" in by_origin[origin][1], f"{dep}: the port's bound {by_origin[origin][1]} differs"
        upper = re.search(r"<([\d.]+)", spec)
        if upper:
            assert f"<{upper[1]}" in by_origin[origin][1], f"{dep}: the port lacks the upper bound <{upper[1]}"
    # The sqlite3 module is a package of its own on FreeBSD.
    assert "databases/py-sqlite3" in by_origin


def test_pkg_plist_lists_what_post_install_installs() -> None:
    plist = [line for line in (PORT / "pkg-plist").read_text().splitlines() if line and not line.startswith("@comment")]
    expected = []
    for _, dest in installed_files():
        if dest.endswith(".sample"):
            expected.append(f"@sample {dest}")
        elif "/man/man" in dest:
            expected.append(dest + ".gz")
        else:
            expected.append(dest)
    assert sorted(plist) == sorted(expected)
    assert "@sample etc/jailsyncd.toml.sample" in plist


def test_rc_template_is_the_projects_rc_script() -> None:
    template = (PORT / "files" / "jailsyncd.in").read_text()
    expected = (ROOT / "rc.d" / "jailsyncd").read_text().replace("/usr/local", "%%PREFIX%%")
    assert template == expected, "files/jailsyncd.in is out of date: run packaging/freebsd/sync-rc"


def test_pkg_message_names_real_settings_knobs_and_the_sysctls() -> None:
    text = (PORT / "files" / "pkg-message.in").read_text()
    assert text.lstrip().startswith("[") and text.rstrip().endswith("]")
    assert "message: <<EOM" in text and "\nEOM\n" in text
    for sysctl in ("net.inet.icmp.icmplim", "kern.ipc.maxsockbuf", "net.inet.raw.recvspace"):
        assert sysctl in text
    sections = {f.name for f in fields(Settings)}
    for section, key in re.findall(r"\[(\w+)\] (\w+)", text):
        assert section in sections, f"pkg-message names [{section}], which jailsyncd.toml does not have"
        cls = next(f for f in fields(Settings) if f.name == section).default_factory  # type: ignore[misc]
        assert key in {f.name for f in fields(cls)}, f"pkg-message names [{section}] {key}, which is not a setting"
    assert "%%PREFIX%%/etc/jailsyncd.toml" in text
    rc = (ROOT / "rc.d" / "jailsyncd").read_text()
    for knob in re.findall(r"sysrc (\w+)=", text):
        assert re.search(rf"^#\s+{knob}\b", rc, re.M), f"pkg-message sets {knob}, which rc.d/jailsyncd does not document"


@pytest.mark.parametrize("name", ["pkg-descr"])
def test_pkg_descr_fits(name: str) -> None:
    lines = (PORT / name).read_text().splitlines()
    assert 3 <= len(lines) <= 24 and all(len(line) <= 80 for line in lines)
