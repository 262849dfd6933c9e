"""``MemorySource.begin()``: the in-memory CBSD reader hands its state over in parts
with the semantics of ``CbsdSource.begin()`` (``ports.CbsdReading``), so that
orchestration tests of a streamed read see what the real reader would give."""

from __future__ import annotations

from dataclasses import replace

import pytest
from memory import MemorySource, jail

from jailsyncd.errors import SourceLocked


def source() -> MemorySource:
    mem = MemorySource(jail("web", 3), jail("alpha", 1), jail("mid", 2, running=False), jail("zed", 4))
    mem.state = replace(mem.state, unreadable=(("zed", "zed: unreadable"), ("alpha", "alpha: unreadable")), nameless=1)
    return mem


@pytest.mark.parametrize("size", [1, 2, 7, 64])
def test_parts_add_up_to_the_state_in_jname_order(size: int) -> None:
    mem = source()
    expected = mem.state
    reading = mem.begin()
    assert (reading.nodename, reading.nameless) == ("node1", 1)
    assert [e.jname for e in reading.listed] == ["alpha", "mid", "web", "zed"]
    assert not mem.unchanged()
    parts = list(reading.parts(size))
    assert all(1 <= len(group) <= size for group, _ in parts)
    assert tuple(e for group, _ in parts for e in group) == reading.listed
    for group, unreadable in parts:
        assert unreadable == tuple(u for u in expected.unreadable if u[0] in {e.jname for e in group})
    assert reading.state() is expected and mem.unchanged()
    mem.set(jail("web", 3))
    assert not mem.unchanged()


def test_a_failure_raises_at_begin_and_is_not_unchanged() -> None:
    mem = source()
    mem.read()
    assert mem.unchanged()
    mem.fail = SourceLocked("locked")
    with pytest.raises(SourceLocked):
        mem.begin()
    mem.fail = None
    assert not mem.unchanged()
    assert mem.reads == 2


def test_unreadable_entries_without_an_environment_still_come_out() -> None:
    mem = MemorySource(jail("a", 1))
    mem.state = replace(mem.state, unreadable=(("ghost", "gone"),))
    assert [u for _, unreadable in mem.begin().parts(5) for u in unreadable] == [("ghost", "gone")]
    mem.set()
    assert list(mem.begin().parts(5)) == [((), (("ghost", "gone"),))]
