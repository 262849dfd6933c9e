"""``taken_in``: what a read-only transaction of ``Node get`` operations says about
which node names exist (catalog mode's clash check). The answers are Consul 1.8.7's,
recorded from a dev agent; the last cases are answers the function must refuse to
read (then the names are asked through the catalog's read endpoints)."""

from __future__ import annotations

import pytest

from jailsyncd.adapters.consul.catalog import taken_in

CHUNK = ["a.example", "b.example", "c.example"]


def _missing(index: int, name: str) -> dict:
    return {"OpIndex": index, "What": f'node "{name}" doesn\'t exist'}


def test_every_name_not_listed_as_missing_exists() -> None:
    # HTTP 409: the failed gets are listed, and no results are sent.
    answer = {"Results": None, "Errors": [_missing(0, "a.example"), _missing(2, "c.example")], "Index": 0, "KnownLeader": True}
    assert taken_in(CHUNK, answer) == {"b.example"}


def test_no_error_means_every_name_exists_even_when_the_token_may_not_read_them() -> None:
    # HTTP 200: Consul 1.8 leaves nodes the token may not read out of Results.
    assert taken_in(CHUNK, {"Results": [], "Errors": None}) == set(CHUNK)
    assert taken_in(CHUNK, {"Results": [{"Node": {"Node": "a.example"}}], "Errors": None}) == set(CHUNK)


def test_all_missing() -> None:
    answer = {"Results": None, "Errors": [_missing(i, n) for i, n in enumerate(CHUNK)]}
    assert taken_in(CHUNK, answer) == set()


@pytest.mark.parametrize(
    "answer",
    [
        None,
        [],
        {"Results": None, "Errors": [{"OpIndex": 1, "What": "Permission denied"}]},
        {"Results": None, "Errors": [_missing(0, "a.example"), {"OpIndex": 1, "What": "Permission denied"}]},
        {"Results": None, "Errors": [_missing(3, "d.example")]},
        {"Results": None, "Errors": [{"What": "node \"a.example\" doesn't exist"}]},
        {"Results": None, "Errors": ["node doesn't exist"]},
    ],
    ids=["empty body", "not an object", "permission denied", "one denied among missing", "index out of range", "no index", "not an object error"],
)
def test_an_answer_that_cannot_tell_is_refused(answer: object) -> None:
    assert taken_in(CHUNK, answer) is None
