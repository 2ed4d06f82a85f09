"""No statement the gateway runs per instance or per intake pass reads a whole table.

The tables grow with the department's history (a year of audit is millions of rows): a statement
that scans one of them on every instance makes the gateway slower every day it runs, and on the
critical path of a relay. Measured before these indexes: every instance decided at arrival scanned
`transfers` twice and `audit_events` once, and every intake pass probed every study ever received
(bench/history.py). The test drives the real gateway on the fake Orthanc through a burst (notes,
forwards sent while it arrives, descriptions, a stable study), records every SQL statement it
executes, and asks SQLite for each one's query plan. The burst's study is also de-identified
(copies made, recorded and forwarded).
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from orthanc_plugin.db import Database
from orthanc_plugin.harvest.store import HarvestStore
from orthanc_plugin.jobs import intake_store
from tests.support.fake_orthanc import FakeOrthanc
from tests.support.gateway_site import GatewaySite, build_site
from tests.support.rtset import make_rt_set
from tests.unit.test_migrations import MIGRATIONS, SCHEMAS

RULES = """
rules:
  - name: from the TPS
    on: instance
    match: {calling_aet: TPS}
    actions: [{forward: [ARCHIVE]}]
  - name: plans by label
    on: instance
    match: {plan_label: {contains: ADP}}
    actions: [{forward: [PACS]}]
  - name: research copy
    on: stable-study
    match: {calling_aet: TPS}
    actions: [{anonymize: {profile: full}}, {forward: [ARCHIVE]}]
  - name: whole study
    on: stable-study
    match: {calling_aet: TPS}
    actions: [{forward: [PACS]}]
"""
# Tables that hold settings or one row per destination, worker or key, never history; and
# approvals, a row per request a person answers (thousands a year, counted by the metrics).
BOUNDED = {"meta", "sqlite_sequence", "sent_ledger_meta", "leases", "worker_heartbeats",
           "approvals"}
# A scan through a partial index reads only the rows it holds (tables.py says which few).
PARTIAL_INDEXES = {"study_progress_unseen"}
WRITES_OR_READS = re.compile(r"^\s*(SELECT|UPDATE|DELETE|INSERT|WITH|REPLACE)\b", re.IGNORECASE)


@pytest.fixture
def statements(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, str]]]:
    """(database path, expanded SQL) of every statement run on a connection opened meanwhile."""
    seen: list[tuple[str, str]] = []
    connect: Callable[..., sqlite3.Connection] = sqlite3.connect

    def traced(path: Any, *args: Any, **kwargs: Any) -> sqlite3.Connection:
        connection = connect(path, *args, **kwargs)
        connection.set_trace_callback(lambda sql: seen.append((str(path), sql)))
        return connection

    monkeypatch.setattr(sqlite3, "connect", traced)
    yield seen


def full_scans(statements: list[tuple[str, str]]) -> dict[str, str]:
    """Each statement (as run, values inlined) that reads a whole table of history -> its plan."""
    found: dict[str, str] = {}
    planners: dict[str, sqlite3.Connection] = {}
    for path, sql in statements:
        if not WRITES_OR_READS.match(sql) or sql in found:
            continue
        planner = planners.setdefault(path, sqlite3.Connection(path))
        plan = _plan(planner, sql)
        for step in plan:
            if _reads_history_by_state(step, sql):
                found[sql] = " / ".join(plan)
                continue
            match = re.match(r"SCAN (\w+)(?: AS \w+)?(?: USING (?:COVERING )?INDEX (\w+))?", step)
            if match is None or step.startswith("SCAN CONSTANT"):
                continue
            table = _table_of(planner, sql, match.group(1))
            if (table in BOUNDED or match.group(2) in PARTIAL_INDEXES
                    or table not in _tables(planner)):   # a WITH query's own rows, not a table
                continue
            found[sql] = " / ".join(plan)
    for planner in planners.values():
        planner.close()
    return found


def _reads_history_by_state(step: str, sql: str) -> bool:
    """A read through an index by state alone, for a state that history piles up in (the
    instances described, the jobs done): as long as the table, though SQLite calls it a SEARCH."""
    if not re.match(r"SEARCH \w+(?: AS \w+)? USING (?:COVERING )?INDEX \w+ \(state=\?\)$", step):
        return False
    return bool(re.search(r"\bstate\s*=\s*'(ready|done|sent|gone)'", sql))


def _plan(planner: sqlite3.Connection, sql: str) -> list[str]:
    """SQLite's plan; the gateway's own SQL functions (db.py) are stood in for by name, as a
    plan does not call them."""
    while True:
        try:
            return [row[3] for row in planner.execute("EXPLAIN QUERY PLAN " + sql)]
        except sqlite3.OperationalError as error:
            missing = re.match(r"no such function: (\w+)", str(error))
            if missing is None:
                raise
            planner.create_function(missing.group(1), -1, lambda *values: None)


def _tables(planner: sqlite3.Connection) -> set[str]:
    return {row[0] for row in planner.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def _table_of(planner: sqlite3.Connection, sql: str, name: str) -> str:
    """The table an alias in the plan stands for (`FROM transfers t` plans as `SCAN t`)."""
    tables = _tables(planner)
    if name in tables:
        return name
    aliased = re.search(rf"\b(\w+)\s+(?:AS\s+)?{name}\b", sql, re.IGNORECASE)
    return aliased.group(1) if aliased and aliased.group(1) in tables else name


def sent_plan(tmp_path: Path, patient_id: str,
              settings: dict[str, Any] | None = None) -> tuple[GatewaySite, list[str]]:
    """A gateway on the fake Orthanc that took in and forwarded one small RT plan."""
    orthanc = FakeOrthanc({"ARCHIVE": "ARCHIVE_AE", "PACS": "PACS_AE"})
    site = build_site(tmp_path, RULES, orthanc, settings)
    rtset = make_rt_set(patient_id, n_slices=2)
    ids = [orthanc.receive(ds, calling_aet="TPS") for ds in rtset.all()]
    site.note_stored(*ids)
    site.take_in()
    site.run_queue()
    return site, ids


def test_a_burst_with_forwards_and_a_stable_study_reads_no_table_whole(
        tmp_path: Path, statements: list[tuple[str, str]]) -> None:
    orthanc = FakeOrthanc({"ARCHIVE": "ARCHIVE_AE", "PACS": "PACS_AE"})
    site = build_site(tmp_path, RULES, orthanc)
    # History: what an earlier day left in the tables (every statement is planned against it).
    for day in range(3):
        earlier = make_rt_set(f"P-EARLIER-{day}", n_slices=2)
        ids = [orthanc.receive(ds, calling_aet="TPS") for ds in earlier.all()]
        site.note_stored(*ids)
        site.take_in()
        site.run_queue()
    statements.clear()

    rtset = make_rt_set("P-BURST", "Burst^Bea", n_slices=4)
    ids = [orthanc.receive(ds, calling_aet="TPS") for ds in rtset.all()]
    site.note_stored(*ids[:3])
    site.take_in_while_arriving()
    site.run_queue()                      # sent while the burst still arrives
    site.note_stored(*ids[3:])
    site.take_in()                        # described once the notes pause; records completed
    site.run_queue()
    orthanc.mark_stable(orthanc.study_of(ids[0]))
    site.take_in()
    site.run_queue()
    ran = list(statements)

    # The burst did run what the test means to check: forwards decided at arrival and sent,
    # records completed by the description, the stable-study rules (a forward, and copies
    # de-identified and forwarded).
    assert {row["rule"] for row in site.rows("SELECT rule FROM transfers WHERE status='success'")} \
        == {"from the TPS", "plans by label", "research copy", "whole study"}
    assert site.rows("SELECT * FROM arrival_decisions") == []
    assert len(ran) > 100
    assert full_scans(ran) == {}


def test_reading_the_metrics_reads_no_table_whole_but_the_finished_jobs_once_a_minute(
        tmp_path: Path, statements: list[tuple[str, str]]) -> None:
    """The metrics are read every 2 s (in_orthanc/supervisor/metrics.py): running totals, not
    sums over the audit; only the gauge of finished jobs counts its rows, once a minute. With
    storage commitment, the instances waiting for it are counted, not every committed one."""
    site, ids = sent_plan(tmp_path, "P-METRICS",
                          {"Forwarding": {"StorageCommitment": {"Modalities": ["ARCHIVE"]}}})
    statements.clear()
    first = site.gateway.metrics_snapshot()
    assert set(full_scans(list(statements))) == {
        "SELECT state, COUNT(*) AS n FROM jobs GROUP BY state"}
    statements.clear()
    again = site.gateway.metrics_snapshot()
    assert full_scans(list(statements)) == {}
    assert again == first and first["rtgw_instances_sent_total"] > 0
    assert first["rtgw_instances_commit_waiting"] == len(ids)


def test_the_check_finds_a_scan_when_an_index_is_missing(
        tmp_path: Path, statements: list[tuple[str, str]]) -> None:
    """The check above could fail: without the index by job, naming a job's transfers reads
    the whole table, and the check says which statement."""
    orthanc = FakeOrthanc({"ARCHIVE": "ARCHIVE_AE", "PACS": "PACS_AE"})
    site = build_site(tmp_path, RULES, orthanc)
    with site.gateway.db.transaction() as connection:
        connection.execute("DROP INDEX transfers_job")
    statements.clear()
    rtset = make_rt_set("P-NOINDEX", n_slices=1)
    ids = [orthanc.receive(ds, calling_aet="TPS") for ds in rtset.all()]
    site.note_stored(*ids)
    site.take_in_while_arriving()
    site.run_queue()
    site.take_in()
    scans = full_scans(statements)
    assert scans and all("transfers" in sql for sql in scans)


def test_the_pages_refreshes_read_no_table_whole_but_the_queue_tabs_counts(
        tmp_path: Path, statements: list[tuple[str, str]]) -> None:
    """An open page refreshes on its own all day (web/static/app.js): the parked badge on every
    tab every 10 s, the queue tab every 2 s. The badge counts the live jobs only; the queue tab
    also counts the finished ones for its "Done (n)" (one read of the index by state)."""
    site, _ = sent_plan(tmp_path, "P-PAGE")

    def refresh(query: dict[str, str]) -> tuple[dict[str, str], dict[str, object]]:
        statements.clear()
        response = site.gateway.router.dispatch("GET", "/rt-gateway/queue", query, b"")
        assert response.status == 200
        return full_scans(list(statements)), json.loads(response.body)

    badge_scans, badge = refresh({"view": "parked", "per_page": "1", "counts": "live"})
    assert badge_scans == {}
    assert "done" not in badge["counts"] and badge["targets"] == ["ARCHIVE", "PACS"]
    tab_scans, tab = refresh({"view": "active", "per_page": "25"})
    assert set(tab_scans) == {"SELECT state, COUNT(*) AS n FROM jobs GROUP BY state"}
    assert tab["counts"]["done"] == len(site.jobs()) and tab["targets"] == badge["targets"]


def test_a_monitors_health_poll_reads_no_table_whole(
        tmp_path: Path, statements: list[tuple[str, str]]) -> None:
    """A monitor (or Docker's health check) polls /health all day: it reports the live jobs and
    the oldest waiting one, and counts none of the finished jobs that make most of the table."""
    site, _ = sent_plan(tmp_path, "P-HEALTH")
    assert any(job["state"] == "done" for job in site.jobs())
    statements.clear()
    response = site.gateway.router.dispatch("GET", "/rt-gateway/health", {}, b"")
    assert [sql for _, sql in statements if "FROM jobs" in sql], "the poll read no jobs"
    assert full_scans(list(statements)) == {}
    report = json.loads(response.body)
    assert report["queue"]["pending"] == 0 and report["queue"]["parked"] == 0


def test_a_retention_round_and_a_starts_recovery_read_no_table_whole(
        tmp_path: Path, statements: list[tuple[str, str]]) -> None:
    """Retention runs every hour; most rounds find nothing old enough, and reading every row to
    find that grew with the table (and with a backlog, once per batch of 500). A start, or a
    worker's crash, looks for transfer rows whose log line was not written."""
    site, ids = sent_plan(tmp_path, "P-OLD")
    jobs = len(site.jobs())
    statements.clear()
    nothing_old = site.gateway.retention.prune(now=time.time())
    site.restart_workers()
    everything_old = site.gateway.retention.prune(now=time.time() + 365 * 86400)
    ran = list(statements)

    assert not any(nothing_old.values())
    assert everything_old["jobs"] == jobs >= len(ids)
    assert min(everything_old[kind] for kind in ("transfers", "evaluations")) > 0
    assert site.rows("SELECT 1 FROM jobs") == site.rows("SELECT 1 FROM transfers") == []
    assert full_scans(ran) == {}


def test_the_harvest_lease_rounds_search_for_orphaned_zips_reads_no_table_whole(
        tmp_path: Path, statements: list[tuple[str, str]]) -> None:
    """Every lease round asks which ZIP claims ran out; a harvest has an item per series."""
    db = Database(tmp_path / "gateway.sqlite", SCHEMAS)
    db.migrate(MIGRATIONS)
    store = HarvestStore(db, "node-a/1-1:1")
    statements.clear()
    assert store.orphaned_zips() == []
    assert statements and full_scans(list(statements)) == {}


def test_studies_seen_whole_leave_the_index_of_unseen_ones_through_it(
        tmp_path: Path, statements: list[tuple[str, str]]) -> None:
    """The intake's minutely settling of studies whose unseen instances were deleted."""
    db = Database(tmp_path / "gateway.sqlite", SCHEMAS)
    db.migrate(MIGRATIONS)
    statements.clear()
    assert intake_store.settle_studies_seen_whole(db) == 0
    assert statements and full_scans(list(statements)) == {}
