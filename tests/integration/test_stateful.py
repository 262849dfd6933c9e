"""A hypothesis state machine over a real CBSD-shaped workdir and a real Consul dev agent.

Agent mode, cycles run in this process (``Reconciler`` + ``CbsdSource`` +
``adapters.consul.connect``, built from ``load_settings`` exactly as ``jailsyncd once``
builds them). The machine keeps its own simple model of the jails (jname -> running,
ip4_addr, tags) and derives the expected services from it by hand, not with
jailsyncd's functions. Rules: create, start, stop, destroy, IP change, tags change
(incl. ``consul.name=`` and ``consul=off``), Consul stop/start (dev mode loses every
service), an exclusive CBSD writer held across a cycle, and a plain cycle.

Invariants:
- after a successful cycle, the owned services in Consul (ID, name, address, port,
  tags as a set) are exactly the model's expectation, and equal ``build_desired``
  for the current DB; a second cycle right after writes nothing;
- foreign entries (ID ``web1``; ``jailsyncd-x`` owned by another host) are never
  changed, and jail ``x`` is never registered over the foreign ``jailsyncd-x``;
- a failed cycle (DB locked -> ``SourceLocked``; Consul down -> ``ConsulError``)
  removes nothing that was owned before it (with the DB locked, Consul is unchanged).
"""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
from pathlib import Path

import pytest
from harness import ConsulServer, consul_binary, write_config
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from jailsyncd.adapters.cbsd import CbsdSource
from jailsyncd.adapters.consul import connect
from jailsyncd.desired import build_desired
from jailsyncd.errors import ConsulError, SourceLocked
from jailsyncd.reconcile import Reconciler
from testing.sample import Workdir
from jailsyncd.settings import load_settings

pytestmark = pytest.mark.integration

HOST = "node1"
#: ``x`` collides with the foreign ``jailsyncd-x``; ``web1`` shares its name with the
#: foreign service ID ``web1`` (but gets the ID ``jailsyncd-web1``).
POOL = ("alpha", "beta", "gamma", "web1", "x")
ADDRESSES = tuple(f"127.0.60.{i}" for i in range(1, 9)) + ("127.0.60.9/24", "em0#127.0.60.10", "DHCP")
TAGS = ("", "prod", "web,prod", "consul.name=www", "consul.name=www,prod", "consul=off", "consul.port=80,db", "consul=on,blue")
FOREIGN = {
    "web1": {"ID": "web1", "Name": "web1", "Address": "192.0.2.1", "Port": 8080, "Tags": ["theirs"]},
    "jailsyncd-x": {"ID": "jailsyncd-x", "Name": "x", "Address": "192.0.2.2", "Meta": {"jailsyncd-owner": "othernode"}},
}

#: Set by the module fixture: (ConsulServer, scratch folder).
_ENV: dict = {}


def expected_from_model(model: dict[str, tuple[bool, str, str]]) -> dict[str, tuple]:
    """Service ID -> (name, address, port, tags), computed by hand from the model."""
    out = {}
    for jname, (running, ip, tags) in model.items():
        if not running:
            continue
        items = [t.strip() for t in tags.split(",") if t.strip()]
        plain = {t for t in items if "=" not in t}
        kv = dict(t.split("=", 1) for t in items if "=" in t)
        if kv.get("consul") == "off":
            continue
        bare = ip.split("#")[-1].split("/")[0]
        if not bare[0].isdigit():  # DHCP: no usable address
            continue
        sid = "jailsyncd-" + jname
        if sid in FOREIGN:  # owned by another host: a conflict, never taken over
            continue
        out[sid] = (kv.get("consul.name", jname), bare, int(kv.get("consul.port", 0)), frozenset({"jail"} | plain))
    return out


def owned_in_consul(services: dict[str, dict]) -> dict[str, tuple]:
    return {
        sid: (s["Service"], s["Address"], s["Port"], frozenset(s["Tags"] or ()))
        for sid, s in services.items()
        if sid.startswith("jailsyncd-") and (s.get("Meta") or {}).get("jailsyncd-owner") == HOST
    }


class JailsAndConsul(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.consul: ConsulServer = _ENV["consul"]
        if self.consul.proc is None or self.consul.proc.poll() is not None:
            self.consul.start()
        self.consul.wipe()
        self.register_foreign()
        self.tmp = Path(tempfile.mkdtemp(prefix="stateful-", dir=_ENV["scratch"]))
        self.workdir = Workdir.create(self.tmp / "cbsd")
        config = write_config(
            self.tmp / "jailsyncd.toml", workdir=self.workdir.root, consul=self.consul, host=HOST,
            extra="[sync]\nmax_deregistrations = 1000\n",
        )
        config.write_text(config.read_text().replace("[cbsd]\n", '[cbsd]\nbusy_timeout = "200ms"\n'))
        self.settings = load_settings(config, env={})
        assert not self.settings.health.enabled
        self.reconciler = Reconciler(
            self.settings, CbsdSource(self.settings.cbsd.workdir, self.settings.cbsd.busy_timeout), connect(self.settings.consul)
        )
        self.model: dict[str, tuple[bool, str, str]] = {}  # jname -> (running, ip4_addr, tags)
        self.consul_up = True
        self.next_jid = 1
        self.foreign_seen = self.foreign_now()

    # -- helpers --------------------------------------------------------------------

    def register_foreign(self) -> None:
        for body in FOREIGN.values():
            self.consul.put("/v1/agent/service/register", body)

    def foreign_now(self) -> dict[str, dict]:
        services = self.consul.services()
        return {sid: services.get(sid) for sid in FOREIGN}

    def owned(self) -> dict[str, tuple]:
        return owned_in_consul(self.consul.services())

    def update(self, jname: str, **changes) -> None:
        running, ip, tags = self.model[jname]
        values = {"running": running, "ip": ip, "tags": tags, **changes}
        self.model[jname] = (values["running"], values["ip"], values["tags"])

    # -- rules ----------------------------------------------------------------------

    @precondition(lambda self: len(self.model) < len(POOL))
    @rule(data=st.data(), ip=st.sampled_from(ADDRESSES), tags=st.sampled_from(TAGS), running=st.booleans())
    def create(self, data, ip: str, tags: str, running: bool) -> None:
        jname = data.draw(st.sampled_from([j for j in POOL if j not in self.model]), label="jname")
        self.next_jid += 1
        self.workdir.add(jname, jid=self.next_jid if running else 0, status=1 if running else 0, ip4_addr=ip, tags=tags or "0")
        self.model[jname] = (running, ip, tags)

    @precondition(lambda self: any(not r for r, _, _ in self.model.values()))
    @rule(data=st.data())
    def start(self, data) -> None:
        jname = data.draw(st.sampled_from(sorted(j for j, (r, _, _) in self.model.items() if not r)), label="jname")
        self.next_jid += 1
        self.workdir.start(jname, jid=self.next_jid)
        self.update(jname, running=True)

    @precondition(lambda self: any(r for r, _, _ in self.model.values()))
    @rule(data=st.data())
    def stop(self, data) -> None:
        jname = data.draw(st.sampled_from(sorted(j for j, (r, _, _) in self.model.items() if r)), label="jname")
        self.workdir.stop(jname)
        self.update(jname, running=False)

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def destroy(self, data) -> None:
        jname = data.draw(st.sampled_from(sorted(self.model)), label="jname")
        self.workdir.destroy(jname)
        del self.model[jname]

    @precondition(lambda self: self.model)
    @rule(data=st.data(), ip=st.sampled_from(ADDRESSES))
    def change_ip(self, data, ip: str) -> None:
        jname = data.draw(st.sampled_from(sorted(self.model)), label="jname")
        self.workdir.set(jname, ip4_addr=ip)
        self.update(jname, ip=ip)

    @precondition(lambda self: self.model)
    @rule(data=st.data(), tags=st.sampled_from(TAGS))
    def change_tags(self, data, tags: str) -> None:
        jname = data.draw(st.sampled_from(sorted(self.model)), label="jname")
        self.workdir.set(jname, tags=tags or "0")
        self.update(jname, tags=tags)

    @precondition(lambda self: self.consul_up)
    @rule()
    def consul_stop(self) -> None:
        self.consul.stop()
        self.consul_up = False

    @precondition(lambda self: not self.consul_up)
    @rule()
    def consul_start(self) -> None:
        self.consul.start()  # dev mode: empty again
        self.consul_up = True
        self.register_foreign()
        self.foreign_seen = self.foreign_now()

    @rule()
    def cycle(self) -> None:
        before = self.owned() if self.consul_up else None
        result = self.reconciler.cycle()
        if not self.consul_up:
            assert isinstance(result.error, ConsulError), result.error
            return
        if not self.model and before and result.error is None:
            # An empty jails table never deregisters without --force (issue 10, item 4).
            assert result.plan is not None and {s.service_id for s in result.plan.refused} == set(before)
            assert self.owned() == before
            return
        if result.error is not None or not result.ok:
            after = self.owned()
            assert set(before) <= set(after), f"failed cycle ({result.error!r}) removed {set(before) - set(after)}"
            raise AssertionError(f"unexpected failed cycle: {result.error!r} {result.failures}")
        self.check_converged()
        again = self.reconciler.cycle()
        assert again.ok and again.writes == 0, f"second cycle wrote {again.writes}: {again.plan}"

    @rule()
    def cycle_with_db_locked(self) -> None:
        # Consul's raft index is not compared: the agent's anti-entropy sync moves it
        # by itself shortly after a registration. The agent's own view must not move.
        before = self.consul.services() if self.consul_up else None
        writer = sqlite3.connect(self.workdir.node_db, isolation_level=None)
        try:
            writer.execute("PRAGMA locking_mode=EXCLUSIVE")
            writer.execute("BEGIN EXCLUSIVE")
            writer.execute("UPDATE jails SET jid = 0, status = 0")  # uncommitted: must never be seen
            result = self.reconciler.cycle()
        finally:
            writer.execute("ROLLBACK")
            writer.close()
        assert isinstance(result.error, SourceLocked), result.error
        if self.consul_up:
            assert self.consul.services() == before

    # -- invariants -----------------------------------------------------------------

    def check_converged(self) -> None:
        owned = self.owned()
        assert owned == expected_from_model(self.model)
        state = CbsdSource(self.settings.cbsd.workdir, self.settings.cbsd.busy_timeout).read()
        desired = build_desired(state, owner=HOST)
        by_jailsyncd = {s.service_id: (s.name, s.address, s.port, s.tags) for s in desired.services if s.service_id not in FOREIGN}
        assert owned == by_jailsyncd

    @invariant()
    def foreign_untouched(self) -> None:
        if self.consul_up:
            assert self.foreign_now() == self.foreign_seen

    def teardown(self) -> None:
        if not self.consul_up:
            self.consul.start()
        shutil.rmtree(self.tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def stateful_consul(tmp_path_factory):
    server = ConsulServer(consul_binary()).start()
    _ENV.update(consul=server, scratch=tmp_path_factory.mktemp("stateful"))
    yield server
    _ENV.clear()
    server.stop()


def test_jails_and_consul_state_machine(stateful_consul: ConsulServer) -> None:
    run_state_machine_as_test(
        JailsAndConsul,
        settings=settings(
            max_examples=15,
            stateful_step_count=12,
            deadline=None,
            derandomize=True,
            database=None,
            # No shrinking: with Consul restarts in the steps it can take minutes.
            # A failure prints the unshrunk steps, which are at most 12.
            phases=[Phase.explicit, Phase.reuse, Phase.generate],
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
