"""Contract tests of the intake's store, on both engines (SQLite, then a real PostgreSQL:
conftest's make_database): the records it hands out carry every column of the received and
study_progress rows they stand for (each engine returns its own row objects; the callers only ever
see these records), an instance is noted once, and a study's plan labels come in one order."""

from __future__ import annotations

from dataclasses import asdict, fields

import pytest

from orthanc_plugin.app import all_migrations
from orthanc_plugin.audit.tables import SCHEMA as AUDIT_SCHEMA
from orthanc_plugin.db import Database
from orthanc_plugin.db_engine import POSTGRESQL, SQLITE, StateDatabase
from orthanc_plugin.jobs import intake_store as store
from orthanc_plugin.jobs.arrival_store import SCHEMA as ARRIVAL_SCHEMA
from orthanc_plugin.jobs.tables import SCHEMA as JOBS_SCHEMA
from orthanc_plugin.plans import store as plans_store
from orthanc_plugin.plans.tables import SCHEMA as PLANS_SCHEMA
from tests.conftest import MakeDatabase

# Every column of `received` a value of its own (none a default), as the description writes it.
DESCRIBED: dict[str, object] = {
    "instance_id": "orthanc-1", "received_at": "2024-05-01T10:00:00", "calling_aet": "TPS",
    "called_aet": "GATEWAY", "remote_ip": "10.0.0.7", "origin": "DicomProtocol",
    "source": "DICOM", "sop_class_uid": "1.2.840.10008.5.1.4.1.1.481.5", "modality": "RTPLAN",
    "patient_id": "P1", "study_id": "study-1", "study_uid": "1.2.3", "series_id": "series-1",
    "series_uid": "1.2.3.4", "sop_instance_uid": "1.2.3.4.5", "instance_number": 7,
    "plan_label": "PROSTATE", "file_size": 4096, "state": "ready", "instance_rules_done": 0,
}


@pytest.fixture
def db(make_database: MakeDatabase) -> StateDatabase:
    database = make_database([AUDIT_SCHEMA, JOBS_SCHEMA, ARRIVAL_SCHEMA, PLANS_SCHEMA])
    if isinstance(database, Database):
        # An SQLite file as the gateway makes it; a new PostgreSQL database has the tables whole.
        database.migrate(all_migrations())
    return database


def _columns(db: StateDatabase, table: str) -> list[str]:
    """The table's columns in their order, from each engine's catalogue."""
    if db.dialect == SQLITE:
        return [row["name"] for row in db.query(f"PRAGMA table_info({table})")]
    return [row["column_name"] for row in db.query(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = "
        "current_schema() AND table_name = ? ORDER BY ordinal_position", (table,))]


def _insert(db: StateDatabase, values: dict[str, object]) -> int:
    with db.transaction() as connection:
        (row,) = connection.execute(
            f"INSERT INTO received({', '.join(values)}) VALUES({', '.join('?' * len(values))})"
            " RETURNING seq", tuple(values.values())).fetchall()
    return int(row["seq"])


def test_a_received_record_has_every_column_and_comes_back_whole(db: StateDatabase) -> None:
    assert [field.name for field in fields(store.Received)] == _columns(db, "received")
    assert set(DESCRIBED) == set(_columns(db, "received")) - {"seq"}
    seq = _insert(db, DESCRIBED)
    expected = {"seq": seq, **DESCRIBED}
    (for_rules,) = store.rows_for_instance_rules(db, 10)
    assert asdict(for_rules) == expected
    with db.transaction() as connection:
        assert store.study_rows(connection, "study-1") == [for_rules]
        assert plans_store.member_rows(connection, ["orthanc-1"]) == [for_rules]
    assert store.study_rows(db, "study-1") == [for_rules]


def test_a_new_row_is_what_the_note_told(db: StateDatabase) -> None:
    noted = {"calling_aet": "TPS", "called_aet": "GATEWAY", "remote_ip": "10.0.0.7",
             "origin": "DicomProtocol", "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2",
             "file_size": 512}
    with db.transaction() as connection:
        store.note_received(connection, "orthanc-2", "2024-05-01T10:00:00")
        store.fill_noted(connection, "orthanc-2", noted)
    (new,) = store.new_rows(db, 10)
    assert [field.name for field in fields(store.NewReceived)] == [
        name.strip() for name in store.NEW_ROW_COLUMNS.split(",")]
    assert asdict(new) == {"seq": new.seq, "instance_id": "orthanc-2", **noted}


def test_a_study_with_new_instances_carries_its_progress(db: StateDatabase) -> None:
    seq = _insert(db, {**DESCRIBED, "state": "new"})
    with db.transaction() as connection:
        store.mark_described(connection, seq, {"study_id": "study-1"}, 1000.0)
        store.signal_stable(connection, "study-1")
    (progress,) = store.studies_with_new_instances(db)
    assert {field.name for field in fields(store.StudyProgress)} == set(
        _columns(db, "study_progress"))
    assert (progress.study_id, progress.stable_signalled, progress.stable_done_seq,
            progress.ready_seq) == ("study-1", 1, 0, seq)
    with db.transaction() as connection:
        store.stable_rules_done(connection, "study-1", seq)
    assert store.studies_with_new_instances(db) == []   # its rules saw it: not unseen any more
    assert progress.last_received_at > 0


def test_a_dry_run_description_fills_every_other_column() -> None:
    description = {key: value for key, value in DESCRIBED.items()
                   if key not in ("instance_id", "received_at", "state", "instance_rules_done")}
    record = store.Received.described_in_memory("orthanc-9", description)
    assert asdict(record) == {**description, "seq": 0, "instance_id": "orthanc-9",
                              "received_at": "", "state": "ready", "instance_rules_done": 0}


def test_an_instance_is_noted_once_however_often_it_is_told(db: StateDatabase) -> None:
    with db.transaction() as connection:
        assert store.note_received(connection, "orthanc-1", "2024-05-01T10:00:00") is True
        assert store.note_received(connection, "orthanc-1", "2024-05-01T11:00:00") is False
        store.note_many_received(connection, ["orthanc-1", "orthanc-2", "orthanc-2"],
                                 "2024-05-01T12:00:00")
    rows = db.query("SELECT instance_id, received_at FROM received ORDER BY seq")
    assert [(row["instance_id"], row["received_at"]) for row in rows] == [
        ("orthanc-1", "2024-05-01T10:00:00"), ("orthanc-2", "2024-05-01T12:00:00")]
    assert [row.instance_id for row in store.new_rows(db, 10)] == ["orthanc-1", "orthanc-2"]
    with db.transaction() as connection:
        assert store.undecided(connection, "orthanc-1")
        store.mark_instance_gone(connection, "orthanc-1")
        assert not store.undecided(connection, "orthanc-1")
    assert [row.instance_id for row in store.new_rows(db, 10)] == ["orthanc-2"]


def test_a_studys_plan_labels_come_once_each_in_code_point_order(db: StateDatabase) -> None:
    """By code point, as SQLite's BINARY collation orders them, whatever the PostgreSQL
    database's collation (a language's would put "b" before "C" and ignore the "-")."""
    if db.dialect == POSTGRESQL:
        # As in a database made with a language's collation (the test server's is C.UTF-8).
        db.execute('ALTER TABLE received ALTER COLUMN plan_label TYPE TEXT COLLATE "und-x-icu"')
    labels = ["b-boost", "C", "Ä", "a", "b-boost", "", "B"]
    for number, label in enumerate(labels):
        _insert(db, {**DESCRIBED, "instance_id": f"plan-{number}", "plan_label": label,
                     "sop_instance_uid": f"1.2.{number}"})
    _insert(db, {**DESCRIBED, "instance_id": "ct", "modality": "CT", "plan_label": "CT-only"})
    _insert(db, {**DESCRIBED, "instance_id": "new", "state": "new", "plan_label": "new"})
    with db.transaction() as connection:
        assert store.plan_labels(connection, "study-1") == ("B", "C", "a", "b-boost", "Ä")
        assert store.plan_labels(connection, "study-2") == ()


def test_describing_writes_the_row_and_the_studys_progress(db: StateDatabase) -> None:
    with db.transaction() as connection:
        store.note_received(connection, "orthanc-3", "2024-05-01T10:00:00")
    (new,) = store.new_rows(db, 10)
    info = {key: DESCRIBED[key] for key in ("source", "modality", "patient_id", "study_id",
                                            "study_uid", "series_id", "series_uid",
                                            "sop_instance_uid", "instance_number", "plan_label")}
    with db.transaction() as connection:
        store.mark_described(connection, new.seq, info, 100.0)
        store.mark_described(connection, new.seq, info, 200.0)   # the study heard from again
    (ready,) = store.rows_for_instance_rules(db, 10)
    assert (ready.state, ready.study_id, ready.instance_number) == ("ready", "study-1", 7)
    (progress,) = store.studies_with_new_instances(db)
    assert (progress.last_received_at, progress.stable_done_seq) == (200.0, 0)
    with db.transaction() as connection:
        store.mark_instance_rules_done(connection, ready.seq)
        store.stable_rules_done(connection, "study-1", ready.seq)
    assert store.rows_for_instance_rules(db, 10) == []
    assert store.studies_with_new_instances(db) == []


def test_a_study_whose_unseen_instances_were_deleted_leaves_the_index_of_unseen_studies(
        db: StateDatabase) -> None:
    """Its last described instance deleted before the stable-study rules ran: the rules see the
    rest, and nothing is left unseen; the study must not stay among the unseen for good."""
    first = _insert(db, {**DESCRIBED, "instance_id": "orthanc-a", "state": "new"})
    second = _insert(db, {**DESCRIBED, "instance_id": "orthanc-b", "state": "new"})
    with db.transaction() as connection:
        store.mark_described(connection, first, {"study_id": "study-1"}, 1000.0)
        store.mark_described(connection, second, {"study_id": "study-1"}, 1000.0)
        store.mark_instance_gone(connection, "orthanc-b")
        store.stable_rules_done(connection, "study-1", first)   # what study_rows gave the rules
    assert store.studies_with_new_instances(db) == []
    assert store.settle_studies_seen_whole(db) == 1
    (row,) = db.query("SELECT ready_seq, stable_done_seq FROM study_progress")
    assert (row["ready_seq"], row["stable_done_seq"]) == (second, second)
    assert store.settle_studies_seen_whole(db) == 0
    # A study with an instance its rules have not seen stays.
    third = _insert(db, {**DESCRIBED, "instance_id": "orthanc-c", "state": "new"})
    with db.transaction() as connection:
        store.mark_described(connection, third, {"study_id": "study-1"}, 1001.0)
    assert store.settle_studies_seen_whole(db) == 0
    assert [progress.study_id for progress in store.studies_with_new_instances(db)] == ["study-1"]
