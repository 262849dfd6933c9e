"""Service IDs stay distinct for Consul's catalog, which ignores case in IDs."""

from __future__ import annotations

import pytest

from jailsyncd.naming import service_ids


@pytest.mark.parametrize(
    ("jnames", "plain"),
    [
        (["web1", "db1"], {"web1", "db1"}),
        (["Web1", "web1"], {"web1"}),
        (["Web1", "WEB1"], set()),
        (["Web1"], {"Web1"}),
    ],
)
def test_case_twins_get_a_suffix(jnames: list[str], plain: set[str]) -> None:
    ids = service_ids(jnames, "jailsyncd-")
    assert {j for j, sid in ids.items() if sid == "jailsyncd-" + j} == plain
    assert len({sid.lower() for sid in ids.values()}) == len(jnames)
    assert ids == service_ids(list(reversed(jnames)), "jailsyncd-")
