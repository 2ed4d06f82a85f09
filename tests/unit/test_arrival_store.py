"""The arrival decisions' store (orthanc_plugin/jobs/arrival_store.py) against a real gateway
database with the real schema, on both engines (SQLite, then a real PostgreSQL: conftest's
make_database): a decision reads back as written, however many instances are asked about, an
instance's rules in one order; completing names the patient and study only where they are
missing, and reports exactly the transfers whose log line waits and the jobs that have ended."""

from __future__ import annotations

import uuid

import pytest

from orthanc_plugin.audit.recorder import LOG_AWAITS_DESCRIPTION
from orthanc_plugin.audit.tables import SCHEMA as AUDIT_SCHEMA
from orthanc_plugin.db_engine import POSTGRESQL, DbConnection, StateDatabase
from orthanc_plugin.jobs import arrival_store as store
from orthanc_plugin.jobs.arrival_store import SCHEMA as ARRIVAL_SCHEMA
from orthanc_plugin.jobs.arrival_store import ArrivalDecision
from orthanc_plugin.jobs.tables import SCHEMA as JOBS_SCHEMA
from tests.conftest import MakeDatabase

STAMP = "2024-01-01T00:00:00.000+00:00"


@pytest.fixture
def db(make_database: MakeDatabase) -> StateDatabase:
    return make_database([AUDIT_SCHEMA, JOBS_SCHEMA, ARRIVAL_SCHEMA])


def decision(instance_id: str, rule: str = "r", **changes: object) -> ArrivalDecision:
    fields: dict[str, object] = {
        "instance_id": instance_id, "rule": rule, "matched": True, "failed_condition": None,
        "reason": "calling AE matched", "new_instances": 1, "targets": ("PACS", "ARCHIVE"),
        "job_ids": (3, 4), "rules_sha256": "abc"}
    fields.update(changes)
    return ArrivalDecision(**fields)  # type: ignore[arg-type]


def test_decisions_read_back_as_written_by_instance_and_rule(db: StateDatabase) -> None:
    with db.transaction() as connection:
        store.record_decision(connection, decision("i1"), STAMP)
        store.record_decision(connection, decision("i1", "other", matched=False,
                                                   failed_condition="modality", reason="",
                                                   new_instances=0, targets=(), job_ids=()),
                              STAMP)
        store.record_decision(connection, decision("i2"), STAMP)
        # A second decision of the same rule on the same instance replaces the first.
        store.record_decision(connection, decision("i2", job_ids=(9,)), STAMP)
    with db.transaction() as connection:
        found = store.decisions_for(connection, ["i1", "i2", "unknown"])
    assert found == {
        "i1": {"r": decision("i1"),
               "other": decision("i1", "other", matched=False, failed_condition="modality",
                                 reason="", new_instances=0, targets=(), job_ids=())},
        "i2": {"r": decision("i2", job_ids=(9,))}}
    assert db.query("SELECT decided_at FROM arrival_decisions LIMIT 1")[0][0] == STAMP


def test_an_instances_rules_come_by_name_even_after_a_replaced_decision(
        db: StateDatabase) -> None:
    """The intake records an instance's decisions in this order. SQLite reads them along the
    key's index; PostgreSQL along the index in its collation's order, or in the table's order,
    where a replaced row comes last."""
    if db.dialect == POSTGRESQL:
        # As in a database made with a language's collation (the test server's is C.UTF-8).
        db.execute('ALTER TABLE arrival_decisions ALTER COLUMN rule TYPE TEXT COLLATE "und-x-icu"')
    with db.transaction() as connection:
        for rule in ("b", "a", "C", "c"):
            store.record_decision(connection, decision("i1", rule), STAMP)
    with db.transaction() as connection:
        store.record_decision(connection, decision("i1", "C", job_ids=(7,)), "later")
        store.record_decision(connection, decision("i1", "a", job_ids=(8,)), "later")
        found = store.decisions_for(connection, ["i1"])
    assert list(found["i1"]) == ["C", "a", "b", "c"]
    assert (found["i1"]["C"].job_ids, found["i1"]["a"].job_ids) == ((7,), (8,))
    assert {row["rule"]: row["decided_at"] for row in db.query(
        "SELECT rule, decided_at FROM arrival_decisions")} == {
        "a": "later", "b": STAMP, "C": "later", "c": STAMP}


def test_decisions_of_more_instances_than_one_query_takes_are_all_found(db: StateDatabase) -> None:
    ids = [f"i{n}" for n in range(store.CHUNK * 2 + 7)]
    with db.transaction() as connection:
        for instance_id in ids:
            store.record_decision(connection, decision(instance_id), STAMP)
    with db.transaction() as connection:
        assert set(store.decisions_for(connection, ids)) == set(ids)


def test_forgetting_an_instance_keeps_the_others_decisions(db: StateDatabase) -> None:
    with db.transaction() as connection:
        store.record_decision(connection, decision("i1"), STAMP)
        store.record_decision(connection, decision("i1", "other"), STAMP)
        store.record_decision(connection, decision("i2"), STAMP)
        store.forget_decisions(connection, "i1")
        assert set(store.decisions_for(connection, ["i1", "i2"])) == {"i2"}


# -- completing ----------------------------------------------------------------------------------
def add_job(connection: DbConnection, state: str = "pending", *,
            awaits: int = 1, patient: str | None = None, study: str | None = None) -> int:
    (row,) = connection.execute(
        "INSERT INTO jobs(idempotency_key, rule, action, trigger, level, resource_id, target,"
        " state, created_at, updated_at, awaits_description, patient_id, study_uid)"
        " VALUES(?, 'r', 'forward', 'instance', 'instance', 'i1', 'PACS', ?, ?, ?, ?, ?, ?)"
        " RETURNING id",
        (uuid.uuid4().hex, state, STAMP, STAMP, awaits, patient, study)).fetchall()
    return int(row["id"])


def add_transfer(connection: DbConnection, job_id: int, study: str | None = None,
                 logged: int = LOG_AWAITS_DESCRIPTION) -> int:
    (row,) = connection.execute(
        "INSERT INTO transfers(job_id, target, attempt, status, instances, bytes, started_at,"
        " ended_at, study_uid, logged) VALUES(?, 'PACS', 1, 'success', 1, 10, ?, ?, ?, ?)"
        " RETURNING id", (job_id, STAMP, STAMP, study, logged)).fetchall()
    return int(row["id"])


def test_the_description_names_patient_and_study_only_where_they_are_missing(
        db: StateDatabase) -> None:
    with db.transaction() as connection:
        waiting = add_job(connection)
        described = add_job(connection, awaits=0, patient="P0", study="S0")
        elsewhere = add_job(connection)
        blank = add_transfer(connection, waiting, study="")
        unnamed = add_transfer(connection, waiting)
        named = add_transfer(connection, waiting, study="S-old")
        other = add_transfer(connection, elsewhere)
        connection.executemany("INSERT INTO audit_events(at, event, job_id, study_uid)"
                               " VALUES(?, 'sent', ?, ?)",
                               [(STAMP, waiting, None), (STAMP, waiting, "S-old"),
                                (STAMP, elsewhere, None)])
        store.name_patient_and_study(connection, [waiting, described], "P1", "S1")
    jobs = {row["id"]: (row["patient_id"], row["study_uid"], row["awaits_description"])
            for row in db.query("SELECT * FROM jobs")}
    assert jobs == {waiting: ("P1", "S1", 0), described: ("P0", "S0", 0),
                    elsewhere: (None, None, 1)}
    transfers = {row["id"]: (row["patient_id"], row["study_uid"])
                 for row in db.query("SELECT * FROM transfers")}
    assert transfers == {blank: ("P1", "S1"), unnamed: ("P1", "S1"), named: (None, "S-old"),
                         other: (None, None)}
    events = [(row["job_id"], row["patient_id"], row["study_uid"])
              for row in db.query("SELECT * FROM audit_events ORDER BY id")]
    assert events == [(waiting, "P1", "S1"), (waiting, None, "S-old"), (elsewhere, None, None)]


def test_completing_reports_the_waiting_log_lines_and_the_ended_jobs(db: StateDatabase) -> None:
    with db.transaction() as connection:
        done = add_job(connection, "done")
        parked = add_job(connection, "dead")
        running = add_job(connection, "running")
        elsewhere = add_job(connection, "done")
        first = add_transfer(connection, done)
        add_transfer(connection, done, logged=1)                 # its line is written
        second = add_transfer(connection, parked)
        third = add_transfer(connection, running)
        add_transfer(connection, elsewhere)
    with db.transaction() as connection:
        ids = [running, parked, done]
        assert store.transfers_awaiting_description(connection, ids) == [
            (first, "done"), (second, "dead"), (third, "running")]
        assert sorted(store.settled_jobs(connection, ids)) == sorted([done, parked])
