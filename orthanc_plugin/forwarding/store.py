"""Forwarding's store: its records of the instances it forwards (in flight in an Orthanc store
job, storage commitment), the store jobs it started and its storage commitment requests
(forwarding/tables.py). SQL only here; action.py and commitment.py keep the decisions.

The writers that follow a queue item's state take the queue's transaction (JobQueue.mark_sent's
`also`): an instance is never recorded sent while still in flight, nor sent without being due
for its commitment. The others are one transaction each: an instance's commitment state and its
request's state change together.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from orthanc_plugin.audit import counts
from orthanc_plugin.db_engine import DbConnection, StateDatabase
from orthanc_plugin.jobs.queue import ClaimedItem
from orthanc_plugin.jobs.records import Job

# job_items.commit_state: due (to be asked), requested (asked, report awaited), committed, failed.
DUE, REQUESTED, COMMITTED, FAILED = "due", "requested", "committed", "failed"
# job_items.state of an instance whose receiver refused to commit it: parked until a retry.
NOT_COMMITTED = "not-committed"

ItemKey = tuple[int, str]   # (job id, Orthanc instance ID)
# Orthanc store jobs are remembered this long: SaveJobs resumes only what was active at a stop.
STORE_JOB_MEMORY_SECONDS = 2 * 86400


@dataclass(frozen=True)
class InFlight:
    """The Orthanc store job that carried an item when a worker stopped or died, and its place."""
    orthanc_job: str
    position: int


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
    def of(cls, job: Job) -> JobStudy:
        """From a job as the queue's claim hands it out."""
        return cls(job.id, job.patient_id or "", job.study_uid or "", job.target,
                   bool(job.last_error))


@dataclass(frozen=True)
class CommitRequest:
    transaction_uid: str
    target: str
    requested_epoch: float


# -- in flight ------------------------------------------------------------------------------------
def in_flight_of(db: StateDatabase, items: Sequence[ClaimedItem]) -> dict[ClaimedItem, InFlight]:
    """Which of a claim's items an Orthanc store job carried when a worker stopped or died."""
    wanted = {(item.job_id, item.instance_id): item for item in items}
    found: dict[ClaimedItem, InFlight] = {}
    for job_id in sorted({item.job_id for item in items}):
        for row in db.query("SELECT instance_id, in_flight_job, in_flight_pos FROM forward_items "
                            "WHERE job_id=? AND in_flight_job IS NOT NULL", (job_id,)):
            item = wanted.get((job_id, row["instance_id"]))
            if item is not None:
                found[item] = InFlight(str(row["in_flight_job"]), int(row["in_flight_pos"] or 0))
    return found


def mark_in_flight(connection: DbConnection, items: Sequence[ClaimedItem],
                   orthanc_job: str, now: float) -> None:
    """An Orthanc store job now carries these items, in this order; the job is remembered so
    that Orthanc resuming it after a restart can be undone (in_orthanc/host.py)."""
    connection.executemany(
        "INSERT INTO forward_items(job_id, instance_id, in_flight_job, in_flight_pos) "
        "VALUES(?,?,?,?) ON CONFLICT(job_id, instance_id) DO UPDATE SET "
        "in_flight_job=excluded.in_flight_job, in_flight_pos=excluded.in_flight_pos",
        [(item.job_id, item.instance_id, orthanc_job, position)
         for position, item in enumerate(items)])
    connection.execute(
        "INSERT INTO orthanc_store_jobs(orthanc_job, created_epoch) VALUES(?,?) "
        "ON CONFLICT DO NOTHING",
        (orthanc_job, now))
    connection.execute("DELETE FROM orthanc_store_jobs WHERE created_epoch < ?",
                       (now - STORE_JOB_MEMORY_SECONDS,))


def clear_in_flight(connection: DbConnection, items: Sequence[ClaimedItem]) -> None:
    """The receiver's answer for these is known (refused, gone, or to be sent again)."""
    keys = [(item.job_id, item.instance_id) for item in items]
    connection.executemany(
        "UPDATE forward_items SET in_flight_job=NULL, in_flight_pos=NULL "
        "WHERE job_id=? AND instance_id=?", keys)
    connection.executemany(
        "DELETE FROM forward_items WHERE job_id=? AND instance_id=? AND commit_state IS NULL",
        keys)


def note_delivered(connection: DbConnection, items: Sequence[ClaimedItem],
                   commit_since: float | None) -> None:
    """Delivered: no longer in flight; due for storage commitment from commit_since (None: the
    target has none, so nothing of it is kept)."""
    keys = [(item.job_id, item.instance_id) for item in items]
    connection.executemany("DELETE FROM forward_items WHERE job_id=? AND instance_id=?", keys)
    if commit_since is not None:
        connection.executemany(
            "INSERT INTO forward_items(job_id, instance_id, commit_state, commit_since) "
            "VALUES(?,?,?,?)", [(*key, DUE, commit_since) for key in keys])


def forget_reset_items(connection: DbConnection, job_id: int) -> None:
    """A job retried by hand: its items back to pending are sent (and committed) afresh."""
    connection.execute(
        "DELETE FROM forward_items WHERE job_id=? AND instance_id IN (SELECT instance_id FROM "
        "job_items WHERE job_id=? AND state='pending')", (job_id, job_id))


# -- storage commitment ---------------------------------------------------------------------------
def due_items(db: StateDatabase, limit: int) -> list[DueItem]:
    """The oldest instances due for a commitment request, with their job's target."""
    return [DueItem(int(row["job_id"]), str(row["instance_id"]), row["commit_since"],
                    str(row["target"]))
            for row in db.query(
                "SELECT f.job_id, f.instance_id, f.commit_since, j.target FROM forward_items f "
                "JOIN jobs j ON j.id = f.job_id LEFT JOIN job_items i ON i.job_id = f.job_id "
                "AND i.instance_id = f.instance_id WHERE f.commit_state = ? "
                # NULLS FIRST: SQLite's order, which PostgreSQL's ascending order is not. Those
                # due at once in the order they were written (each job's in its instances' order:
                # SQLite's rowid order, which PostgreSQL's rows do not keep).
                "ORDER BY f.commit_since NULLS FIRST, f.job_id, i.position NULLS FIRST LIMIT ?",
                (DUE, limit))]


def note_requested(db: StateDatabase, target: str, transaction: str, items: Sequence[ItemKey],
                   now: float) -> None:
    with db.transaction() as connection:
        connection.execute(
            "INSERT INTO commit_requests(transaction_uid, target, requested_epoch, instances, "
            "state) VALUES(?,?,?,?, 'pending') ON CONFLICT(transaction_uid) DO UPDATE SET "
            "target=excluded.target, requested_epoch=excluded.requested_epoch, "
            "instances=excluded.instances, state=excluded.state",
            (transaction, target, now, len(items)))
        connection.executemany(
            "UPDATE forward_items SET commit_state=?, commit_txn=? "
            "WHERE job_id=? AND instance_id=?",
            [(REQUESTED, transaction, job_id, instance_id) for job_id, instance_id in items])


def pending_requests(db: StateDatabase) -> list[CommitRequest]:
    """Requests whose report has not been read yet, oldest first."""
    return [CommitRequest(str(row["transaction_uid"]), str(row["target"]),
                          float(row["requested_epoch"]))
            for row in db.query("SELECT transaction_uid, target, requested_epoch "
                                "FROM commit_requests WHERE state='pending' "
                                "ORDER BY requested_epoch")]


def requested_items(db: StateDatabase, transaction: str) -> list[ItemKey]:
    """The instances a request asked for that have no answer recorded yet."""
    return [(int(row["job_id"]), str(row["instance_id"])) for row in db.query(
        "SELECT job_id, instance_id FROM forward_items WHERE commit_txn=? AND commit_state=?",
        (transaction, REQUESTED))]


def record_committed(db: StateDatabase, transaction: str, items: Sequence[ItemKey]) -> None:
    """The instances the receiver committed, and the running total of committed instances
    (audit/counts.py) with those not committed before (a report can come twice)."""
    with db.transaction() as connection:
        newly = sum(connection.execute(
            "UPDATE forward_items SET commit_state=? WHERE job_id=? AND instance_id=? "
            "AND (commit_state IS NULL OR commit_state <> ?)",
            (COMMITTED, job_id, instance_id, COMMITTED)).rowcount for job_id, instance_id in items)
        counts.count_committed(connection, newly)
        connection.execute(
            "UPDATE commit_requests SET state='done' WHERE transaction_uid=?", (transaction,))


def ask_again(db: StateDatabase, transaction: str) -> None:
    """The report is lost (Orthanc restarted): its instances are due again, the request lost."""
    with db.transaction() as connection:
        connection.execute(
            "UPDATE forward_items SET commit_state=?, commit_txn=NULL "
            "WHERE commit_txn=? AND commit_state=?", (DUE, transaction, REQUESTED))
        connection.execute(
            "UPDATE commit_requests SET state='lost' WHERE transaction_uid=?", (transaction,))


def record_not_committed(db: StateDatabase, items: Sequence[ItemKey], reason: str,
                         job_ids: Sequence[int], message: str,
                         transaction: str | None) -> None:
    """The instances are parked with the reason; a job already done is parked with them (one
    still sending is settled by the forwarder, which sees the parked items)."""
    with db.transaction() as connection:
        connection.executemany(
            "UPDATE job_items SET state=?, status=? WHERE job_id=? AND instance_id=?",
            [(NOT_COMMITTED, reason, job_id, instance_id) for job_id, instance_id in items])
        connection.executemany(
            "UPDATE forward_items SET commit_state=? WHERE job_id=? AND instance_id=?",
            [(FAILED, job_id, instance_id) for job_id, instance_id in items])
        connection.executemany(
            "UPDATE jobs SET last_error=?, last_status=?, "
            "state=CASE WHEN state='done' THEN 'dead' ELSE state END WHERE id=?",
            [(message, NOT_COMMITTED, job_id) for job_id in job_ids])
        if transaction is not None:
            connection.execute(
                "UPDATE commit_requests SET state='done' WHERE transaction_uid=?", (transaction,))


def commit_state_counts(db: StateDatabase) -> dict[str, int]:
    """Instances waiting for the receiver's commitment (due, requested) or refused it (failed),
    by state: read through the index of commitment states, past none of the committed ones, which
    are most rows and are counted as they commit (audit/counts.py)."""
    return {str(row["commit_state"]): int(row["n"]) for row in db.query(
        "SELECT commit_state, COUNT(*) AS n FROM forward_items WHERE commit_state IN (?, ?, ?) "
        "GROUP BY commit_state", (DUE, REQUESTED, FAILED))}


def job_commitment(db: StateDatabase, job_id: int) -> dict[str, Any]:
    """A job's storage commitment for its JSON; nothing for a target without it."""
    counts = {str(row["commit_state"]): int(row["n"]) for row in db.query(
        "SELECT commit_state, COUNT(*) AS n FROM forward_items WHERE job_id=? "
        "AND commit_state IS NOT NULL GROUP BY commit_state", (job_id,))}
    if not counts:
        return {}
    return {"commitment": {
        "committed": counts.get(COMMITTED, 0),
        "waiting": counts.get(DUE, 0) + counts.get(REQUESTED, 0),
        "not_committed": [{"instance": row["instance_id"], "reason": row["status"]}
                          for row in db.query(
                              "SELECT instance_id, status FROM job_items WHERE job_id=? "
                              "AND state=? ORDER BY position", (job_id, NOT_COMMITTED))]}}


def in_flight(db: StateDatabase, limit: int) -> list[dict[str, Any]]:
    """Instances an Orthanc store job carries now, with their place in it, for the page."""
    return [dict(row) for row in db.query(
        "SELECT f.job_id, f.instance_id, f.in_flight_job, f.in_flight_pos, j.target, j.rule "
        "FROM forward_items f JOIN job_items i ON i.job_id = f.job_id AND "
        "i.instance_id = f.instance_id JOIN jobs j ON j.id = f.job_id "
        "WHERE f.in_flight_job IS NOT NULL AND i.state='pending' ORDER BY f.job_id, i.position "
        "LIMIT ?",
        (limit,))]


def job_study(db: StateDatabase, job_id: int) -> JobStudy | None:
    rows = db.query("SELECT * FROM jobs WHERE id=?", (job_id,))
    return JobStudy.of(Job.of_row(rows[0])) if rows else None


def settled_jobs(db: StateDatabase, job_ids: Sequence[int], action: str) -> list[JobStudy]:
    """These jobs of the action, with their state and how many of their instances were sent."""
    marks = ",".join("?" * len(job_ids))
    settled = []
    for row in db.query(
            f"SELECT j.*, (SELECT COUNT(*) FROM job_items i WHERE i.job_id = j.id AND "
            f"i.state='sent') AS sent FROM jobs j WHERE j.id IN ({marks}) AND j.action=?",
            (*job_ids, action)):
        job = Job.of_row(row)
        settled.append(replace(JobStudy.of(job), state=str(job.state), sent=int(row["sent"])))
    return settled


def forget_pruned_jobs(connection: DbConnection, job_ids: Sequence[int]) -> dict[str, float]:
    """Retention removes these finished jobs: their records go too, and the committed ones are
    carried in retention's totals (the committed counter never goes down)."""
    marks = ",".join("?" * len(job_ids))
    committed = connection.execute(
        f"SELECT COUNT(*) FROM forward_items WHERE job_id IN ({marks}) AND commit_state=?",
        (*job_ids, COMMITTED)).fetchone()[0]
    connection.execute(f"DELETE FROM forward_items WHERE job_id IN ({marks})", tuple(job_ids))
    return {"committed": float(committed)}
