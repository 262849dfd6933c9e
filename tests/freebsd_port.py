"""The FreeBSD port skeleton's Makefile (packaging/freebsd/sysutils/py-jailsyncd), read
for tests/unit/test_freebsd_port.py and tests/static/test_shipped_files.py."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PORT = ROOT / "packaging" / "freebsd" / "sysutils" / "py-jailsyncd"
MAKEFILE = PORT / "Makefile"


def variables() -> dict[str, str]:
    """``NAME=value`` assignments of the Makefile, continuation lines joined."""
    text = MAKEFILE.read_text().replace("\\\n", " ")
    return {m[1]: " ".join(m[2].split()) for m in re.finditer(r"^([A-Z_]+)=\t+(.*)$", text, re.M)}


def installed_files() -> list[tuple[str, str]]:
    """(source in WRKSRC, destination under PREFIX) of every line of the post-install
    target (the examples are PORTEXAMPLES, added to the plist by the framework)."""
    text = MAKEFILE.read_text().replace("\\\n", " ").split("\npost-install:\n", 1)[1].split("\n\n", 1)[0]
    out = []
    for m in re.finditer(r"\$\{INSTALL_(?:DATA|MAN|SCRIPT)\} \$\{WRKSRC\}/(\S+)\s+\$\{STAGEDIR\}(\S+)", text):
        src, dest = m[1], m[2].replace("${PREFIX}/", "").replace("${DATADIR}", "%%DATADIR%%")
        if dest.endswith(("/man8", "/man5", "/cbsd-hooks")):
            dest = f"{dest}/{Path(src).name}"
        out.append((src, dest))
    return out
