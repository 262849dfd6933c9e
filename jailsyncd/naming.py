"""DNS-safe names for Consul services (pure; called by ``desired``).

Consul only makes names of letters, digits and dashes, at most 63 characters,
discoverable over DNS. CBSD jnames may contain ``_ @ % :`` and upper case, so two
jnames can map to one label (``web_1`` and ``web-1``). ``unique_labels`` settles such
collisions from the jnames alone, so the result is the same on every cycle.
"""

from __future__ import annotations

import hashlib
import re

MAX_LABEL = 63
_INVALID = re.compile(r"[^a-z0-9-]")
#: A text that is a label already: what ``dns_label`` would return unchanged.
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


def dns_label(text: str) -> str:
    """Lower-case ``text``, turn every character outside ``[a-z0-9-]`` into ``-``, and
    cut it to 63 characters. Leading/trailing dashes are dropped; an empty result
    becomes ``x`` so that a label always exists."""
    if _LABEL.fullmatch(text):  # the usual case (a jname, a host name): one match, no copies
        return text
    label = _INVALID.sub("-", text.lower())[:MAX_LABEL].strip("-")
    return label or "x"


def suffixed_label(jname: str, digits: int = 4) -> str:
    """``dns_label(jname)`` plus ``-`` and ``digits`` hex digits of a hash of the exact
    jname, still within 63 characters. Used for jnames whose label is taken."""
    digest = hashlib.sha256(jname.encode()).hexdigest()[:digits]
    return f"{dns_label(jname)[: MAX_LABEL - digits - 1].rstrip('-')}-{digest}"


def unique_labels(jnames: list[str] | tuple[str, ...] | set[str]) -> dict[str, str]:
    """Map every jname to a DNS label; distinct jnames get distinct labels.

    A jname that is already a valid label keeps it. When several jnames map to one
    label, the one that equals the label keeps it and the others (lossy mappings)
    get ``suffixed_label``, with a longer hash in the rare case that the suffixed
    label is taken too. The choice depends on the set of jnames only, not on their
    order, so it never flips between cycles.
    """
    by_label: dict[str, list[str]] = {}
    for jname in sorted(set(jnames)):
        by_label.setdefault(dns_label(jname), []).append(jname)
    result: dict[str, str] = {}
    lossy: list[str] = []
    for label, group in by_label.items():
        for jname in group:
            if jname == label or len(group) == 1:
                result[jname] = label
            else:
                lossy.append(jname)
    used = set(result.values())
    for jname in sorted(lossy):
        digits = 4
        label = suffixed_label(jname, digits)
        while label in used and digits < 64:
            digits += 4
            label = suffixed_label(jname, digits)
        used.add(label)
        result[jname] = label
    return result


def service_ids(jnames: list[str] | tuple[str, ...] | set[str], prefix: str) -> dict[str, str]:
    """Map every jname to its service ID, ``prefix + jname``.

    Consul's catalog compares service IDs without regard to case, so ``Web1`` and
    ``web1`` would be one entry there. When jnames differ only in case, the
    all-lower-case one keeps the plain ID and the others get ``~`` and 8 hex digits
    of a hash of the exact jname (a jname never contains ``~``). Like
    ``unique_labels``, this depends on the set of jnames only.
    """
    by_lower: dict[str, list[str]] = {}
    for jname in sorted(set(jnames)):
        by_lower.setdefault(jname.lower(), []).append(jname)
    result: dict[str, str] = {}
    for lower, group in by_lower.items():
        for jname in group:
            plain = len(group) == 1 or jname == lower
            suffix = "" if plain else "~" + hashlib.sha256(jname.encode()).hexdigest()[:8]
            result[jname] = prefix + jname + suffix
    return result
