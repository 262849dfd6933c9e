"""Unit tests for jailsyncd.report: jailsyncd's JSON log lines -> per-jail drift report.

Contract (report docstring): drift kinds counted per jail with first/last seen;
``changed`` fields counted; actions counted; anything that is not one of the used
events is skipped and counted by reason, never fatal; ``--since``/``--jail`` filter;
rotated ``.gz``/``.bz2`` files and stdin are read; an unreadable file is listed and
a ``ReportError`` after the rest is reported; a bad ``--since`` is a one-line usage error.
"""

from __future__ import annotations

import argparse
import bz2
import gzip
import io
import itertools
import json
import lzma
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from jailsyncd.errors import ExitCode, JailsyncdError
from jailsyncd.report import ReportError, ReportUsageError, add_parser, aggregate, parse_line, parse_since, read_lines, report_as_json, report_as_text, run

UTC = timezone.utc


def ev(event: str, ts: str, cycle: int | None = 1, level: str = "info", **kw) -> str:
    """One log line exactly as logs.configure renders it (key order included)."""
    obj = {"cycle": cycle, **kw} if cycle is not None else dict(kw)
    return json.dumps({**obj, "event": event, "level": level, "timestamp": ts})


def t(minute: int, second: int = 0) -> str:
    return f"2026-11-27T19:{minute:02d}:{second:02d}.000000Z"


def dt(minute: int, second: int = 0) -> datetime:
    return datetime(2026, 11, 27, 19, minute, second, tzinfo=UTC)


#: Three cycles on a host: web1 registered, then its address and tags drift twice,
#: old1 is an orphan refused by the rail (logged as drift + refusal), db1 fails.
LOG = [
    ev("drift_detected", t(0, 1), kind="missing", jail="web1", service_id="jailsyncd-web1", service="web1", address="10.0.0.1"),
    ev("jail_skipped", t(0, 1), level="info", jail="dhcp1", reason="unaddressable", detail="ip4_addr DHCP has no address"),
    ev("jail_skipped", t(0, 1), level="info", jail="private", reason="opted_out", detail="consul=off"),
    ev("service_registered", t(0, 2), jail="web1", service_id="jailsyncd-web1", service="web1", address="10.0.0.1"),
    ev("cycle_finished", t(0, 3), registered=1, updated=0, deregistered=0, refused=0, skipped=2, failed=0, writes=1, requests=2, duration_ms=4.2),
    ev("drift_detected", t(1), cycle=2, kind="changed", jail="web1", service_id="jailsyncd-web1",
       fields={"address": {"from": "10.0.0.1", "to": "10.0.0.2"}, "tagged_addresses": {"from": {}, "to": {}}}),
    ev("drift_detected", t(1), cycle=2, kind="orphan", jail="old1", service_id="jailsyncd-old1"),
    ev("deregistrations_refused", t(1), cycle=2, level="error", count=1, max_deregistrations=0, jails=["old1"]),
    ev("drift_detected", t(1), cycle=2, kind="missing", jail="db1", service_id="jailsyncd-db1"),
    ev("service_updated", t(1, 1), cycle=2, jail="web1", service_id="jailsyncd-web1", fields=["address", "tagged_addresses"]),
    ev("action_failed", t(1, 1), cycle=2, level="error", action="register", jail="db1", service_id="jailsyncd-db1", error="Consul rejected PUT /v1/agent/service/register: 400 bad port"),
    ev("cycle_finished", t(1, 2), cycle=2, registered=0, updated=1, deregistered=0, refused=1, skipped=2, failed=1, writes=2, requests=3, duration_ms=5.0),
    ev("drift_detected", t(2), cycle=3, kind="changed", jail="web1", service_id="jailsyncd-web1", fields={"tags": {"from": ["a"], "to": ["b"]}}),
    ev("service_updated", t(2, 1), cycle=3, jail="web1", service_id="jailsyncd-web1", fields=["tags"]),
    ev("cycle_finished", t(2, 2), cycle=3, registered=0, updated=1, deregistered=0, refused=0, skipped=2, failed=0, writes=1, requests=2, duration_ms=3.0),
    ev("cycle_failed", t(3), cycle=4, level="error", error="Consul unreachable", error_kind="ConsulError", retryable=True, duration_ms=1.0),
]


def kinds(report, jail):
    return {k.kind: k for k in report.jail(jail).kinds}


# -- aggregation --------------------------------------------------------------------


def test_counts_first_and_last_seen_per_jail_and_kind():
    report = aggregate(LOG)
    assert [j.jail for j in report.jails] == ["db1", "dhcp1", "old1", "private", "web1"]

    web1 = kinds(report, "web1")
    assert set(web1) == {"missing", "changed"}
    assert (web1["missing"].count, web1["missing"].first_seen, web1["missing"].last_seen) == (1, dt(0, 1), dt(0, 1))
    assert (web1["changed"].count, web1["changed"].first_seen, web1["changed"].last_seen) == (2, dt(1), dt(2))
    assert dict(report.jail("web1").actions) == {"registered": 1, "updated": 2, "deregistered": 0, "failed": 0, "refused": 0}

    assert kinds(report, "dhcp1")["unaddressable"].count == 1
    assert kinds(report, "dhcp1")["unaddressable"].detail == "ip4_addr DHCP has no address"
    assert kinds(report, "private")["opted_out"].count == 1

    db1 = report.jail("db1")
    assert db1.action("failed") == 1 and db1.action("registered") == 0
    assert db1.last_error == "Consul rejected PUT /v1/agent/service/register: 400 bad port"


def test_refused_orphan_is_counted_once_with_its_refusal():
    report = aggregate(LOG)
    old1 = report.jail("old1")
    assert kinds(report, "old1")["orphan"].count == 1  # drift_detected + deregistrations_refused: one orphan
    assert old1.action("refused") == 1 and old1.action("deregistered") == 0


def test_refusal_alone_still_counts_as_orphan():
    # With log.level = "warning" the info-level drift_detected lines are not written.
    report = aggregate([ev("deregistrations_refused", t(5), level="error", count=2, jails=["a", "b"])])
    assert kinds(report, "a")["orphan"].count == 1 and kinds(report, "b")["orphan"].first_seen == dt(5)
    assert report.jail("b").action("refused") == 1


def test_same_cycle_number_in_a_later_run_counts_again():
    # `jailsyncd once` restarts at cycle 1 every run; cycle_finished ends the cycle.
    run_once = [
        ev("drift_detected", t(0), kind="orphan", jail="a", service_id="jailsyncd-a"),
        ev("deregistrations_refused", t(0), count=1, jails=["a"]),
        ev("cycle_finished", t(0, 1)),
    ]
    second = [ev("deregistrations_refused", t(9), count=1, jails=["a"]), ev("cycle_finished", t(9, 1))]
    report = aggregate(run_once + second)
    assert kinds(report, "a")["orphan"].count == 2
    assert report.jail("a").action("refused") == 2


def test_changed_fields_are_counted_per_field():
    report = aggregate(LOG)
    assert kinds(report, "web1")["changed"].fields == (("address", 1), ("tagged_addresses", 1), ("tags", 1))
    more = aggregate(LOG + [ev("drift_detected", t(4), cycle=5, kind="changed", jail="web1", fields={"address": {"from": "1", "to": "2"}})])
    assert kinds(more, "web1")["changed"].fields[0] == ("address", 2)
    assert kinds(more, "web1")["changed"].count == 3


def test_health_and_conflict_and_source_error_are_drift_kinds():
    lines = [
        ev("health_changed", t(0), jail="web1", check="service:jailsyncd-web1", **{"from": "passing", "to": "critical"}),
        ev("health_changed", t(1), jail="web1", check="service:jailsyncd-web1", **{"from": "critical", "to": "passing"}),
        ev("health_changed", t(2), jail="web1", check="service:jailsyncd-web1", **{"from": "passing", "to": "critical"}),
        ev("jail_skipped", t(3), level="warning", jail="web2", reason="conflict", detail="held by owner node2"),
        ev("jail_skipped", t(4), level="warning", jail="vm1", reason="source_error", detail="locked"),
    ]
    report = aggregate(lines)
    health = kinds(report, "web1")["health"]
    assert (health.count, health.first_seen, health.last_seen) == (3, dt(0), dt(2))
    assert health.transitions == (
        ("service:jailsyncd-web1: passing -> critical", 2),
        ("service:jailsyncd-web1: critical -> passing", 1),
    )
    assert kinds(report, "web2")["conflict"].detail == "held by owner node2"
    assert kinds(report, "vm1")["source_error"].count == 1


def test_first_and_last_do_not_depend_on_file_order():
    # Rotated files are often given newest first (jailsyncd.log jailsyncd.log.0.gz ...).
    newest_first = LOG[12:] + LOG[:12]
    a, b = aggregate(LOG), aggregate(newest_first)
    assert kinds(a, "web1")["changed"] == kinds(b, "web1")["changed"]
    assert kinds(b, "web1")["missing"].first_seen == dt(0, 1)


def test_totals():
    totals = aggregate(LOG + ["not json"]).totals
    assert totals.lines_read == len(LOG) + 1
    assert totals.events_used == len(LOG)
    assert totals.lines_skipped == 1
    assert totals.cycles == 4 and totals.failed_cycles == 1
    assert (totals.first_event, totals.last_event) == (dt(0, 1), dt(3))


# -- skipped lines ---------------------------------------------------------------------


GARBAGE = [
    "",
    "hello world",
    "{not json at all",
    '{"event": "drift_detected", "jail": "x", "timestamp": "2026-11-27T19:00:00Z"',  # truncated
    "\x00\x01\ufffd\ufffd{\ufffd",
    "[1, 2, 3]",
    '[{"event": "drift_detected", "kind": "missing", "jail": "x", "timestamp": "2026-11-27T19:00:00Z"}]',
    '"just a string"',
    "[" * 100_000,
    '{"level": "info", "timestamp": "2026-11-27T19:00:00Z"}',
    '{"event": 42, "timestamp": "2026-11-27T19:00:00Z"}',
    ev("jail_note", t(0), jail="web_1", kind="name_collision", detail="..."),
    ev("daemon_started", t(0), pid=1),
    ev("some_future_event", t(0), jail="web1"),
    ev("drift_detected", "yesterday", kind="missing", jail="x"),
    json.dumps({"event": "drift_detected", "kind": "missing", "jail": "x"}),  # no timestamp
    ev("drift_detected", t(0), kind="missing", jail=None),
    ev("service_registered", t(0), jail=["x"]),
    ev("deregistrations_refused", t(0), count=1, jails="x"),
]


def test_garbage_lines_are_skipped_and_counted_by_reason():
    report = aggregate(GARBAGE)
    assert report.jails == ()
    totals = report.totals
    assert dict(totals.skipped) == {"not_json": 9, "no_event": 2, "other_event": 3, "malformed": 5}
    assert totals.lines_skipped == len(GARBAGE) == totals.lines_read
    assert totals.events_used == 0


def test_garbage_between_events_does_not_disturb_them():
    mixed = [line for pair in itertools.zip_longest(GARBAGE, LOG) for line in pair if line is not None]
    report = aggregate(mixed)
    assert report == aggregate(LOG + GARBAGE)
    assert kinds(report, "old1")["orphan"].count == 1
    assert report.totals.events_used == len(LOG)
    assert report.totals.lines_skipped == len(GARBAGE)


@pytest.mark.parametrize(
    "prefix",
    [
        "Nov 27 19:00:01 host1 jailsyncd[123]: ",
        "<30>Nov 27 19:00:01 host1 jailsyncd[123]: ",
        "2026-11-27T19:00:01.123+00:00 host1 jailsyncd 123 - - ",
    ],
)
def test_syslog_prefixed_lines_are_read(prefix):
    report = aggregate(prefix + line for line in LOG)
    assert kinds(report, "web1")["changed"].count == 2
    assert report.totals.lines_skipped == 0


def test_parse_line_rejects_trailing_junk():
    assert parse_line(LOG[0])[0] == "ok"
    assert parse_line(LOG[0] + "  ")[0] == "ok"
    assert parse_line(LOG[0] + " }")[0] == "not_json"


# -- filters ------------------------------------------------------------------------------


def test_since_filters_by_timestamp():
    report = aggregate(LOG, since=dt(1))
    web1 = kinds(report, "web1")
    assert set(web1) == {"changed"}
    assert report.jail("web1").action("registered") == 0 and report.jail("web1").action("updated") == 2
    assert report.jail("dhcp1") is None
    assert report.totals.cycles == 3  # the cycle_finished at 19:00:03 is before --since
    assert report.totals.filtered_out == 5
    assert report.totals.lines_read == report.totals.events_used + report.totals.filtered_out


def test_since_naive_datetime_is_utc():
    assert aggregate(LOG, since=datetime(2026, 11, 27, 19, 2)).totals.events_used == 4


def test_jail_filter_keeps_only_those_jails_and_all_cycles():
    report = aggregate(LOG, jails=["web1", "old1"])
    assert [j.jail for j in report.jails] == ["old1", "web1"]
    assert kinds(report, "old1")["orphan"].count == 1
    assert report.totals.cycles == 4
    assert report.totals.filtered_out == 4  # dhcp1, private, db1's drift and db1's failure


def test_jail_filter_on_a_refusal_listing_several_jails():
    line = ev("deregistrations_refused", t(0), count=2, jails=["a", "b"])
    report = aggregate([line], jails=["b"])
    assert [j.jail for j in report.jails] == ["b"]
    assert aggregate([line], jails=["c"]).totals.filtered_out == 1


def test_parse_since():
    now = datetime(2026, 11, 27, 20, 0, tzinfo=UTC)
    assert parse_since("2h", now) == now - timedelta(hours=2)
    assert parse_since("30m", now) == now - timedelta(minutes=30)
    assert parse_since("7d", now) == now - timedelta(days=7)
    assert parse_since("1h30m", now) == now - timedelta(minutes=90)
    assert parse_since("2026-11-27", now) == datetime(2026, 11, 27, tzinfo=UTC)
    assert parse_since("2026-11-27T19:00Z", now) == dt(0)
    assert parse_since("2026-11-27 21:00+02:00", now) == dt(0)
    for bad in ("", "yesterday", "2h ago", "-2h", "2026-13-01"):
        with pytest.raises(ValueError):
            parse_since(bad, now)


# -- files, stdin, errors ----------------------------------------------------------------------


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="jailsyncd")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["report", *argv])


def run_report(*argv: str, stdin: str = "") -> str:
    out = io.StringIO()
    assert run(parse(*argv), stdin=io.StringIO(stdin), stdout=out) == ExitCode.OK
    return out.getvalue()


def test_rotated_gz_and_bz2_files_are_decompressed(tmp_path: Path):
    older, middle, newest = LOG[:5], LOG[5:12], LOG[12:]
    with bz2.open(tmp_path / "jailsyncd.log.1.bz2", "wt") as fh:
        fh.write("\n".join(older) + "\n")
    with gzip.open(tmp_path / "jailsyncd.log.0.gz", "wt") as fh:
        fh.write("\n".join(middle) + "\n")
    (tmp_path / "jailsyncd.log").write_text("\n".join(newest) + "\n")
    files = [str(tmp_path / n) for n in ("jailsyncd.log", "jailsyncd.log.0.gz", "jailsyncd.log.1.bz2")]
    data = json.loads(run_report("--json", *files))
    assert data == report_as_json(aggregate(LOG))
    assert data["jails"]["web1"]["drift"]["changed"]["count"] == 2


def test_xz_is_decompressed_and_zstd_is_refused(tmp_path: Path):
    with lzma.open(tmp_path / "jailsyncd.log.2.xz", "wt") as fh:
        fh.write("\n".join(LOG) + "\n")
    assert aggregate(read_lines([tmp_path / "jailsyncd.log.2.xz"])) == aggregate(LOG)
    (tmp_path / "jailsyncd.log.3.zst").write_bytes(b"(\xb5/\xfd")
    with pytest.raises(ReportError, match="zstd"):
        aggregate(read_lines([tmp_path / "jailsyncd.log.3.zst"]))


def test_binary_garbage_in_a_file_is_skipped(tmp_path: Path):
    path = tmp_path / "jailsyncd.log"
    path.write_bytes(b"\xff\xfe\x00binary\x80\n" + "\n".join(LOG).encode() + b"\n\xc3\x28 bad utf-8\n")
    data = json.loads(run_report("--json", str(path)))
    assert data["totals"]["lines_skipped"] == 2
    assert data["totals"]["events_used"] == len(LOG)


def test_stdin_is_read_when_no_file_is_given():
    data = json.loads(run_report("--json", stdin="\n".join(LOG) + "\n"))
    assert data["totals"]["events_used"] == len(LOG)


def test_stdin_bytes_that_are_not_utf8_are_replaced():
    raw = io.TextIOWrapper(io.BytesIO(b"\xff\xfe garbage\n" + LOG[0].encode() + b"\n"), encoding="utf-8")
    report = aggregate(read_lines([], stdin=raw))
    assert report.totals.lines_skipped == 1 and report.totals.events_used == 1


def test_missing_file_is_a_report_error_naming_it_after_the_rest_is_reported(tmp_path: Path):
    present = tmp_path / "jailsyncd.log"
    present.write_text(LOG[0] + "\n")
    missing = tmp_path / "jailsyncd.log.0.gz"
    out = io.StringIO()
    with pytest.raises(ReportError) as info:
        run(parse("--json", str(present), str(missing)), stdin=io.StringIO(), stdout=out)
    assert str(missing) in str(info.value)
    assert isinstance(info.value, JailsyncdError) and info.value.exit_code == ExitCode.SOURCE_UNAVAILABLE == 66
    data = json.loads(out.getvalue())  # the readable file is still reported
    assert data["totals"]["events_used"] == 1
    assert data["totals"]["unreadable"] == [{"file": str(missing), "error": "log file not found"}]


def test_corrupt_compressed_file_is_a_report_error(tmp_path: Path):
    bad = tmp_path / "jailsyncd.log.0.gz"
    bad.write_bytes(b"this is not gzip\n")
    truncated = tmp_path / "jailsyncd.log.1.bz2"
    truncated.write_bytes(bz2.compress(("\n".join(LOG) + "\n").encode())[:-20])
    for path in (bad, truncated):
        with pytest.raises(ReportError, match=str(path)):
            aggregate(read_lines([path]))


def test_directory_is_a_report_error(tmp_path: Path):
    with pytest.raises(ReportError, match=str(tmp_path)):
        aggregate(read_lines([tmp_path]))


# -- command line and output --------------------------------------------------------------------


def test_options_are_parsed():
    args = parse("--since", "2026-11-27T19:01:00Z", "--jail", "web1", "--jail", "db1", "--json", "a.log", "b.log.gz")
    assert args.since == "2026-11-27T19:01:00Z"  # parsed by run (one-line errors)
    assert args.jails == ["web1", "db1"]
    assert args.json is True
    assert args.logfiles == ["a.log", "b.log.gz"]
    defaults = parse()
    assert (defaults.since, defaults.jails, defaults.json, defaults.logfiles) == (None, None, False, [])


def test_bad_since_is_a_usage_error():
    out = io.StringIO()
    with pytest.raises(ReportUsageError, match="--since") as info:
        run(parse("--since", "last tuesday"), stdin=io.StringIO(LOG[0]), stdout=out)
    assert info.value.exit_code == ExitCode.USAGE == 2
    assert out.getvalue() == ""


def test_json_output_shape(tmp_path: Path):
    path = tmp_path / "jailsyncd.log"
    path.write_text("\n".join(LOG + ["garbage"]) + "\n")
    data = json.loads(run_report("--json", str(path)))
    assert set(data) == {"jails", "totals"}
    assert list(data["jails"]) == ["db1", "dhcp1", "old1", "private", "web1"]
    assert data["jails"]["web1"] == {
        "drift": {
            "missing": {"count": 1, "first_seen": "2026-11-27T19:00:01Z", "last_seen": "2026-11-27T19:00:01Z"},
            "changed": {
                "count": 2,
                "first_seen": "2026-11-27T19:01:00Z",
                "last_seen": "2026-11-27T19:02:00Z",
                "fields": {"address": 1, "tagged_addresses": 1, "tags": 1},
            },
        },
        "actions": {"registered": 1, "updated": 2, "deregistered": 0, "failed": 0, "refused": 0},
        "last_error": None,
    }
    assert data["jails"]["dhcp1"]["drift"]["unaddressable"]["detail"] == "ip4_addr DHCP has no address"
    assert data["totals"] == {
        "lines_read": len(LOG) + 1,
        "events_used": len(LOG),
        "lines_skipped": 1,
        "skipped": {"not_json": 1, "no_event": 0, "other_event": 0, "malformed": 0},
        "filtered_out": 0,
        "cycles": 4,
        "failed_cycles": 1,
        "first_event": "2026-11-27T19:00:01Z",
        "last_event": "2026-11-27T19:03:00Z",
        "unreadable": [],
    }


def test_json_output_with_filters(tmp_path: Path):
    path = tmp_path / "jailsyncd.log"
    path.write_text("\n".join(LOG) + "\n")
    data = json.loads(run_report("--json", "--since", "2026-11-27T19:01:00Z", "--jail", "web1", str(path)))
    assert list(data["jails"]) == ["web1"]
    assert list(data["jails"]["web1"]["drift"]) == ["changed"]


def test_text_output_is_a_table_per_jail_sorted_by_name():
    text = run_report(stdin="\n".join(LOG) + "\nnot json\n")
    jail_headers = [line for line in text.splitlines() if line and not line.startswith(" ") and ":" not in line]
    assert jail_headers == ["db1", "dhcp1", "old1", "private", "web1"]
    web1 = text[text.index("\nweb1\n"):]
    assert "changed" in web1 and "2026-11-27 19:01:00" in web1 and "2026-11-27 19:02:00" in web1
    assert "fields: address x1, tagged_addresses x1, tags x1" in web1
    assert "actions: registered 1, updated 2, deregistered 0, failed 0, refused 0" in web1
    assert "opted_out (info)" in text
    assert "last error: Consul rejected" in text
    assert f"totals: {len(LOG) + 1} lines read, {len(LOG)} events used, 1 lines skipped (not json 1), 0 filtered out; 4 cycles, 1 failed" in text


def test_text_output_escapes_control_characters_from_the_log():
    text = report_as_text(aggregate([ev("drift_detected", t(0), kind="missing", jail="evil\x1b[2J\nname")]))
    assert "\x1b" not in text and "evil\\x1b[2J\\x0aname" in text


def test_run_writes_to_sys_stdout_at_call_time(capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO(LOG[0] + "\n"))
    assert run(parse("--json")) == 0
    assert json.loads(capsys.readouterr().out)["totals"]["events_used"] == 1


def test_text_output_when_nothing_matches():
    assert "no drift or actions" in run_report(stdin="")


# -- the real log format --------------------------------------------------------------------------




# -- issue 10 item 11: bad --since values and unreadable rotated logs ------------------------------


@pytest.mark.parametrize(
    "since",
    [
        "99999999d",  # the example: before the year 1
        "999999999999999999999999w",  # too large for a timedelta at all
        "1" * 5000 + "s",  # more digits than int() accepts
        "0001-01-01T00:00:00+01:00",  # a valid ISO time whose UTC equivalent is before the year 1
        "9999-12-31T23:00:00-05:00",  # ... or after the year 9999
        "2026-13-01",
        "last tuesday",
        "",
    ],
)
def test_every_bad_since_is_one_line_exit_2_without_traceback(since, tmp_path: Path, capsys):
    from jailsyncd.cli import main

    path = tmp_path / "jailsyncd.log"
    path.write_text("\n".join(LOG) + "\n")
    assert main(["report", "--since", since, str(path)]) == ExitCode.USAGE == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert len(captured.err.splitlines()) == 1, captured.err
    assert "--since" in captured.err and "Traceback" not in captured.err
    assert captured.err.startswith("jailsyncd: ")


def test_parse_since_overflow_is_a_value_error():
    now = datetime(2026, 11, 27, 20, 0, tzinfo=UTC)
    for bad in ("99999999d", "999999999999999999999999w", "0001-01-01T00:00:00+01:00"):
        with pytest.raises(ValueError, match="--since"):
            parse_since(bad, now)
    # The limits themselves still work: the earliest representable instant.
    assert parse_since("0001-01-01T00:00:00Z", now) == datetime(1, 1, 1, tzinfo=UTC)


def test_log_timestamps_out_of_range_are_malformed_not_fatal():
    lines = [
        ev("drift_detected", "0001-01-01T00:00:00+01:00", kind="missing", jail="x"),
        ev("drift_detected", "9999-12-31T23:00:00-05:00", kind="missing", jail="x"),
        LOG[0],
    ]
    report = aggregate(lines)
    assert dict(report.totals.skipped)["malformed"] == 2
    assert report.totals.events_used == 1


def _rotated_set(tmp_path: Path) -> list[Path]:
    """newsyslog's layout: the live file, then .0.gz, .1.gz ... (older)."""
    live = tmp_path / "jailsyncd.log"
    live.write_text("\n".join(LOG[12:]) + "\n")
    middle = tmp_path / "jailsyncd.log.0.gz"
    with gzip.open(middle, "wt") as fh:
        fh.write("\n".join(LOG[5:12]) + "\n")
    oldest = tmp_path / "jailsyncd.log.1.gz"
    with gzip.open(oldest, "wt") as fh:
        fh.write("\n".join(LOG[:5]) + "\n")
    return [live, middle, oldest]


def test_one_truncated_gz_reports_the_rest_names_the_file_and_exits_66(tmp_path: Path, capsys):
    from jailsyncd.cli import main

    live, middle, oldest = _rotated_set(tmp_path)
    middle.write_bytes(middle.read_bytes()[:-12])  # cut like a full disk or an interrupted copy
    assert main(["report", "--json", str(live), str(middle), str(oldest)]) == ExitCode.SOURCE_UNAVAILABLE == 66
    captured = capsys.readouterr()
    data = json.loads(captured.out)
    # The other two files are fully reported: web1's registration (oldest) and the last update (live).
    assert data["jails"]["web1"]["actions"]["registered"] == 1
    assert data["jails"]["web1"]["drift"]["changed"]["count"] >= 1
    assert data["totals"]["cycles"] >= 2
    assert [u["file"] for u in data["totals"]["unreadable"]] == [str(middle)]
    err = captured.err.splitlines()
    assert len(err) == 1 and f"{middle}: corrupt or truncated" in err[0] and f"{live}:" not in err[0] and "Traceback" not in captured.err


def test_missing_and_unreadable_files_are_listed_and_the_rest_reported(tmp_path: Path, capsys):
    from jailsyncd.cli import main

    live, middle, oldest = _rotated_set(tmp_path)
    missing = tmp_path / "jailsyncd.log.7.gz"
    garbage = tmp_path / "jailsyncd.log.2.gz"
    garbage.write_bytes(b"not gzip at all\n")
    assert main(["report", str(live), str(missing), str(middle), str(garbage), str(oldest)]) == 66
    captured = capsys.readouterr()
    assert "web1" in captured.out and "registered 1" in captured.out
    assert f"unreadable: {missing}" in captured.out and f"unreadable: {garbage}" in captured.out
    err = captured.err.splitlines()
    assert len(err) == 1 and str(missing) in err[0] and str(garbage) in err[0] and str(middle) not in err[0]


def test_unreadable_file_permission(tmp_path: Path, capsys):
    """A file the user may not read (as root, a directory stands in: open() fails the same way)."""
    import os

    from jailsyncd.cli import main

    live, middle, oldest = _rotated_set(tmp_path)
    if os.geteuid() == 0:
        blocked = tmp_path / "jailsyncd.log.3"
        blocked.mkdir()
    else:
        blocked = tmp_path / "jailsyncd.log.3"
        blocked.write_text(LOG[0] + "\n")
        blocked.chmod(0)
    assert main(["report", "--json", str(live), str(blocked), str(middle), str(oldest)]) == 66
    captured = capsys.readouterr()
    assert json.loads(captured.out)["totals"]["events_used"] == len(LOG)
    assert str(blocked) in captured.err


def test_all_files_readable_exits_0_with_an_empty_unreadable_list(tmp_path: Path, capsys):
    from jailsyncd.cli import main

    assert main(["report", "--json", *map(str, _rotated_set(tmp_path))]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["totals"]["unreadable"] == [] and captured.err == ""


def test_html_page_says_which_files_it_lacks(tmp_path: Path, capsys):
    """``--html`` with one truncated rotated log: the page is written from the rest,
    exit 66 names the file, and the page itself says it is incomplete and why (a page
    is passed around without the terminal that showed the error line)."""
    from jailsyncd.cli import main

    live, middle, oldest = _rotated_set(tmp_path)
    middle.write_bytes(middle.read_bytes()[:-12])
    page = tmp_path / "drift.html"
    assert main(["report", "--html", str(page), str(live), str(middle), str(oldest)]) == ExitCode.SOURCE_UNAVAILABLE
    assert f"{middle}: corrupt or truncated" in capsys.readouterr().err
    html = page.read_text()
    assert 'id="unreadable"' in html and "Incomplete" in html and f"{middle}: corrupt or truncated" in html
    assert main(["report", "--html", str(page), str(live), str(oldest)]) == ExitCode.OK
    assert 'id="unreadable"' not in page.read_text()
