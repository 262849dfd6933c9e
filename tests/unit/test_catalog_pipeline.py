"""``_one_after_another``: catalog mode sends its transactions from a helper thread
while the reconciler builds the next ones (up to ``ahead`` queued) and logs the
results of those before. What must not change: one transaction at a time (one helper
thread), in order, nothing sent after one failed or once the daemon asked to stop,
and the failure raised to the caller in its turn."""

from __future__ import annotations

import threading

import pytest

from jailsyncd.adapters.consul.catalog import _one_after_another
from jailsyncd.errors import ConsulError

BATCHES = [[b * 10 + i for i in range(3)] for b in range(6)]


class Recorder:
    def __init__(self, fail_at: int | None = None) -> None:
        self.sent: list[int] = []
        self.threads: set[int] = set()
        self.fail_at = fail_at

    def send(self, batch: list[int]) -> list[tuple[int, str]]:
        self.threads.add(threading.get_ident())
        self.sent.append(batch[0] // 10)
        if batch[0] // 10 == self.fail_at:
            raise ConsulError("PUT /v1/txn: no answer within 1s")
        return [(item, "ok") for item in batch]


def test_every_result_in_order_from_one_helper_thread() -> None:
    rec = Recorder()
    seen = [item for item, _ in _one_after_another(BATCHES, rec.send, lambda: False)]
    assert seen == [item for batch in BATCHES for item in batch]
    assert rec.sent == list(range(6))
    assert len(rec.threads) == 1 and threading.get_ident() not in rec.threads


def test_never_two_transactions_at_once() -> None:
    """The first send waits (up to a deadline) for a second one to start beside it:
    none may, though the second batch is queued while the first is out."""
    second = threading.Event()
    overlapped: list[bool] = []

    def send(batch: list[int]) -> list[tuple[int, str]]:
        if batch[0] == 0:
            overlapped.append(second.wait(timeout=0.3))
        else:
            second.set()
        return [(item, "ok") for item in batch]

    assert len(list(_one_after_another(BATCHES, send, lambda: False))) == 18
    assert overlapped == [False]


def test_nothing_is_sent_after_a_failure_and_it_is_raised_in_its_turn() -> None:
    rec = Recorder(fail_at=2)
    seen = []
    raised = threading.Event()
    asked = []

    def should_stop() -> bool:
        # Asked on the helper before each send. Before the batch queued behind the
        # failed one, wait (up to a deadline) until the caller has the error: the
        # helper itself must know not to send it, whatever the caller does.
        asked.append(1)
        if len(asked) == 4:
            raised.wait(timeout=0.3)
        return False

    with pytest.raises(ConsulError):
        try:
            for item, _ in _one_after_another(BATCHES, rec.send, should_stop):
                seen.append(item)
        finally:
            raised.set()
    assert seen == [item for batch in BATCHES[:2] for item in batch], "results before the failure are all handed over"
    assert rec.sent == [0, 1, 2], "the batch queued behind the failed one is never sent"


def test_should_stop_is_asked_before_each_send() -> None:
    """Batches queued ahead are sent only while ``should_stop()`` says no: once the
    daemon is told to stop (here while batch 1's results are handled), nothing more
    goes out, and the results of what went out before are all handed over."""
    stop = threading.Event()
    sent: list[tuple[int, bool]] = []

    def send(batch: list[int]) -> list[tuple[int, str]]:
        sent.append((batch[0] // 10, stop.is_set()))
        if batch[0] // 10 >= 2:
            stop.wait(timeout=1.0)  # Consul is slow from here on: the stop comes meanwhile
        return [(item, "ok") for item in batch]

    seen = []
    for item, _ in _one_after_another(BATCHES, send, stop.is_set):
        seen.append(item)
        if item == 12:
            stop.set()
    assert [n for n, _ in sent] == list(range(len(sent))) and len(sent) < len(BATCHES)
    assert not [n for n, stopped in sent if stopped], "nothing is sent once the daemon stops"
    assert seen == [item for batch in BATCHES[: len(sent)] for item in batch]


def test_a_caller_that_stops_early_leaves_nothing_running() -> None:
    rec = Recorder()
    gen = _one_after_another(BATCHES, rec.send, lambda: False)
    assert next(gen) == (0, "ok")
    gen.close()  # waits for the helper
    sent = list(rec.sent)
    assert sent in ([0], [0, 1])
    assert not [t for t in threading.enumerate() if t.name.startswith("consul-txn")], "the helper thread is gone"


def test_one_batch_is_sent_like_many_and_batches_are_built_as_they_are_needed() -> None:
    rec = Recorder()
    assert list(_one_after_another(BATCHES[:1], rec.send, lambda: False)) == [(0, "ok"), (1, "ok"), (2, "ok")]
    assert len(rec.threads) == 1 and threading.get_ident() not in rec.threads

    built: list[int] = []
    built_when_sent: list[int] = []

    def batches():
        for batch in BATCHES:
            built.append(batch[0] // 10)
            yield batch

    def send(batch: list[int]) -> list[tuple[int, str]]:
        built_when_sent.append(len(built))
        return [(item, "ok") for item in batch]

    assert len(list(_one_after_another(batches(), send, lambda: False, ahead=2))) == 18
    # Batches are built while those before them are out, at most `ahead` queued
    # behind the one being sent (and the one being built), never all first.
    assert all(count <= sent + 2 + 2 for sent, count in enumerate(built_when_sent)), built_when_sent
    assert built_when_sent[0] <= 4
