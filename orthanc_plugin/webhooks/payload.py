"""The JSON body of one event for one receiver, from its outbox row.

Without IncludePatientData it names no patient: no patient ID or name, no DICOM UID (a Study or
Plan Instance UID travels with the patient's images and can be looked up against them), no free
text (an audit detail or a plan label may quote anything). What it gives instead lets the
receiver act and correlate: the Orthanc study ID (a SHA-1 of PatientID|StudyInstanceUID, which
Orthanc's own API answers to for users allowed to see it), Orthanc resource IDs, the rule, the
destination, the job and the counts."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from orthanc_plugin.labels import orthanc_study_id
from orthanc_plugin.webhooks.model import OutboxEvent

SCHEMA_VERSION = 1
# Orthanc's resource identifiers: SHA-1 in five dash-separated groups of eight hex digits.
_ORTHANC_ID = re.compile(r"[0-9a-f]{8}(-[0-9a-f]{8}){4}")
# Numbers the audit's details start with, safe to pass on: "approval 12: ...", "harvest 3: ...".
_NUMBERED = {"held-for-approval": ("approval", re.compile(r"approval (\d+)\b")),
             "harvest-done": ("harvest", re.compile(r"harvest (\d+)\b"))}


def event_id(origin: str, outbox_id: int) -> str:
    """Stable across retries and restarts, and unique across databases (the origin is drawn once
    per gateway database), so a receiver can deduplicate by it."""
    return f"rtgw-{origin}-{outbox_id}"


def build_payload(row: OutboxEvent, origin: str, include_patient_data: bool) -> dict[str, Any]:
    event = str(row.event)
    payload: dict[str, Any] = {
        "version": SCHEMA_VERSION,
        "event": event,
        "id": event_id(origin, int(row.id)),
        "at": row.at,
    }
    for key, value in (("status", row.status), ("rule", row.rule), ("target", row.target),
                       ("action", row.action)):
        if value:
            payload[key] = value
    if row.job_id is not None:
        payload["job"] = int(row.job_id)
    if row.instances is not None:
        payload["instances"] = int(row.instances)
    numbered = _NUMBERED.get(event)
    if numbered and row.detail and (found := numbered[1].match(str(row.detail))):
        payload[numbered[0]] = int(found.group(1))
    patient_id, study_uid = str(row.patient_id or ""), str(row.study_uid or "")
    resource = str(row.resource_id or "")
    study: dict[str, str] = {}
    if study_uid:
        study["orthanc_id"] = orthanc_study_id(patient_id, study_uid)
    if _ORTHANC_ID.fullmatch(resource):
        payload["resource"] = resource
    if include_patient_data:
        if study_uid:
            study["study_uid"] = study_uid
        if patient_id:
            payload["patient"] = {"patient_id": patient_id}
        if resource and "resource" not in payload:
            payload["resource"] = resource       # a plan's SOP Instance UID, a study UID
        if row.plan_label:
            payload["plan_label"] = row.plan_label
        if row.detail:
            payload["detail"] = row.detail
    if study:
        payload["study"] = study
    return payload


def body_of(payload: Mapping[str, Any]) -> bytes:
    """Compact, sorted, ASCII: the same bytes on every attempt, whatever the receiver's parser."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
