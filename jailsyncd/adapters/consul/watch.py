"""Consul's change feed: one blocking query that returns when what this host owns in
Consul may have changed (``ConsulChangeFeed``, the ``ports.ConsulWatch`` of both modes).

Made once per process by ``app`` over the process's one ``ConsulClient``; called by
``daemon``'s Consul-watch thread (``wait_change`` in a loop), never by a cycle. This
module holds what both modes share (the index, the hygiene, the generation); what a
mode blocks on and how its answers are compared is its own ``WatchQuery``, made by its
store (``ConsulAgent.watch_query`` in ``agent``, ``ConsulCatalog.watch_query`` in
``catalog``). They were chosen against Consul 1.8.7 (docs/architecture.md, "Watching
Consul"):

- agent mode: ``GET /v1/catalog/node-services/<node>`` for the local agent's node
  (its name read once from ``/v1/agent/self``). The agent syncs a service registered,
  edited or deregistered through its API to the catalog at once, and that wakes this
  query; a TTL check update (the health rounds, the heartbeat) does not, and neither
  does a change on another node. ``/v1/agent/services`` itself cannot block in 1.8
  (no index, no content hash). A change is reported only when the entries with
  jailsyncd's IDs differ from the last answer, so other services of the agent and
  spurious wake-ups cost one request and no cycle;
- catalog mode: ``GET /v1/catalog/services?node-meta=jailsyncd-owner:<owner>``, whose
  index moves when a service of one of our nodes is registered, edited or removed,
  or one of our nodes is deregistered (with its services); checks written by the
  health rounds do not wake it. Its answer (names and tags) cannot show an edited
  port or address, so a moved index is the change.

Blocking-query hygiene as Consul documents it (docs/reliability.md): a bounded
``wait`` (``WAIT``, randomised by up to a tenth, on top of the up to wait/16 Consul
adds), ``?stale`` (any server answers; a follower lags by milliseconds, and the cycle
the change asks for reads again), an index that goes backwards (a snapshot restore, a
new dev agent) resets to 0 and counts as a change, an index below 1 is taken as 1.
The rate limit between two returns and the backoff while Consul is down are the
caller's (``daemon``): this module makes one request per call and never sleeps.
"""

from __future__ import annotations

import random
import time
from typing import Callable, Protocol

from jailsyncd.adapters.consul.transport import ConsulClient, indexed_body
from jailsyncd.errors import ConsulError

#: Seconds a blocking query waits for a change (Consul's own default; at most 10 m).
WAIT = 300.0


class WatchQuery(Protocol):
    """What one mode blocks on, and what in an answer counts as a change."""

    #: Whether the endpoint takes ``?dc`` (the catalog's do; the agent's do not).
    dc_scoped: bool
    #: True: a moved index is the change (the answer cannot show every edit); False:
    #: the answers' ``digest`` is (the index also moves for what is not ours).
    index_is_change: bool
    #: Requests the query made itself (agent mode reads its node name once).
    requests: int

    def query(self, owner: str) -> tuple[str, dict[str, str]]:
        """The path and parameters to block on for ``owner``; may raise ``ConsulError``."""
        ...

    def digest(self, body: str) -> str:
        """What an answer says about what jailsyncd owns; raises ``ConsulError`` (or
        ``ConsulRefused``) for an answer that cannot be Consul's or that a token hid."""
        ...

    def forget(self) -> None:
        """A query failed: drop what was learnt from Consul to make it (agent mode: the
        agent's node name, which an agent restarted under another name changes)."""
        ...


class ConsulChangeFeed:
    """One blocking query per call over the process's client (``ports.ConsulWatch``).

    ``generation`` moves each time a change is reported (the reconciler compares it
    with the one its last read of Consul was made at); ``healthy`` says the last call
    got an answer; ``requests`` counts what it sent (the benchmark's cost figures)."""

    def __init__(self, client: ConsulClient, what: WatchQuery, *, wait: float = WAIT, rand: Callable[[], float] = random.random) -> None:
        self._client = client
        self.what = what
        self.wait = wait
        self._rand = rand
        self.generation = 0
        self.healthy = False
        self._gets = 0
        #: The last index seen (0: none yet, or reset), what the answer said, and the
        #: query it answered (another query, e.g. after a reload changed host.name,
        #: starts again from 0).
        self.index = 0
        self._seen: str | None = None
        self._asked: tuple[str, dict[str, str]] | None = None

    @property
    def requests(self) -> int:
        return self._gets + self.what.requests

    def wait_change(self, owner: str, timeout: float | None = None) -> bool:
        """Block until Consul answers: True when what ``owner`` holds may have changed
        since the last answer (the first answer, one after a failed call, or one after
        the index went backwards count as changes). ``timeout``: the longest wait (by
        default ``WAIT``). Raises ``ConsulError`` when Consul cannot answer (then
        ``healthy`` is False and the next answer counts as a change)."""
        try:
            path, params = asked = self.what.query(owner)
            if asked != self._asked:
                self._asked, self.index, self._seen = asked, 0, None
            wait = min(self.wait if timeout is None else timeout, self.wait)
            wait = max(1.0, wait * (1.0 - 0.1 * self._rand()))
            started = time.monotonic()
            index, body = self._get(path, params, self.index, wait)
            if self.index and index == self.index and time.monotonic() - started < wait / 2:
                # Woken early with nothing new: Consul abandons its blocking queries
                # when a snapshot is restored, and may answer them once more from the
                # state it drops. Ask again without blocking: a restored index is
                # below ours, and a query with ours would hang for the whole wait.
                index, body = self._get(path, params, 0, 0.0)
            seen = self.what.digest(body)
        except ConsulError:
            # Start again from index 0: the Consul that answers next may be a new one
            # whose index is below ours, and a query with ours would hang for the
            # whole wait before telling (the first answer after this counts as a change).
            self.healthy, self.index, self._seen = False, 0, None
            self.what.forget()
            raise
        was_healthy, self.healthy = self.healthy, True
        changed = not was_healthy or self._seen is None
        if index < self.index:
            # A restored snapshot or a new cluster: start again from the index of this
            # answer (a read made now; Consul documents a reset to 0, whose answer
            # would be the same read once more).
            changed = True
        elif self.what.index_is_change:
            changed = changed or index != self.index
        else:
            changed = changed or seen != self._seen
        self.index = max(index, 1)  # Consul documents an index below 1 as a bug: take it as 1
        self._seen = seen
        if changed:
            self.generation += 1
        return changed

    def _get(self, path: str, params: dict[str, str], index: int, wait: float) -> tuple[int, str]:
        """One GET: blocking for up to ``wait`` seconds past ``index`` (0: at once)."""
        query = {**params, "stale": ""}
        if index:
            query.update({"index": str(index), "wait": f"{wait:.0f}s"})
        self._gets += 1
        # The deadline covers the wait, Consul's jitter (up to wait/16) and a reply.
        return self._client.call(  # type: ignore[no-any-return]
            "GET", path, indexed_body, params=query, dc_scoped=self.what.dc_scoped, timeout=wait * 1.1 + self._client.timeout
        )
