"""The request deadline's watchdog (``transport._Watchdog``): one thread, woken only
when a deadline earlier than every armed one arrives, still fires each armed
deadline in time and never a disarmed one. Real threads, no Consul; each wait is
bounded."""

from __future__ import annotations

import threading
import time

from jailsyncd.adapters.consul.transport import _Watchdog


def test_an_earlier_deadline_wakes_the_thread_and_later_ones_still_fire() -> None:
    dog = _Watchdog()
    late, early, after = threading.Event(), threading.Event(), threading.Event()
    now = time.monotonic()
    dog.arm(now + 30, late.set)  # the thread now sleeps until this one
    dog.arm(now + 0.05, early.set)  # earlier: must wake it
    assert early.wait(5)
    assert not late.is_set()
    dog.arm(time.monotonic() + 0.1, after.set)  # earlier than late again
    assert after.wait(5)
    assert not late.is_set()


def test_deadlines_armed_in_a_burst_each_fire_and_disarmed_ones_never() -> None:
    dog = _Watchdog()
    fired: list[int] = []
    done = threading.Event()
    now = time.monotonic()
    # Each later than the ones before: only the first wakes the thread.
    tokens = [dog.arm(now + 0.02 * (i + 1), lambda i=i: fired.append(i)) for i in range(6)]
    for token in tokens[::2]:
        dog.disarm(token)
    dog.arm(now + 0.2, done.set)
    assert done.wait(5)
    assert fired == [1, 3, 5]
