"""Forwarding's store: the storage commitment requests (forwarding/tables.py) and the commitment
and in-flight columns forwarding keeps on the queue's items. SQL only here; commitment.py keeps
the rounds and the decisions, routes.py and __init__.py the page and the labels.

Every writer is one transaction: an instance's commitment state and its request's state change
together, so a crash between them cannot leave a request done with items still waiting for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from orthanc_plugin.db import Database
from orthanc_plugin.forwarding.tables import COMMIT_INDEX

# job_items.commit_state: due (to be asked), requested (asked, report awaited), committed, failed.
DUE, REQUESTED, COMMITTED, FAILED = "due", "requested", "committed", "failed"
# job_items.state of an instance whose receiver refused to commit it: parked until a retry.
NOT_COMMITTED = "not-committed"

ItemKey = tuple[int, str]   # (job id, Orthanc instance ID)


@dataclass(frozen=True)
class DueItem:
    job_id: int
    instance_id: str
    since: float | None     # when it became due (None on rows written before it was kept)
    target: str


@dataclass(frozen=True)
class JobStudy:
    """What labelling a forward job's study needs of the job."""
    job_id: int
    patient_id: str
    study_uid: str
    target: str
    failed_before: bool     # it has a last error: perhaps parked, then retried by hand
    state: str = ""
    sent: int = 0

    @classmethod
    def of(cls, job: Any) -> JobStudy:
        """From a job row as the queue's claim reads it."""
        return cls(int(job["id"]), job["patient_id"] or "", job["study_uid"] or "",
                   str(job["target"]), bool(job["last_error"]))


@dataclass(frozen=True)
class CommitRequest:
    transaction_uid: str
    target: str
    requested_epoch: float


def create_commit_index(db: Database) -> None:
    with db.transaction() as connection:
        connection.execute(COMMIT_INDEX)


def due_items(db: Database, limit: int) -> list[DueItem]:
    """The oldest instances due for a commitment request, with their job's target."""
    return [DueItem(int(row["job_id"]), str(row["instance_id"]), row["commit_since"],
                    str(row["target"]))
            for row in db.query(
                "SELECT i.job_id, i.instance_id, i.commit_since, j.target FROM job_items i "
                "JOIN jobs j ON j.id = i.job_id WHERE i.commit_state = ? "
                "ORDER BY i.commit_since LIMIT ?", (DUE, limit))]


def note_requested(db: Database, target: str, transaction: str, items: Sequence[ItemKey],
                   now: float) -> None:
    with db.transaction() as connection:
        connection.execute(
            "INSERT OR REPLACE INTO commit_requests(transaction_uid, target, requested_epoch, "
            "instances, state) VALUES(?,?,?,?, 'pending')", (transaction, target, now, len(items)))
        connection.executemany(
            "UPDATE job_items SET commit_state=?, commit_txn=? WHERE job_id=? AND instance_id=?",
            [(REQUESTED, transaction, job_id, instance_id) for job_id, instance_id in items])


def pending_requests(db: Database) -> list[CommitRequest]:
    """Requests whose report has not been read yet, oldest first."""
    return [CommitRequest(str(row["transaction_uid"]), str(row["target"]),
                          float(row["requested_epoch"]))
            for row in db.query("SELECT transaction_uid, target, requested_epoch "
                                "FROM commit_requests WHERE state='pending' "
                                "ORDER BY requested_epoch")]


def requested_items(db: Database, transaction: str) -> list[ItemKey]:
    """The instances a request asked for that have no answer recorded yet."""
    return [(int(row["job_id"]), str(row["instance_id"])) for row in db.query(
        "SELECT job_id, instance_id FROM job_items WHERE commit_txn=? AND commit_state=?",
        (transaction, REQUESTED))]


def record_committed(db: Database, transaction: str, items: Sequence[ItemKey]) -> None:
    with db.transaction() as connection:
        connection.executemany(
            "UPDATE job_items SET commit_state=? WHERE job_id=? AND instance_id=?",
            [(COMMITTED, job_id, instance_id) for job_id, instance_id in items])
        connection.execute(
            "UPDATE commit_requests SET state='done' WHERE transaction_uid=?", (transaction,))


def ask_again(db: Database, transaction: str) -> None:
    """The report is lost (Orthanc restarted): its instances are due again, the request lost."""
    with db.transaction() as connection:
        connection.execute(
            "UPDATE job_items SET commit_state=?, commit_txn=NULL "
            "WHERE commit_txn=? AND commit_state=?", (DUE, transaction, REQUESTED))
        connection.execute(
            "UPDATE commit_requests SET state='lost' WHERE transaction_uid=?", (transaction,))


def record_not_committed(db: Database, items: Sequence[ItemKey], reason: str,
                         job_ids: Sequence[int], message: str,
                         transaction: str | None) -> None:
    """The instances are parked with the reason; a job already done is parked with them (one
    still sending is settled by the forwarder, which sees the parked items)."""
    with db.transaction() as connection:
        connection.executemany(
            "UPDATE job_items SET state=?, status=?, commit_state=? "
            "WHERE job_id=? AND instance_id=?",
            [(NOT_COMMITTED, reason, FAILED, job_id, instance_id)
             for job_id, instance_id in items])
        connection.executemany(
            "UPDATE jobs SET last_error=?, last_status=?, "
            "state=CASE WHEN state='done' THEN 'dead' ELSE state END WHERE id=?",
            [(message, NOT_COMMITTED, job_id) for job_id in job_ids])
        if transaction is not None:
            connection.execute(
                "UPDATE commit_requests SET state='done' WHERE transaction_uid=?", (transaction,))


def commit_state_counts(db: Database) -> dict[str, int]:
    return {str(row["commit_state"]): int(row["n"]) for row in db.query(
        "SELECT commit_state, COUNT(*) AS n FROM job_items WHERE commit_state IS NOT NULL "
        "GROUP BY commit_state")}


def in_flight(db: Database, limit: int) -> list[dict[str, Any]]:
    """Instances an Orthanc store job carries now, with their place in it, for the page."""
    return [dict(row) for row in db.query(
        "SELECT i.job_id, i.instance_id, i.in_flight_job, i.in_flight_pos, j.target, j.rule "
        "FROM job_items i JOIN jobs j ON j.id = i.job_id "
        "WHERE i.in_flight_job IS NOT NULL AND i.state='pending' ORDER BY i.job_id LIMIT ?",
        (limit,))]


def job_study(db: Database, job_id: int) -> JobStudy | None:
    rows = db.query("SELECT * FROM jobs WHERE id=?", (job_id,))
    return JobStudy.of(rows[0]) if rows else None


def settled_jobs(db: Database, job_ids: Sequence[int], action: str) -> list[JobStudy]:
    """These jobs of the action, with their state and how many of their instances were sent."""
    marks = ",".join("?" * len(job_ids))
    return [JobStudy(int(row["id"]), row["patient_id"] or "", row["study_uid"] or "",
                     str(row["target"]), bool(row["last_error"]), str(row["state"]),
                     int(row["sent"]))
            for row in db.query(
                f"SELECT j.*, (SELECT COUNT(*) FROM job_items i WHERE i.job_id = j.id AND "
                f"i.state='sent') AS sent FROM jobs j WHERE j.id IN ({marks}) AND j.action=?",
                (*job_ids, action))]
