"""Instances the gateway stores itself (de-identified copies, overlay series) are its own output.

The workers store over Orthanc's REST API, so Orthanc records their origin as `RestApi`, the same
as any REST client's. The gateway notes the Orthanc ID it expects before it stores, so the intake,
which may see the instance at once, knows it as `source: GATEWAY` and rules skip it (no loops).
"""

from __future__ import annotations

import hashlib
from typing import Any

from orthanc_plugin.audit.clock import now_iso
from orthanc_plugin.db import Database
from orthanc_plugin.ports import Host

SCHEMA = """
CREATE TABLE IF NOT EXISTS own_output(
    instance_id TEXT PRIMARY KEY, made_by TEXT NOT NULL, at TEXT NOT NULL
);
"""
GATEWAY_SOURCE = "GATEWAY"


def orthanc_instance_id(patient_id: str, study_uid: str, series_uid: str, sop_uid: str) -> str:
    """Orthanc's instance identifier: SHA-1 of the four keys, as five groups of eight hex digits."""
    digest = hashlib.sha1(
        "|".join((patient_id, study_uid, series_uid, sop_uid)).encode(), usedforsecurity=False
    ).hexdigest()
    return "-".join(digest[i : i + 8] for i in range(0, 40, 8))


def _note(db: Database, instance_id: str, made_by: str) -> None:
    with db.transaction() as connection:
        connection.execute(
            "INSERT OR IGNORE INTO own_output(instance_id, made_by, at) VALUES(?,?,?)",
            (instance_id, made_by, now_iso()))


def store_own_instance(host: Host, db: Database, ds: Any, data: bytes, made_by: str) -> Any:
    """POST /instances, noted first as the gateway's own output; returns Orthanc's answer."""
    keys = [str(ds.get(keyword, "") or "").strip() for keyword in
            ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")]
    expected = orthanc_instance_id(*keys)
    _note(db, expected, made_by)
    answer = host.post_bytes("/instances", data)
    if isinstance(answer, dict) and answer.get("ID") and answer["ID"] != expected:
        _note(db, str(answer["ID"]), made_by)
    return answer


def own_output_source(db: Database) -> Any:
    """An intake source override: GATEWAY for what the gateway stored itself."""
    def source(instance_id: str) -> str | None:
        rows = db.query("SELECT 1 FROM own_output WHERE instance_id=?", (instance_id,))
        return GATEWAY_SOURCE if rows else None

    return source
