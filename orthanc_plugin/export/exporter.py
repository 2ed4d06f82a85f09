"""One instance into one folder: name it, skip it if this content is already there, write it.

Several workers may export the same instance into the same folder at once: two rules on one
node, or two nodes sharing the folder (a job taken over from a node that was merely slow). Each
file name is claimed in the database before it is written (export_claims): the holder writes the
file under a temporary name and renames it into place under its claim's row lock, recording it
in the same transaction; the others skip it (done) or wait for the holder (ExportHeld). A claim
whose worker stopped is taken over when it runs out, and its late rename is then refused.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import socket
import time
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom

from orthanc_plugin.audit.clock import now_iso
from orthanc_plugin.db_engine import StateDatabase
from orthanc_plugin.export.files import discard, inside, put_in_place, sha256_of, write_temporary
from orthanc_plugin.export.model import (
    Claim,
    Decision,
    plan_export,
    render_name,
    template_keywords,
    versioned_name,
)
from orthanc_plugin.export.tables import (
    FileClaim,
    claim_file,
    previous_exports,
    publish_claimed,
    release_claim,
)

MAX_VERSIONS = 1000
# How long a claim on a file name holds: the time one file may take to be written into the
# folder. A holder slower than that loses the name (its rename is refused, nothing is written
# twice); a stopped holder's name waits this long for another worker.
CLAIM_SECONDS = 120.0


class ExportHeld(Exception):
    """Another worker holds this file name and has not finished: try again in `seconds`."""

    def __init__(self, name: str, seconds: float) -> None:
        super().__init__(f"{name} is being written by another worker")
        self.name = name
        self.seconds = seconds


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


@dataclass(frozen=True)
class _Export:
    """One instance on its way into one folder."""

    db: StateDatabase
    folder: Path
    data: bytes
    digest: str
    sop_uid: str
    row: dict[str, Any]          # its FileTransfer row, but for the name and the date
    claim_seconds: float

    def outcome(self, decision: Decision, name: str) -> ExportOutcome:
        return ExportOutcome(decision, name, self.sop_uid, len(self.data))


def export_instance(
    db: StateDatabase, folder: Path, template: str, data: bytes, source: Source,
    claim_seconds: float = CLAIM_SECONDS,
) -> ExportOutcome:
    """Raises DestinationUnavailable (retry later), ExportHeld (wait a little) or pydicom's
    InvalidDicomError (quarantine)."""
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
    base = render_name(template, values)
    plan = plan_export(base, digest, previous_exports(db, sop_uid, destination))
    if plan.decision is Decision.SKIP:
        return ExportOutcome(Decision.SKIP, plan.name, sop_uid, len(data))
    export = _Export(db, folder, data, digest, sop_uid, {
        "PatientUID": values["PatientID"],
        "PatientName": str(ds.get("PatientName", "") or ""),
        "SOPInstanceUID": sop_uid,
        "SourcePath": f"orthanc:/instances/{source.instance_id}",
        "SourceAET": source.calling_aet,
        "StudyDate": str(ds.get("StudyDate", "") or ""),
        "DestinationPath": destination,
        "ContentSHA256": digest,
        "Rule": source.rule,
    }, claim_seconds)
    name, version = plan.name, plan.version
    while True:
        outcome = _export_as(export, name)
        if outcome is not None:
            return outcome
        version += 1  # the name is another content's: changed content never replaces it
        if version > MAX_VERSIONS:
            raise OSError(f"more than {MAX_VERSIONS} versions of {plan.name}")
        name = versioned_name(base, version)


def _export_as(export: _Export, name: str) -> ExportOutcome | None:
    """The instance exported under `name` (or found there already); None when the name is
    another content's."""
    # A file of that name that no claim knows (written by hand, or before claims, or a lost
    # database): the same bytes count as exported, other bytes are never overwritten.
    existing = sha256_of(inside(export.folder, name))
    if existing is not None and existing != export.digest:
        return None
    now = time.time()
    claim = FileClaim(f"{socket.gethostname()}:{os.getpid()}", secrets.token_hex(8),
                      now + export.claim_seconds)
    destination = str(export.folder)
    state, until = claim_file(export.db, destination, name, export.digest, claim, now)
    if state is Claim.OTHER:
        return None
    if state is Claim.DONE:
        return export.outcome(Decision.SKIP, name)
    if state is Claim.HELD:
        raise ExportHeld(name, until - now)
    temporary: Path | None = None

    def into_place() -> None:  # no file to move when the same bytes were there already
        if temporary is not None:
            put_in_place(temporary, export.folder, name)

    try:
        if existing is None:
            temporary = write_temporary(export.folder, name, export.data)
        published = publish_claimed(
            export.db, destination, name, claim.token, into_place,
            {**export.row, "ModifiedFileName": name, "ExportDate": now_iso()})
    except BaseException:
        discard(temporary)
        # Best effort: a claim that cannot be released (the database is away) runs out.
        with contextlib.suppress(Exception):
            release_claim(export.db, destination, name, claim.token)
        raise
    if not published:
        # This worker was slower than its claim and another took the name over: its write
        # stands, this one is dropped; the next try finds it done.
        discard(temporary)
        raise ExportHeld(name, 0.0)
    return export.outcome(Decision.WRITE, name)
