"""Unit tests for jailsyncd.naming: DNS labels for CBSD jnames.

Rules (module docstrings): lower-case; every character outside ``[a-z0-9-]`` becomes
``-``; at most 63 characters; no leading/trailing dash; empty -> ``x``. Collisions are
settled from the set of jnames alone: an exact jname keeps its label, lossy ones get
``<label>-<4 hex of a hash of the exact jname>``; distinct jnames -> distinct labels.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jailsyncd.naming import MAX_LABEL, dns_label, suffixed_label, unique_labels

#: RFC 1035/1123 label: letters, digits, dashes; no dash at either end; 1..63 chars.
LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
SUFFIX = re.compile(r"-[0-9a-f]{4}$")


#: Printable ASCII, CBSD's jname specials and some non-ASCII letters (incl. ones whose
#: lower() is longer). An explicit alphabet keeps hypothesis from building its unicode
#: table (seconds on a fresh checkout).
_ANY = "".join(chr(c) for c in range(32, 127)) + "éïüßİÅ日本Ωж\u00a0\u200b"


def is_label(text: str) -> bool:
    return bool(LABEL.match(text))


# --- dns_label -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("web1", "web1"),
        ("web-1", "web-1"),
        ("WEB1", "web1"),
        ("MixedCase", "mixedcase"),
        ("web_1", "web-1"),
        ("web@1", "web-1"),
        ("web%1", "web-1"),
        ("web:1", "web-1"),
        ("a_b@c%d:e", "a-b-c-d-e"),
        ("a__b", "a--b"),
        ("a.b", "a-b"),
        ("a b", "a-b"),
        ("123", "123"),
        ("café", "caf"),
        ("naïve", "na-ve"),
        ("日本", "x"),
        ("jail日本1", "jail--1"),
        ("_web_", "web"),
        ("-web-", "web"),
        ("@@web%%", "web"),
        ("___", "x"),
        ("-", "x"),
        ("", "x"),
        ("a" * 63, "a" * 63),
        ("a" * 64, "a" * 63),
        ("A" * 200, "a" * 63),
        # the cut happens before the dash strip, so no trailing dash survives the cut
        ("a" * 62 + "_b", "a" * 62),
    ],
)
def test_dns_label(text, expected):
    assert dns_label(text) == expected
    assert is_label(dns_label(text))


def test_max_label_is_dns_limit():
    assert MAX_LABEL == 63


@settings(max_examples=80, deadline=None, database=None, derandomize=True)
@given(st.text(alphabet=_ANY, max_size=150))
def test_dns_label_always_valid(text):
    label = dns_label(text)
    assert is_label(label), label
    assert len(label) <= 63


# --- suffixed_label --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("jname", "stem"),
    [
        ("web_1", "web-1"),
        ("web@1", "web-1"),
        ("WEB1", "web1"),
        ("___", "x"),
        ("a" * 100, "a" * 58),
        # label cut at 58 would end in '-': the dash is dropped, never doubled
        ("a" * 57 + "_bbbb", "a" * 57),
    ],
)
def test_suffixed_label_shape(jname, stem):
    label = suffixed_label(jname)
    assert is_label(label)
    assert len(label) <= 63
    assert SUFFIX.search(label)
    assert label[: -len("-abcd")] == stem
    assert suffixed_label(jname) == label  # deterministic
    assert label != dns_label(jname)


def test_suffixed_label_full_length_is_exactly_63():
    assert len(suffixed_label("b" * 200)) == 63


def test_suffixed_label_depends_on_exact_jname():
    # same dns_label, different jnames -> different suffix
    assert dns_label("web_1") == dns_label("web@1") == dns_label("WEB_1")
    labels = {suffixed_label(j) for j in ("web_1", "web@1", "WEB_1")}
    assert len(labels) == 3


@settings(max_examples=50, deadline=None, database=None, derandomize=True)
@given(st.text(alphabet=_ANY, max_size=120))
def test_suffixed_label_always_valid(jname):
    label = suffixed_label(jname)
    assert is_label(label) and len(label) <= 63 and SUFFIX.search(label)


# --- unique_labels ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("jnames", "keeps", "suffixed"),
    [
        # no collisions: everyone gets plain dns_label, even lossy ones
        pytest.param(["web1", "db1"], {"web1": "web1", "db1": "db1"}, [], id="distinct"),
        pytest.param(["Web_1"], {"Web_1": "web-1"}, [], id="lossy-but-unique"),
        # exact one keeps, lossy one is suffixed
        pytest.param(["web_1", "web-1"], {"web-1": "web-1"}, ["web_1"], id="exact-vs-lossy"),
        pytest.param(["WEB1", "web1"], {"web1": "web1"}, ["WEB1"], id="case-collision"),
        # two lossy ones: both suffixed
        pytest.param(["web_1", "web@1"], {}, ["web_1", "web@1"], id="two-lossy"),
        pytest.param(["web-1", "web_1", "web@1", "WEB:1"], {"web-1": "web-1"}, ["web_1", "web@1", "WEB:1"], id="exact-plus-three"),
        # collisions created by the 63-character cut
        pytest.param(["a" * 63, "a" * 64], {"a" * 63: "a" * 63}, ["a" * 64], id="cut-exact"),
        pytest.param(["a" * 63 + "1", "a" * 63 + "2"], {}, ["a" * 63 + "1", "a" * 63 + "2"], id="cut-two-lossy"),
        # collisions only within a group; other groups untouched
        pytest.param(["web_1", "web-1", "db"], {"web-1": "web-1", "db": "db"}, ["web_1"], id="other-group-untouched"),
        # duplicates in input are one jname
        pytest.param(["a", "a"], {"a": "a"}, [], id="duplicate-input"),
        pytest.param([], {}, [], id="empty"),
    ],
)
def test_unique_labels(jnames, keeps, suffixed):
    result = unique_labels(jnames)
    assert set(result) == set(jnames)
    for jname, label in keeps.items():
        assert result[jname] == label
    for jname in suffixed:
        assert result[jname] == suffixed_label(jname)
        assert result[jname].startswith(dns_label(jname)[:58].rstrip("-") + "-")
    assert len(set(result.values())) == len(result)
    assert all(is_label(v) for v in result.values())


@pytest.mark.parametrize("container", [list, tuple, set])
def test_unique_labels_accepts_any_collection(container):
    assert unique_labels(container(["web_1", "web-1"])) == {"web-1": "web-1", "web_1": suffixed_label("web_1")}


def test_unique_labels_stable_when_a_jail_is_added_elsewhere():
    """Adding an unrelated jname never changes existing labels."""
    before = unique_labels(["web_1", "web-1", "db@1"])
    after = unique_labels(["web_1", "web-1", "db@1", "mail"])
    assert {k: after[k] for k in before} == before


# jnames over a tiny alphabet so that collisions are frequent; CBSD: first char has no '-'
_jname = st.text(alphabet="aA1_@%:-", min_size=1, max_size=5).filter(lambda s: not s.startswith("-"))


@settings(max_examples=60, deadline=None, database=None, derandomize=True)
@given(st.lists(_jname, max_size=12), st.randoms(use_true_random=False))
def test_unique_labels_order_independent(jnames, rnd):
    shuffled = list(jnames)
    rnd.shuffle(shuffled)
    assert unique_labels(jnames) == unique_labels(shuffled)
    assert unique_labels(jnames) == unique_labels(set(jnames))


@settings(max_examples=60, deadline=None, database=None, derandomize=True)
@given(st.lists(_jname | st.text(alphabet=_ANY, max_size=70), max_size=12))
def test_unique_labels_valid_and_pairwise_distinct(jnames):
    result = unique_labels(jnames)
    assert set(result) == set(jnames)
    labels = list(result.values())
    assert all(is_label(label) for label in labels)
    assert len(set(labels)) == len(labels)
    for jname, label in result.items():
        if is_label(jname):
            assert label == jname  # a jname that is already a valid label keeps it


# --- bugs ------------------------------------------------------------------------------


def test_suffixed_label_can_collide_with_an_exact_jname():
    taken = suffixed_label("web_1")  # "web-1-" + 4 hex digits
    result = unique_labels(["web_1", "web-1", taken])
    assert result[taken] == taken  # exact jname keeps its label...
    assert len(set(result.values())) == 3  # ...so web_1 must get something else


def test_two_lossy_jnames_with_same_hash_suffix():
    a, b = "a_b_b_b%b@b_b", "a_b_b:b_b:b_b"  # found by search: same dns_label, same suffix
    assert dns_label(a) == dns_label(b)
    result = unique_labels([a, b])
    assert result[a] != result[b]


@pytest.mark.parametrize("text", ["a", "0", "a-", "-a", "a--b", "web1\n", "a" * 63, "a" * 64, "a" * 62 + "-", "x.y", "Ab", "a\u0131"])
def test_dns_label_shortcut_for_a_label_says_what_the_rewrite_says(text: str) -> None:
    slow = re.sub(r"[^a-z0-9-]", "-", text.lower())[:MAX_LABEL].strip("-") or "x"
    assert dns_label(text) == slow
