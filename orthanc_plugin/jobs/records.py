"""What the queue hands out: a job as a typed, frozen record, never the database's row object.

`Job.of_row` is the one place that reads a job row by its column names (besides the SQL of the
stores): a second database engine, whose rows are other objects, meets the executors here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from orthanc_plugin.jobs.states import JobState


class ColumnRow(Protocol):
    """A row read by column name: sqlite3.Row, a dict, another engine's row."""

    def __getitem__(self, key: str, /) -> Any: ...


@dataclass(frozen=True)
class Job:
    """One row of the `jobs` table (jobs/tables.py), column for column."""

    id: int
    idempotency_key: str
    rule: str
    action: str
    trigger: str
    level: str
    resource_id: str
    patient_id: str | None
    study_uid: str | None
    calling_aet: str | None
    remote_ip: str | None
    target: str
    state: JobState
    attempts: int
    next_attempt_at: float
    created_at: str
    updated_at: str
    created_epoch: float
    last_error: str | None
    last_status: str | None
    orthanc_job: str | None
    claimed_by: str | None
    crashes: int
    priority: int
    claim_id: str | None
    claim_items: int
    failing_since: float | None
    awaits_description: bool
    lease_until: float | None
    fence: int

    @classmethod
    def of_row(cls, row: ColumnRow) -> Job:
        """From a `SELECT * FROM jobs` row (any engine's row read by column name)."""
        return cls(
            id=int(row["id"]),
            idempotency_key=str(row["idempotency_key"]),
            rule=str(row["rule"]),
            action=str(row["action"]),
            trigger=str(row["trigger"]),
            level=str(row["level"]),
            resource_id=str(row["resource_id"]),
            patient_id=_text(row["patient_id"]),
            study_uid=_text(row["study_uid"]),
            calling_aet=_text(row["calling_aet"]),
            remote_ip=_text(row["remote_ip"]),
            target=str(row["target"]),
            state=JobState(row["state"]),
            attempts=int(row["attempts"]),
            next_attempt_at=float(row["next_attempt_at"]),
            created_at=str(row["created_at"]),
            updated_at=str(row["updated_at"]),
            created_epoch=float(row["created_epoch"]),
            last_error=_text(row["last_error"]),
            last_status=_text(row["last_status"]),
            orthanc_job=_text(row["orthanc_job"]),
            claimed_by=_text(row["claimed_by"]),
            crashes=int(row["crashes"]),
            priority=int(row["priority"]),
            claim_id=_text(row["claim_id"]),
            claim_items=int(row["claim_items"]),
            failing_since=None if row["failing_since"] is None else float(row["failing_since"]),
            awaits_description=bool(row["awaits_description"]),
            lease_until=None if row["lease_until"] is None else float(row["lease_until"]),
            fence=int(row["fence"]),
        )


def _text(value: Any) -> str | None:
    return None if value is None else str(value)
