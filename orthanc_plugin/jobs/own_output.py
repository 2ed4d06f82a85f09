"""Instances the gateway stores itself (de-identified copies, overlay series) are its own output.

The workers store over Orthanc's REST API, so Orthanc records their origin as `RestApi`, the same
as any REST client's. The gateway notes the Orthanc ID it expects before it stores, so the intake,
which may see the instance at once, knows it as `source: GATEWAY` and rules skip it (no loops).
"""

from __future__ import annotations

import hashlib
from collections.abc import Container, Iterable
from typing import Any

from orthanc_plugin.audit.clock import now_iso
from orthanc_plugin.db_engine import StateDatabase
from orthanc_plugin.ports import Host

SCHEMA = """
CREATE TABLE IF NOT EXISTS own_output(
    instance_id TEXT PRIMARY KEY, made_by TEXT NOT NULL, at TEXT NOT NULL
);
-- Retention's oldest rows (retention_store.delete_own_outputs_before).
CREATE INDEX IF NOT EXISTS own_output_at ON own_output(at);
"""
GATEWAY_SOURCE = "GATEWAY"


def orthanc_instance_id(patient_id: str, study_uid: str, series_uid: str, sop_uid: str) -> str:
    """Orthanc's instance identifier: SHA-1 of the four keys, as five groups of eight hex digits."""
    digest = hashlib.sha1(
        "|".join((patient_id, study_uid, series_uid, sop_uid)).encode(), usedforsecurity=False
    ).hexdigest()
    return "-".join(digest[i : i + 8] for i in range(0, 40, 8))


def note_own_output(db: StateDatabase, instance_ids: Iterable[str], made_by: str) -> None:
    """Notes Orthanc IDs the gateway is about to store, in one transaction.

    Why a batch: a write transaction per copy, taken by several copy threads while the intake
    writes too, waited on SQLite's lock (bench/deid: a tenth of the copy threads' time). An
    executor that knows its copies' keys before it makes them notes them all at once."""
    stamp = now_iso()
    with db.transaction() as connection:
        connection.executemany(
            "INSERT INTO own_output(instance_id, made_by, at) VALUES(?,?,?) "
            "ON CONFLICT DO NOTHING",
            [(instance_id, made_by, stamp) for instance_id in instance_ids])


def store_own_instance(host: Host, db: StateDatabase, ds: Any, data: bytes, made_by: str,
                       noted: Container[str] = ()) -> Any:
    """POST /instances, noted first as the gateway's own output (unless among `noted`, the IDs
    the caller noted beforehand); returns Orthanc's answer."""
    keys = [str(ds.get(keyword, "") or "").strip() for keyword in
            ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")]
    expected = orthanc_instance_id(*keys)
    if expected not in noted:
        note_own_output(db, [expected], made_by)
    answer = host.post_bytes("/instances", data)
    if isinstance(answer, dict) and answer.get("ID") and answer["ID"] != expected:
        note_own_output(db, [str(answer["ID"])], made_by)
    return answer


def own_output_source(db: StateDatabase) -> Any:
    """An intake source override: GATEWAY for what the gateway stored itself."""
    def source(instance_id: str) -> str | None:
        rows = db.query("SELECT 1 FROM own_output WHERE instance_id=?", (instance_id,))
        return GATEWAY_SOURCE if rows else None

    return source
