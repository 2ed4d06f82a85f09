"""The audit's stores (audit/recorder.py, counts.py, received.py, queries.py) and the queue's
records of what the gateway stored itself and what was sent once (jobs/own_output.py, ledger.py),
on both engines (SQLite, then a real PostgreSQL: conftest's make_database): a transfer row names
its job's study as the job knows it now and its log line is written once, the totals and the
audit's views read the same on both, and what differs between the engines (no rowid, no SUM of a
comparison, LIKE's case, an integer compared with a text) gives SQLite's answers on PostgreSQL."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from orthanc_plugin.audit import counts, queries, received
from orthanc_plugin.audit.metrics import Metrics
from orthanc_plugin.audit.recorder import LOG_AWAITS_DESCRIPTION, AuditRecorder
from orthanc_plugin.audit.tables import SCHEMA as AUDIT_SCHEMA
from orthanc_plugin.audit.translog import TransactionLog
from orthanc_plugin.db_engine import DbConnection, StateDatabase
from orthanc_plugin.forwarding.tables import SCHEMA as FORWARDING_SCHEMA
from orthanc_plugin.jobs import ledger
from orthanc_plugin.jobs.own_output import (
    GATEWAY_SOURCE,
    note_own_output,
    orthanc_instance_id,
    own_output_source,
    store_own_instance,
)
from orthanc_plugin.jobs.own_output import SCHEMA as OWN_OUTPUT_SCHEMA
from orthanc_plugin.jobs.records import Job
from orthanc_plugin.jobs.tables import SCHEMA as JOBS_SCHEMA
from tests.conftest import MakeDatabase

STAMP = "2026-12-07T10:00:00.000+00:00"


@pytest.fixture
def db(make_database: MakeDatabase) -> StateDatabase:
    return make_database([AUDIT_SCHEMA, JOBS_SCHEMA, FORWARDING_SCHEMA, OWN_OUTPUT_SCHEMA])


class Counted:
    def __init__(self) -> None:
        self.values: dict[str, float] = {}

    def __call__(self, name: str, value: float) -> None:
        self.values[name] = value


@pytest.fixture
def counted() -> Counted:
    return Counted()


@pytest.fixture
def recorder(db: StateDatabase, tmp_path: Path, counted: Counted) -> AuditRecorder:
    return AuditRecorder(db, TransactionLog(tmp_path / "logs"), Metrics(counted))


def log_text(recorder: AuditRecorder) -> str:
    return "".join(path.read_text(encoding="utf-8")
                   for path in sorted(recorder.log.folder.glob("*.log")))


def add_job(connection: DbConnection, *, rule: str = "r", target: str = "PACS",
            state: str = "pending", patient: str | None = None, study: str | None = None,
            awaits: int = 0) -> Job:
    (row,) = connection.execute(
        "INSERT INTO jobs(idempotency_key, rule, action, trigger, level, resource_id, target,"
        " state, created_at, updated_at, awaits_description, patient_id, study_uid,"
        " calling_aet, remote_ip)"
        " VALUES(?, ?, 'forward', 'instance', 'instance', 'i1', ?, ?, ?, ?, ?, ?, ?, 'TPS',"
        " '10.0.0.7') RETURNING *",
        (uuid.uuid4().hex, rule, target, state, STAMP, STAMP, awaits, patient, study)).fetchall()
    return Job.of_row(row)


def insert_transfer(connection: DbConnection, job: Job, status: str = "success", *,
                    instances: int = 1, bytes_sent: int = 10, error: str | None = None,
                    started_at: str = STAMP) -> int:
    return AuditRecorder.insert_transfer(
        connection, job=job, attempt=1, status=status, instances=instances,
        bytes_sent=bytes_sent, started_at=started_at, error=error, orthanc_job=None,
        writer="node-a/1-1:11")


# -- the recorder --------------------------------------------------------------------------------
def test_a_transfer_row_names_the_study_its_job_holds_now_and_is_logged_once(
        db: StateDatabase, recorder: AuditRecorder, counted: Counted) -> None:
    with db.transaction() as connection:
        stale = add_job(connection)          # as a worker read it at its claim: no study yet
        connection.execute("UPDATE jobs SET patient_id='P1', study_uid='S1' WHERE id=?",
                           (stale.id,))
        first = insert_transfer(connection, stale)
        second = insert_transfer(connection, stale, "failed", error="association refused")
        # A job pruned meanwhile: the row keeps what the caller's record says.
        gone = Job(**{**stale.__dict__, "id": stale.id + 1000, "patient_id": "P9",
                      "study_uid": "S9"})
        third = insert_transfer(connection, gone)
    assert 0 < first < second < third
    rows = {row["id"]: row for row in db.query("SELECT * FROM transfers")}
    assert [(rows[i]["patient_id"], rows[i]["study_uid"], rows[i]["logged"])
            for i in (first, second, third)] == [("P1", "S1", 0), ("P1", "S1", 0), ("P9", "S9", 0)]

    recorder.log_transfer(second, "pending")
    text = log_text(recorder)
    assert f"transfer {second}" in text and "(will retry): association refused" in text
    assert "10.0.0.7\tTPS\tS1" in text
    assert counted.values["rtgw_transfer_failures_total"] == 1
    assert counted.values["rtgw_target_PACS_instances_sent_total"] == 1
    # The start after a crash writes the lines not marked written, and only those.
    assert recorder.log_orphaned_transfers(generation="node-a/2-2") == 2
    assert recorder.log_orphaned_transfers(generation="node-a/2-2") == 0
    assert {row["logged"] for row in db.query("SELECT logged FROM transfers")} == {1}
    assert log_text(recorder).count(f"transfer {second}") == 1


def test_a_transfer_of_a_job_waiting_for_its_description_is_logged_once_it_is_described(
        db: StateDatabase, recorder: AuditRecorder) -> None:
    with db.transaction() as connection:
        job = add_job(connection, awaits=1)
        transfer = insert_transfer(connection, job)
    recorder.log_transfer(transfer, "done")
    assert db.query("SELECT logged FROM transfers WHERE id=?", (transfer,))[0]["logged"] == (
        LOG_AWAITS_DESCRIPTION)
    assert f"transfer {transfer}" not in log_text(recorder)
    assert recorder.log_orphaned_transfers(generation="node-a/2-2") == 0    # still waiting
    with db.transaction() as connection:
        connection.execute("UPDATE jobs SET study_uid='S2', awaits_description=0 WHERE id=?",
                           (job.id,))
        connection.execute("UPDATE transfers SET study_uid='S2' WHERE id=?", (transfer,))
    assert recorder.log_orphaned_transfers(generation="node-a/2-2") == 1
    assert "\tS2\t" in log_text(recorder)


def test_events_evaluations_and_quarantine_are_written_with_what_the_job_learnt(
        db: StateDatabase, recorder: AuditRecorder, counted: Counted) -> None:
    with db.transaction() as connection:
        job = add_job(connection, patient="P1", study="S1")
    recorder.event("sent", status="success", job_id=job.id)           # study from the job
    recorder.event("sent", status="success", job_id=job.id, study_uid="S-own")
    recorder.event("started", detail="no job")
    with db.transaction() as connection:
        recorder.event("parked", job_id=job.id + 1000, connection=connection)   # no such job
        recorder.quarantine(connection, "i9", "unreadable", "detail")
        recorder.evaluation(
            connection, trigger="instance", level="instance", resource_id="i1",
            patient_id="P1", study_uid="S1", rule="r", matched=True, failed_condition=None,
            reason="matched", instances=1, new_instances=1, rules_sha256="abc",
            source={"remote_ip": "10.0.0.7", "calling_aet": "TPS"}, targets=("PACS",))
    events = [(row["event"], row["patient_id"], row["study_uid"], row["job_id"])
              for row in db.query("SELECT * FROM audit_events ORDER BY id")]
    assert events == [("sent", "P1", "S1", job.id), ("sent", "", "S-own", job.id),
                      ("started", "", "", None), ("parked", "", "", job.id + 1000),
                      ("quarantined", "", "", None)]
    (quarantined,) = db.query("SELECT instance_id, reason, detail FROM quarantine")
    assert dict(quarantined) == {"instance_id": "i9", "reason": "unreadable", "detail": "detail"}
    (evaluation,) = db.query("SELECT rule, matched, new_instances FROM evaluations")
    assert dict(evaluation) == {"rule": "r", "matched": 1, "new_instances": 1}
    assert counted.values["rtgw_rule_matches_total"] == 1
    assert "queued 1 instance(s)" in log_text(recorder)


# -- the totals ----------------------------------------------------------------------------------
def test_totals_count_failures_by_target_and_read_pruned_totals_in_any_case(
        db: StateDatabase) -> None:
    """PostgreSQL has no SUM of a comparison, and its LIKE tells letters' cases apart where
    SQLite's does not: the totals read the same on both."""
    assert counts.transfer_totals(db) == counts.TransferTotals(0, 0, 0)
    assert counts.transfer_totals_by_target(db) == {}
    with db.transaction() as connection:
        job = add_job(connection)
        other = add_job(connection, target="ARCHIVE")
        insert_transfer(connection, job, instances=3, bytes_sent=300)
        insert_transfer(connection, job, "failed", instances=0, bytes_sent=0)
        insert_transfer(connection, other, "refused", instances=1, bytes_sent=5)
        connection.executemany(
            "INSERT INTO evaluations(at, trigger, level, resource_id, rule, matched,"
            " new_instances) VALUES(?, 'instance', 'instance', 'i1', 'r', ?, ?)",
            [(STAMP, 1, 1), (STAMP, 1, 0), (STAMP, 0, 0)])
        connection.execute("INSERT INTO quarantine(at, reason) VALUES(?, 'x')", (STAMP,))
        for key, value in (("pruned_sent", "7"), ("PRUNED_Upper", "2.5"), ("other_x", "1")):
            db.set_meta(key, value, connection)
    assert counts.transfer_totals(db) == counts.TransferTotals(4, 305, 2)
    assert counts.transfer_totals_by_target(db) == {
        "PACS": counts.TransferTotals(3, 300, 1), "ARCHIVE": counts.TransferTotals(1, 5, 1)}
    assert counts.decision_totals(db) == counts.DecisionTotals(3, 1, 1)
    assert counts.meta_with_prefix(db, "pruned_") == {"sent": 7.0, "Upper": 2.5}


def test_received_keys_and_sizes_of_more_instances_than_one_query_takes(
        db: StateDatabase) -> None:
    ids = [f"i{n}" for n in range(received.CHUNK * 2 + 3)]
    with db.transaction() as connection:
        connection.executemany(
            "INSERT INTO received(instance_id, received_at, study_uid, series_uid,"
            " sop_instance_uid, sop_class_uid, file_size) VALUES(?, ?, 'st', 'se', ?, 'cls', ?)",
            [(iid, STAMP, f"1.2.{n}", n) for n, iid in enumerate(ids)])
        connection.execute("INSERT INTO received(instance_id, received_at) VALUES('new', ?)",
                           (STAMP,))
    keys = received.received_keys(db, [*ids, "new", "unknown"])
    assert set(keys) == set(ids)                   # not described yet, or never received: absent
    assert keys[ids[-1]] == received.ReceivedKeys("st", "se", f"1.2.{len(ids) - 1}", "cls")
    sizes = received.received_sizes(db, [*ids, "new", "unknown"])
    assert sizes == {**{iid: n for n, iid in enumerate(ids)}, "new": 0}


# -- the audit's views ---------------------------------------------------------------------------
def test_rows_stamped_alike_come_in_key_order_both_ways_and_pages_follow_it(
        db: StateDatabase) -> None:
    """SQLite ordered them by rowid, which PostgreSQL does not have: the table's own key."""
    with db.transaction() as connection:
        job = add_job(connection)
        ids = [insert_transfer(connection, job, started_at=stamp) for stamp in
               (STAMP, "2026-12-07T09:00:00.000+00:00", STAMP, STAMP)]
        connection.executemany(
            "INSERT INTO received(instance_id, received_at) VALUES(?, ?)",
            [(f"i{n}", STAMP) for n in range(3)])
    rows = queries.audit_rows(db, {"kind": "transfers"})
    assert [row["id"] for row in rows] == [ids[1], ids[0], ids[2], ids[3]]
    assert set(rows[0]) >= {"id", "job_id", "study_uid", "writer", "logged"}
    newest = queries.audit_rows(db, {"kind": "transfers", "order": "desc", "limit": "2",
                                     "offset": "1"})
    assert [row["id"] for row in newest] == [ids[2], ids[0]]
    since = queries.audit_rows(db, {"kind": "transfers", "since": STAMP, "status": "success"})
    assert [row["id"] for row in since] == [ids[0], ids[2], ids[3]]
    assert [row["instance_id"] for row in queries.audit_rows(
        db, {"kind": "received", "order": "desc"})] == ["i2", "i1", "i0"]
    with pytest.raises(queries.AuditQueryError, match="target: not a filter of received"):
        queries.audit_rows(db, {"kind": "received", "target": "PACS"})


@pytest.mark.parametrize(("status", "expected"), [
    ("matched", ["yes"]), ("not-matched", ["no"]), ("1", ["yes"]), (" 01 ", ["yes"]),
    ("0.0", ["no"]), ("1.5", []), ("yes", []), ("", []), ("0x1", [])])
def test_evaluations_filtered_by_status_as_sqlite_compares_an_integer_with_a_text(
        db: StateDatabase, status: str, expected: list[str]) -> None:
    """PostgreSQL refuses a text that is no number for an integer; SQLite finds no row."""
    with db.transaction() as connection:
        connection.executemany(
            "INSERT INTO evaluations(at, trigger, level, resource_id, rule, matched, reason)"
            " VALUES(?, 'instance', 'instance', 'i1', 'r', ?, ?)",
            [(STAMP, 1, "yes"), (STAMP, 0, "no")])
    rows = queries.audit_rows(db, {"kind": "evaluations", "status": status})
    assert [row["reason"] for row in rows] == expected


def test_stats_by_rule_and_target_count_transfers_jobs_parked_items_and_commitment(
        db: StateDatabase) -> None:
    with db.transaction() as connection:
        done = add_job(connection, state="done")
        parked = add_job(connection, state="dead")
        add_job(connection, rule="r2", target="ARCHIVE", state="held")
        insert_transfer(connection, done, instances=2, bytes_sent=20)
        insert_transfer(connection, parked, "failed", instances=0, bytes_sent=0,
                        error="first")
        insert_transfer(connection, parked, "refused", instances=0, bytes_sent=0,
                        error="latest")
        connection.executemany(
            "INSERT INTO job_items(job_id, rule, target, instance_id, position, state)"
            " VALUES(?, 'r', 'PACS', ?, ?, ?)",
            [(done.id, "a", 0, "sent"), (done.id, "b", 1, "sent"), (parked.id, "c", 0, "refused"),
             (parked.id, "d", 1, "sent")])
        connection.executemany(
            "INSERT INTO forward_items(job_id, instance_id, commit_state) VALUES(?, ?, ?)",
            [(done.id, "a", "committed"), (done.id, "b", "requested")])
    result: dict[str, Any] = queries.stats(db)
    assert result["by_target"]["PACS"] == {
        "sent": 2, "bytes": 20, "successful_transfers": 1, "failed": 2, "pending": 0,
        "parked": 1, "jobs_done": 1, "awaiting_approval": 0, "instances_parked": 1,
        "commitment": {"committed": 1, "waiting": 1, "not_committed": 0},
        "last_error": "latest", "last_error_at": result["by_target"]["PACS"]["last_error_at"]}
    assert result["by_rule"]["r2"] == {
        "sent": 0, "bytes": 0, "successful_transfers": 0, "failed": 0, "pending": 0,
        "parked": 0, "jobs_done": 0, "awaiting_approval": 1, "instances_parked": 0,
        "last_error": None, "last_error_at": None}


# -- own output and the ledger -------------------------------------------------------------------
class PostingHost:
    def __init__(self, answer_id: str) -> None:
        self.answer_id = answer_id
        self.posted: list[bytes] = []

    def post_bytes(self, uri: str, data: bytes) -> Any:
        self.posted.append(data)
        return {"ID": self.answer_id}


class Dataset(dict[str, str]):
    pass


def test_own_output_is_noted_once_before_it_is_stored_and_read_as_the_gateways(
        db: StateDatabase) -> None:
    note_own_output(db, ["a", "b", "a"], "deid")
    note_own_output(db, ["b", "c"], "overlay")                   # b stays deid's
    assert {row["instance_id"]: row["made_by"] for row in db.query(
        "SELECT instance_id, made_by FROM own_output")} == {"a": "deid", "b": "deid",
                                                            "c": "overlay"}
    ds = Dataset(PatientID="P", StudyInstanceUID="1", SeriesInstanceUID="2", SOPInstanceUID="3")
    expected = orthanc_instance_id("P", "1", "2", "3")
    host = PostingHost("other-id")                               # Orthanc named it otherwise
    store_own_instance(host, db, ds, b"dicom", "overlay")  # type: ignore[arg-type]
    source = own_output_source(db)
    assert (source(expected), source("other-id"), source("unknown")) == (
        GATEWAY_SOURCE, GATEWAY_SOURCE, None)
    assert host.posted == [b"dicom"]


def test_the_ledger_remembers_each_assignment_once(db: StateDatabase) -> None:
    with db.transaction() as connection:
        ledger.remember(connection, [("r", "PACS", "i1"), ("r", "PACS", "i1"),
                                     ("r", "ARCHIVE", "i1")])
        ledger.remember(connection, [("r", "PACS", "i1")])
        assert ledger.in_ledger(connection, "r", "PACS", "i1")
        assert not ledger.in_ledger(connection, "r", "PACS", "i2")
    assert db.query("SELECT COUNT(*) AS n FROM sent_ledger")[0]["n"] == 2
