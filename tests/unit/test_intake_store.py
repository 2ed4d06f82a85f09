"""Contract tests of the intake's store: the records it hands out carry every column of the
received and study_progress rows they stand for (a second database engine returns other row
objects; the callers only ever see these records)."""

from __future__ import annotations

from dataclasses import asdict, fields
from pathlib import Path

import pytest

from orthanc_plugin.app import all_migrations
from orthanc_plugin.audit.tables import SCHEMA as AUDIT_SCHEMA
from orthanc_plugin.db import META_SCHEMA, Database
from orthanc_plugin.jobs import intake_store as store
from orthanc_plugin.jobs.tables import SCHEMA as JOBS_SCHEMA
from orthanc_plugin.plans import store as plans_store
from orthanc_plugin.plans.tables import SCHEMA as PLANS_SCHEMA

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
def db(tmp_path: Path) -> Database:
    database = Database(tmp_path / "gateway.sqlite",
                        [META_SCHEMA, AUDIT_SCHEMA, JOBS_SCHEMA, PLANS_SCHEMA])
    database.migrate(all_migrations())
    return database


def _columns(db: Database, table: str) -> list[str]:
    return [row["name"] for row in db.query(f"PRAGMA table_info({table})")]


def _insert(db: Database, values: dict[str, object]) -> int:
    with db.transaction() as connection:
        seq = connection.execute(
            f"INSERT INTO received({', '.join(values)}) VALUES({', '.join('?' * len(values))})",
            tuple(values.values())).lastrowid
    assert seq is not None
    return seq


def test_a_received_record_has_every_column_and_comes_back_whole(db: Database) -> None:
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


def test_a_new_row_is_what_the_note_told(db: Database) -> None:
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


def test_a_study_with_new_instances_carries_its_progress(db: Database) -> None:
    _insert(db, DESCRIBED)
    with db.transaction() as connection:
        store.signal_stable(connection, "study-1")
    (progress,) = store.studies_with_new_instances(db)
    assert {field.name for field in fields(store.StudyProgress)} == set(
        _columns(db, "study_progress"))
    assert (progress.study_id, progress.stable_signalled, progress.stable_done_seq) == (
        "study-1", 1, 0)
    assert progress.last_received_at > 0


def test_a_dry_run_description_fills_every_other_column() -> None:
    description = {key: value for key, value in DESCRIBED.items()
                   if key not in ("instance_id", "received_at", "state", "instance_rules_done")}
    record = store.Received.described_in_memory("orthanc-9", description)
    assert asdict(record) == {**description, "seq": 0, "instance_id": "orthanc-9",
                              "received_at": "", "state": "ready", "instance_rules_done": 0}
