"""The de-identification mapping, kept so a study can be re-linked by someone allowed to.

Original patient ID -> pseudonym and date offset; original UID -> new UID; original instance ->
its stored copy. Read only through the authenticated route GET /rt-gateway/deid/mappings.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from orthanc_plugin.audit.clock import now_iso
from orthanc_plugin.db import Migration
from orthanc_plugin.db_engine import DbConnection, StateDatabase
from orthanc_plugin.deid.keys import new_secret
from orthanc_plugin.deid.model import DeidResult

SECRET_KEY = "deid_secret"
# De-identification's steps since the first release (db.Migration).
MIGRATIONS = (
    Migration(5, "de-identified copies: the object's de-identification report",
              {"deid_copies": {"report": "TEXT"}}),
)
# Instance IDs per IN (...) query: well under SQLite's bound on parameters.
QUERY_CHUNK = 500

SCHEMA = """
CREATE TABLE IF NOT EXISTS deid_patients(
    original_patient_id TEXT PRIMARY KEY,
    new_patient_id TEXT NOT NULL,
    date_offset_days INTEGER,
    first_seen TEXT NOT NULL,
    last_seen TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS deid_patients_new ON deid_patients(new_patient_id);
CREATE TABLE IF NOT EXISTS deid_uids(
    original_uid TEXT PRIMARY KEY,
    new_uid TEXT NOT NULL,
    keyword TEXT,
    original_patient_id TEXT,
    first_seen TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS deid_uids_patient ON deid_uids(original_patient_id);
CREATE INDEX IF NOT EXISTS deid_uids_new ON deid_uids(new_uid);
CREATE TABLE IF NOT EXISTS deid_copies(
    original_instance_id TEXT NOT NULL,
    target TEXT NOT NULL,
    copy_instance_id TEXT NOT NULL,
    new_sop_instance_uid TEXT NOT NULL,
    new_patient_id TEXT NOT NULL,
    job_id INTEGER,
    settings TEXT,
    stored_at TEXT NOT NULL,
    original_deleted_at TEXT,
    report TEXT,                -- JSON list: every attribute the de-identification changed
    PRIMARY KEY(original_instance_id, target)
);
CREATE INDEX IF NOT EXISTS deid_copies_copy ON deid_copies(copy_instance_id);
"""


def installation_secret(db: StateDatabase) -> str:
    """The per-installation HMAC key, created once; two threads racing keep the first one written."""
    with db.transaction() as connection:
        connection.execute(
            "INSERT INTO meta(key, value) VALUES(?, ?) ON CONFLICT DO NOTHING",
            (SECRET_KEY, new_secret())
        )
        row = connection.execute("SELECT value FROM meta WHERE key=?", (SECRET_KEY,)).fetchone()
    return str(row["value"])


def record_mapping(
    connection: DbConnection, result: DeidResult, date_offset_days: int
) -> None:
    stamp = now_iso()
    connection.execute(
        "INSERT INTO deid_patients(original_patient_id, new_patient_id, date_offset_days,"
        " first_seen, last_seen) VALUES(?,?,?,?,?) ON CONFLICT(original_patient_id)"
        " DO UPDATE SET last_seen=excluded.last_seen",
        (result.original_patient_id, result.new_patient_id, date_offset_days, stamp, stamp),
    )
    connection.executemany(
        "INSERT INTO deid_uids(original_uid, new_uid, keyword, original_patient_id,"
        " first_seen) VALUES(?,?,?,?,?) ON CONFLICT DO NOTHING",
        [(old, new, keyword, result.original_patient_id, stamp)
         for old, (new, keyword) in result.uids.items()],
    )


def mapping_for(db: StateDatabase, patient: str) -> dict[str, Any] | None:
    """The mapping of one patient, found by its original or its de-identified ID."""
    rows = db.query(
        "SELECT * FROM deid_patients WHERE original_patient_id=? OR new_patient_id=?",
        (patient, patient),
    )
    if not rows:
        return None
    row = dict(rows[0])
    uids = db.query(
        "SELECT original_uid, new_uid, keyword FROM deid_uids WHERE original_patient_id=? "
        "ORDER BY first_seen, keyword NULLS FIRST",   # SQLite's order; PostgreSQL's puts them last
        (row["original_patient_id"],),
    )
    copies = db.query(
        "SELECT original_instance_id, copy_instance_id, new_sop_instance_uid, target, stored_at,"
        " original_deleted_at, report FROM deid_copies WHERE new_patient_id=? ORDER BY stored_at",
        (row["new_patient_id"],),
    )
    row["uids"] = [dict(u) for u in uids]
    row["copies"] = [{**dict(c), "report": json.loads(c["report"] or "[]")} for c in copies]
    return row


def original_keys(db: StateDatabase, instance_ids: list[str]) -> dict[str, tuple[str, str, str, str]]:
    """Instance ID -> (PatientID, StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID) as the
    intake described it; instances not described (yet) are absent."""
    keys: dict[str, tuple[str, str, str, str]] = {}
    for start in range(0, len(instance_ids), QUERY_CHUNK):
        chunk = instance_ids[start:start + QUERY_CHUNK]
        # The state is tested here, not in SQL: with `state='ready'` there SQLite read every ready
        # row through the index by state instead of these few by their key.
        rows = db.query(
            "SELECT instance_id, patient_id, study_uid, series_uid, sop_instance_uid, state FROM "
            f"received WHERE instance_id IN ({','.join('?' * len(chunk))})", tuple(chunk))
        for row in rows:
            if row["state"] != "ready":
                continue
            keys[row["instance_id"]] = (row["patient_id"] or "", row["study_uid"] or "",
                                        row["series_uid"] or "", row["sop_instance_uid"] or "")
    return keys


@dataclass(frozen=True)
class CopyRecord:
    """One stored de-identified copy, as deid_copies keeps it (the report: the object's changes)."""

    original_instance_id: str
    target: str
    copy_instance_id: str
    new_sop_instance_uid: str
    new_patient_id: str
    job_id: int
    settings: str
    report: tuple[str, ...]


def record_copies(connection: DbConnection, copies: list[CopyRecord]) -> None:
    """In the caller's transaction; a copy made again (a replay) replaces its row whole: every
    column written again, and the original's deletion forgotten (as SQLite's INSERT OR REPLACE,
    which made a new row, did)."""
    stamp = now_iso()
    connection.executemany(
        "INSERT INTO deid_copies(original_instance_id, target, copy_instance_id,"
        " new_sop_instance_uid, new_patient_id, job_id, settings, stored_at, report)"
        " VALUES(?,?,?,?,?,?,?,?,?) ON CONFLICT(original_instance_id, target) DO UPDATE SET"
        " copy_instance_id=excluded.copy_instance_id,"
        " new_sop_instance_uid=excluded.new_sop_instance_uid,"
        " new_patient_id=excluded.new_patient_id, job_id=excluded.job_id,"
        " settings=excluded.settings, stored_at=excluded.stored_at,"
        " original_deleted_at=NULL, report=excluded.report",
        [(c.original_instance_id, c.target, c.copy_instance_id, c.new_sop_instance_uid,
          c.new_patient_id, c.job_id, c.settings, stamp, json.dumps(list(c.report)))
         for c in copies])


def mark_original_deleted(db: StateDatabase, original_instance_id: str) -> None:
    with db.transaction() as connection:
        connection.execute(
            "UPDATE deid_copies SET original_deleted_at=? WHERE original_instance_id=?",
            (now_iso(), original_instance_id))


def has_copy(db: StateDatabase, original_instance_id: str) -> bool:
    return bool(db.query("SELECT 1 FROM deid_copies WHERE original_instance_id=? LIMIT 1",
                         (original_instance_id,)))
