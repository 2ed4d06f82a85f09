"""One instance into one folder: name it, skip it if this content is already there, write it."""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import pydicom

from orthanc_plugin.audit.clock import now_iso
from orthanc_plugin.db_engine import StateDatabase
from orthanc_plugin.export.files import inside, sha256_of, write_atomically
from orthanc_plugin.export.model import (
    Decision,
    plan_export,
    render_name,
    template_keywords,
    versioned_name,
)
from orthanc_plugin.export.tables import previous_exports, record_export

# Two sender threads exporting the same instance (two rules, one folder) must not both write it.
_WRITE_LOCK = threading.Lock()
MAX_VERSIONS = 1000


@dataclass(frozen=True)
class Source:
    instance_id: str
    calling_aet: str
    rule: str


@dataclass(frozen=True)
class ExportOutcome:
    decision: Decision
    name: str
    sop_instance_uid: str
    size: int


def export_instance(
    db: StateDatabase, folder: Path, template: str, data: bytes, source: Source
) -> ExportOutcome:
    """Raises DestinationUnavailable (retry later) or pydicom's InvalidDicomError (quarantine)."""
    ds = pydicom.dcmread(BytesIO(data), stop_before_pixels=True)
    sop_uid = str(ds.get("SOPInstanceUID", "") or "")
    if not sop_uid:
        raise pydicom.errors.InvalidDicomError("no SOPInstanceUID")
    values = {}
    for field in [*template_keywords(template), "PatientID"]:
        keyword = "PatientID" if field == "HospitalID" else field
        values[keyword] = str(ds.get(keyword, "") or "")
    digest = hashlib.sha256(data).hexdigest()
    destination = str(folder)
    with _WRITE_LOCK:
        base = render_name(template, values)
        plan = plan_export(base, digest, previous_exports(db, sop_uid, destination))
        if plan.decision is Decision.SKIP:
            return ExportOutcome(Decision.SKIP, plan.name, sop_uid, len(data))
        name, version = plan.name, plan.version
        # A file of that name that the table does not know (written by hand, or a lost database):
        # the same bytes count as exported, other bytes are never overwritten.
        while True:
            existing = sha256_of(inside(folder, name))
            if existing is None or existing == digest:
                break
            version += 1
            if version > MAX_VERSIONS:
                raise OSError(f"more than {MAX_VERSIONS} versions of {plan.name}")
            name = versioned_name(base, version)
        if existing is None:
            write_atomically(folder, name, data)
        record_export(db, {
            "PatientUID": values["PatientID"],
            "PatientName": str(ds.get("PatientName", "") or ""),
            "SOPInstanceUID": sop_uid,
            "SourcePath": f"orthanc:/instances/{source.instance_id}",
            "SourceAET": source.calling_aet,
            "StudyDate": str(ds.get("StudyDate", "") or ""),
            "ModifiedFileName": name,
            "DestinationPath": destination,
            "ExportDate": now_iso(),
            "ContentSHA256": digest,
            "Rule": source.rule,
        })
    return ExportOutcome(Decision.WRITE, name, sop_uid, len(data))
