"""The CBSD read handed over in parts (``CbsdSource.begin``), against real SQLite files
shaped like CBSD's.

``begin()`` reads the node DB and the node name; ``parts(size)`` hands the
environments over complete, in jname order, reading their own DBs group by group;
``state()`` is then exactly what ``read()`` returns. These compare a streamed read
with ``read()`` of a fresh source on several workdirs (CBSD's sample, awkward values
and layouts, a per-VM DB missing or corrupt, nameless rows, xen and qemu VMs, VNET
jails' NICs) and part sizes, check that ``unchanged()`` answers the same after
either, and that the per-VM DBs are opened only as the parts are asked for."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path
from typing import Callable

import pytest

from jailsyncd.adapters import cbsd
from jailsyncd.adapters.cbsd import CbsdSource
from jailsyncd.errors import SourceCorrupt, SourceMissing
from jailsyncd.model import Environment
from testing.sample import Workdir, create_sample

SIZES = (1, 2, 7, 64)


@pytest.fixture
def no_racy_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """Files a test makes are always "recent": without the window ``unchanged()`` can
    say True, and so can be compared."""
    monkeypatch.setattr(cbsd, "RACY_WINDOW", 0.0)


def sample(root: Path) -> Workdir:
    return create_sample(root / "cbsd")


def awkward(root: Path) -> Workdir:
    """Rows inserted out of jname order, values in CBSD's odd spellings, every kind of
    environment that has a DB of its own, two whose DB cannot be read, nameless rows."""
    workdir = Workdir.create(root / "cbsd dir #1 ?x=%20")
    workdir.add("zz9", jid=3, status=1, ip4_addr="127.0.20.9", tags=" web ")
    workdir.add("vm-ok", jid=0, status=0, emulator="bhyve", ip4_addr="DHCP", tags="node")
    workdir.set_vm("vm-ok", ip4_addr="127.0.20.50", tags="from-vm-db", created="2099-01-01 00:00:00")
    workdir.add_nic("vm-ok", "58:9c:fc:00:20:50")
    workdir.add("m1", jid=4, status=1, ip4_addr="(null)", tags="0")
    for kind in ("xen", "qemu"):
        workdir.add(f"{kind}1", jid=0, status=0, emulator=kind, ip4_addr="DHCP")
        workdir.vm_set(f"{kind}1", ip4_addr=f"127.0.20.{60 if kind == 'xen' else 61}")
        workdir.add_nic(f"{kind}1", f"58:9c:fc:00:20:{60 if kind == 'xen' else 61}")
    workdir.add("vm-gone", jid=0, status=0, emulator="bhyve", ip4_addr="127.0.20.70")
    workdir.add("vm-corrupt", jid=0, status=0, emulator="bhyve", ip4_addr="127.0.20.71")
    workdir.add("vm-stopped", jid=0, status=0, emulator="bhyve", ip4_addr="127.0.20.72")
    workdir.add("Build_Box", jid=5, status=1, ip4_addr="127.0.20.5")
    workdir.add("vnetj", jid=6, status=1, ip4_addr="REALDHCP", vnet=1)
    workdir.add_nic("vnetj", "58:9c:fc:00:20:06")
    workdir.add("vnet-nodb", jid=7, status=1, ip4_addr="DHCP", vnet=1)
    workdir.add("a0", jid=8, status=" 1 ", ip4_addr="127.0.20.8")
    workdir.add("nullname", jid=9, status=1, ip4_addr="127.0.20.90")
    workdir.add("emptyname", jid=10, status=1, ip4_addr="127.0.20.91")
    with sqlite3.connect(workdir.node_db) as conn:  # as a hand edit or a broken tool leaves them
        conn.execute("UPDATE jails SET jname = NULL WHERE jname = 'nullname'")
        conn.execute("UPDATE jails SET jname = '' WHERE jname = 'emptyname'")
    conn.close()
    for jname, pid in (("vm-ok", 4001), ("xen1", 4002), ("qemu1", 4003), ("vm-gone", 4004), ("vm-corrupt", 4005)):
        workdir.start(jname, pid)
    shutil.rmtree(workdir.root / "jails-system" / "vm-gone")
    folder = workdir.root / "jails-system" / "vm-corrupt"
    for extra in folder.glob("local.sqlite-*"):
        extra.unlink()
    (folder / "local.sqlite").write_bytes(b"this is not a database" * 300)
    return workdir


def many(root: Path) -> Workdir:
    """More environments than the largest part: 90 jails and 12 running VMs, with
    jnames whose order is not the rows' order."""
    workdir = Workdir.create(root / "cbsd")
    with sqlite3.connect(workdir.node_db) as conn:
        conn.executemany(
            "INSERT INTO jails (jname, jid, status, ip4_addr) VALUES (?, ?, ?, ?)",
            [(f"j{(i * 37) % 90:02}", i + 1, i % 3 != 0, f"127.0.21.{i + 1}") for i in range(90)],
        )
    conn.close()
    for i in range(12):
        jname = f"vm{(i * 5) % 12:02}"
        workdir.add(jname, jid=0, status=0, emulator="bhyve", ip4_addr="DHCP")
        workdir.set_vm(jname, ip4_addr=f"127.0.22.{i + 1}", created="2099-01-01 00:00:00")
        workdir.start(jname, 5000 + i)
    return workdir


WORKDIRS: dict[str, Callable[[Path], Workdir]] = {"sample": sample, "awkward": awkward, "many": many}


def streamed(source: CbsdSource, size: int) -> tuple[list[tuple[tuple[Environment, ...], tuple[tuple[str, str], ...]]], object]:
    reading = source.begin()
    parts = list(reading.parts(size))
    return parts, reading.state()


@pytest.mark.usefixtures("no_racy_window")
@pytest.mark.parametrize("read_macs", [False, True])
@pytest.mark.parametrize("name", sorted(WORKDIRS))
def test_parts_add_up_to_the_read(tmp_path: Path, name: str, read_macs: bool) -> None:
    workdir = WORKDIRS[name](tmp_path)
    reference = CbsdSource(workdir.root, read_macs=read_macs)
    expected = reference.read()
    # A per-VM DB that exists but cannot be read never vouches for the read.
    vouched = reference.unchanged()
    assert expected.environments and vouched == (name != "awkward")
    by_jname = tuple(sorted(expected.environments, key=lambda e: e.jname))
    for size in SIZES:
        source = CbsdSource(workdir.root, read_macs=read_macs)
        reading = source.begin()
        assert not source.unchanged()  # no complete read yet
        assert (reading.nodename, reading.nameless) == (expected.nodename, expected.nameless)
        assert [e.jname for e in reading.listed] == [e.jname for e in by_jname]
        parts = list(reading.parts(size))
        assert all(1 <= len(group) <= size for group, _ in parts)
        assert sum(len(group) for group, _ in parts) == len(by_jname) and len(parts) == -(-len(by_jname) // size)
        assert tuple(e for group, _ in parts for e in group) == by_jname
        for group, unreadable in parts:
            assert {j for j, _ in unreadable} <= {e.jname for e in group}
        handed = [u for _, unreadable in parts for u in unreadable]
        assert sorted(handed) == sorted(expected.unreadable)
        assert not source.unchanged()  # still not: state() does the bookkeeping
        state = reading.state()
        assert state == expected == CbsdSource(workdir.root, read_macs=read_macs).read()
        assert reading.state() is state
        assert source.vm_reads == reference.vm_reads
        assert source.unchanged() == vouched  # as after read()
    if name == "awkward":
        assert expected.nameless == 2
        assert [j for j, _ in expected.unreadable] == ["vm-gone", "vm-corrupt"]
        assert "not found" in dict(expected.unreadable)["vm-gone"]
        assert "corrupt" in dict(expected.unreadable)["vm-corrupt"]
        listed = {e.jname: e for e in CbsdSource(workdir.root, read_macs=read_macs).begin().listed}
        complete = {e.jname: e for e in expected.environments}
        # listed: the node DB's rows only; the parts: with what each VM's own DB adds
        assert (listed["vm-ok"].ip4_addr, listed["vm-ok"].tags, listed["vm-ok"].macs) == ("DHCP", "node", ())
        assert (complete["vm-ok"].ip4_addr, complete["vm-ok"].tags) == ("127.0.20.50", "from-vm-db")
        assert complete["xen1"].ip4_addr == "127.0.20.60" and complete["qemu1"].ip4_addr == "127.0.20.61"
        assert complete["vnetj"].macs == (("58:9c:fc:00:20:06",) if read_macs else ())
        assert complete["vm-ok"].macs == (("58:9c:fc:00:20:50",) if read_macs else ())


@pytest.mark.usefixtures("no_racy_window")
def test_unchanged_after_a_streamed_read_sees_every_change(tmp_path: Path) -> None:
    """After a streamed read as after ``read()``: unchanged until CBSD writes, then a
    change of the node DB or of a running VM's own DB is seen, and the next streamed
    read serves unchanged per-VM DBs from the cache."""
    workdir = awkward(tmp_path)
    shutil.rmtree(workdir.root / "jails-system" / "vm-corrupt")  # a DB that is there but unreadable never vouches
    streamed_source, plain = CbsdSource(workdir.root), CbsdSource(workdir.root)
    streamed(streamed_source, 2)
    plain.read()
    assert streamed_source.unchanged() and plain.unchanged()
    workdir.set_vm("vm-ok", ip4_addr="127.0.20.51", created="2099-02-01 00:00:00")
    assert not streamed_source.unchanged() and not plain.unchanged()
    parts, state = streamed(streamed_source, 3)
    assert streamed_source.vm_reads == 1  # vm-ok again; xen1 and qemu1 from the cache
    assert {e.jname: e for e in state.environments}["vm-ok"].ip4_addr == "127.0.20.51"
    assert streamed_source.unchanged()
    workdir.set("zz9", ip4_addr="127.0.20.10")
    assert not streamed_source.unchanged()
    streamed(streamed_source, 7)
    assert streamed_source.unchanged() and streamed_source.vm_reads == 0


def test_per_vm_dbs_are_opened_as_the_parts_are_asked_for(tmp_path: Path) -> None:
    workdir = many(tmp_path)
    source = CbsdSource(workdir.root)
    reading = source.begin()
    assert source.vm_reads == 0
    vms_so_far = 0
    seen = []
    for group, _ in reading.parts(7):
        vms_so_far += sum(e.emulator == "bhyve" for e in group)
        seen.append(source.vm_reads)
        assert source.vm_reads == vms_so_far  # this group's, none of the next ones'
    assert seen == sorted(seen) and len(set(seen)) > 2 and seen[-1] == 12


def test_state_reads_what_the_parts_did_not_hand_over(tmp_path: Path) -> None:
    workdir = awkward(tmp_path)
    expected = CbsdSource(workdir.root).read()
    assert CbsdSource(workdir.root).begin().state() == expected
    reading = CbsdSource(workdir.root).begin()
    first = next(reading.parts(2))
    assert reading.state() == expected
    assert list(reading.parts(2)) == [] and first[0] == tuple(sorted(expected.environments, key=lambda e: e.jname))[:2]


def test_a_later_read_is_not_vouched_for_by_an_earlier_reading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two readings of one source: only the one ``begin()`` gave last records the
    stamps ``unchanged`` compares; an older one finishing later does not."""
    monkeypatch.setattr(cbsd, "RACY_WINDOW", 0.0)
    workdir = many(tmp_path)
    source = CbsdSource(workdir.root)
    old = source.begin()
    source.begin()
    old.state()
    assert not source.unchanged()


@pytest.mark.parametrize("spoil", ["node_db", "nodename"])
def test_a_failed_node_read_raises_at_begin(tmp_path: Path, spoil: str) -> None:
    workdir = sample(tmp_path)
    source = CbsdSource(workdir.root)
    source.read()
    if spoil == "node_db":
        workdir.node_db.unlink()
    else:
        (workdir.root / "nodename").unlink()
    with pytest.raises(SourceMissing) as from_read:
        CbsdSource(workdir.root).read()
    with pytest.raises(SourceMissing) as from_begin:
        source.begin()
    assert str(from_begin.value) == str(from_read.value)
    assert not source.unchanged()


def test_part_size_must_be_positive(tmp_path: Path) -> None:
    reading = CbsdSource(sample(tmp_path).root).begin()
    with pytest.raises(ValueError, match="at least 1"):
        next(reading.parts(0))


def test_corrupt_node_db_raises_at_begin(tmp_path: Path) -> None:
    workdir = sample(tmp_path)
    real = workdir.node_db.resolve()
    for extra in real.parent.glob(real.name + "-*"):
        extra.unlink()
    real.write_bytes(b"garbage" * 1000)
    with pytest.raises(SourceCorrupt, match=str(workdir.node_db)):
        CbsdSource(workdir.root).begin()
