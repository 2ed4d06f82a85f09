"""The approvals' SQL: holding a rule's new jobs, each person's decision, expiry, and what the
page lists. Every change of a job's state here happens in one transaction with its decision row."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from orthanc_plugin.approvals.model import (
    ApprovalState,
    Decision,
    DecisionRefused,
    HoldAction,
    check_decider,
    chosen_targets,
    expiry_reason,
)
from orthanc_plugin.audit.clock import iso_at, now_iso
from orthanc_plugin.db_engine import POSTGRESQL, DbConnection, DbRow, StateDatabase
from orthanc_plugin.jobs.queue import HELD, HOLD_EXPIRED, JobSpec
from orthanc_plugin.jobs.records import Job

EXPIRED_BY = "gateway (expiry)"


@dataclass(frozen=True)
class Subject:
    """What one approval covers: a plan (plan-complete rules) or a study (every other trigger)."""

    key: str
    level: str
    resource_id: str


def subject_of(spec: JobSpec) -> Subject:
    if spec.level == "plan":
        return Subject(f"plan:{spec.resource_id}", "plan", spec.resource_id)
    # Instance rules queue one job per arrival: the study's jobs share one approval.
    return Subject(f"study:{spec.study_uid}", "study" if spec.level == "study" else spec.level,
                   spec.resource_id)


@dataclass
class Decided:
    approval_id: int
    rule: str
    patient_id: str
    study_uid: str
    decision: str
    targets: list[str]
    job_ids: list[int] = field(default_factory=list)
    still_held: list[str] = field(default_factory=list)


class ApprovalStore:
    def __init__(self, db: StateDatabase) -> None:
        self.db = db

    @property
    def _locking(self) -> str:
        """What a read of approvals about to be decided adds on PostgreSQL: their rows locked."""
        return " FOR UPDATE" if self.db.dialect == POSTGRESQL else ""

    # -- holding ----------------------------------------------------------------------------------
    @staticmethod
    def hold(connection: DbConnection, rule: str, hold: HoldAction,
             queued: Sequence[tuple[int, JobSpec]], now: float | None = None) -> int:
        """Hold the jobs a rule just queued, under the subject's waiting approval (or a new one)."""
        now = time.time() if now is None else now
        spec = queued[0][1]
        subject = subject_of(spec)
        row = connection.execute(
            "SELECT id FROM approvals WHERE state='waiting' AND rule=? AND subject=? "
            "ORDER BY id DESC LIMIT 1", (rule, subject.key)).fetchone()
        if row is not None:
            approval_id = int(row["id"])
        else:
            approval_id = int(connection.execute(
                "INSERT INTO approvals(rule, subject, level, resource_id, patient_id, study_uid, "
                "approvers, expires_seconds, created_at, expires_epoch) VALUES(?,?,?,?,?,?,?,?,?,?) "
                "RETURNING id",
                (rule, subject.key, subject.level, subject.resource_id, spec.patient_id,
                 spec.study_uid, json.dumps(list(hold.approvers)), hold.expires_seconds,
                 iso_at(now), now + hold.expires_seconds)).fetchall()[0]["id"])
        who = ", ".join(hold.approvers) if hold.approvers else "any signed-in user"
        for job_id, _ in queued:
            connection.execute("INSERT INTO approval_jobs(approval_id, job_id) VALUES(?,?) "
                               "ON CONFLICT DO NOTHING", (approval_id, job_id))
            connection.execute(
                "UPDATE jobs SET state=?, last_status='held', last_error=?, updated_at=? "
                "WHERE id=? AND state='pending'",
                (HELD, f"awaiting approval ({who})", now_iso(), job_id))
        return approval_id

    # -- deciding ---------------------------------------------------------------------------------
    def decide(self, approval_id: int, decision: Decision, asked: Sequence[str] | None, user: str,
               comment: str) -> Decided:
        with self.db.transaction() as connection:
            # Another node deciding the same approval waits for this decision (SQLite: one
            # writer at a time), then finds it decided.
            approval = connection.execute("SELECT * FROM approvals WHERE id=?" + self._locking,
                                          (approval_id,)).fetchone()
            if approval is None:
                raise DecisionRefused(404, f"no approval {approval_id}")
            if approval["state"] != ApprovalState.WAITING:
                raise DecisionRefused(409, f"approval {approval_id} is {approval['state']}: "
                                           f"nothing left to decide")
            check_decider(user, json.loads(approval["approvers"]), approval["rule"])
            held = _held_jobs(connection, approval_id)
            targets = chosen_targets(asked, sorted({job.target for job in held}))
            job_ids = [job.id for job in held if job.target in targets]
            stamp = now_iso()
            if decision == Decision.APPROVE:
                connection.executemany(
                    "UPDATE jobs SET state='pending', next_attempt_at=0, last_status='approved', "
                    "last_error=?, updated_at=? WHERE id=? AND state=?",
                    [(f"approved by {user}", stamp, job_id, HELD) for job_id in job_ids])
            else:
                connection.executemany(
                    "UPDATE jobs SET state='cancelled', last_status='rejected', last_error=?, "
                    "updated_at=? WHERE id=? AND state=?",
                    [(f"rejected by {user}: {comment}", stamp, job_id, HELD) for job_id in job_ids])
            connection.executemany(
                'INSERT INTO approval_decisions(approval_id, target, decision, "user", comment, at) '
                "VALUES(?,?,?,?,?,?)",
                [(approval_id, target, decision.value, user, comment, stamp) for target in targets])
            still = sorted({job.target for job in held if job.target not in targets})
            if not still:
                connection.execute("UPDATE approvals SET state=? WHERE id=?",
                                   (ApprovalState.DECIDED.value, approval_id))
            return Decided(approval_id, approval["rule"], approval["patient_id"] or "",
                           approval["study_uid"] or "", decision.value, targets, job_ids, still)

    # -- expiry and re-opening --------------------------------------------------------------------
    def expire_due(self, now: float) -> list[Decided]:
        """Approvals nobody decided in time: their held jobs are parked with the reason."""
        expired: list[Decided] = []
        with self.db.transaction() as connection:
            for approval in connection.execute(
                    "SELECT * FROM approvals WHERE state='waiting' AND expires_epoch<=? ORDER BY id "
                    "LIMIT 100" + self._locking, (now,)).fetchall():
                held = _held_jobs(connection, approval["id"])
                reason = expiry_reason(approval["expires_seconds"], json.loads(approval["approvers"]))
                stamp = now_iso()
                connection.executemany(
                    "UPDATE jobs SET state='dead', last_status=?, last_error=?, updated_at=? "
                    "WHERE id=? AND state=?",
                    [(HOLD_EXPIRED, reason, stamp, job.id, HELD) for job in held])
                targets = sorted({job.target for job in held})
                connection.executemany(
                    'INSERT INTO approval_decisions(approval_id, target, decision, "user", '
                    "comment, at) VALUES(?,?,?,?,?,?)",
                    [(approval["id"], target, "expired", EXPIRED_BY, reason, stamp)
                     for target in targets])
                connection.execute("UPDATE approvals SET state=? WHERE id=?",
                                   (ApprovalState.EXPIRED.value, approval["id"]))
                expired.append(Decided(approval["id"], approval["rule"],
                                       approval["patient_id"] or "", approval["study_uid"] or "",
                                       "expired", targets, [job.id for job in held]))
        return expired

    def reopen_retried(self, now: float) -> list[int]:
        """A job parked by expiry and retried by hand is held again: its approval waits anew."""
        with self.db.transaction() as connection:
            rows = connection.execute(
                "SELECT DISTINCT a.id FROM approvals a JOIN approval_jobs aj ON aj.approval_id=a.id "
                "JOIN jobs j ON j.id=aj.job_id WHERE a.state<>'waiting' AND j.state=?",
                (HELD,)).fetchall()
            ids = [int(row["id"]) for row in rows]
            connection.executemany(
                "UPDATE approvals SET state='waiting', expires_epoch=?+expires_seconds, labelled=0 "
                "WHERE id=?", [(now, approval_id) for approval_id in ids])
        return ids

    def close_emptied(self) -> int:
        """A waiting approval whose held jobs were all cancelled by hand has nothing to decide."""
        with self.db.transaction() as connection:
            return connection.execute(
                "UPDATE approvals SET state='decided' WHERE state='waiting' AND NOT EXISTS("
                "SELECT 1 FROM approval_jobs aj JOIN jobs j ON j.id=aj.job_id WHERE "
                "aj.approval_id=approvals.id AND j.state=?)", (HELD,)).rowcount

    # -- the page's words and Orthanc's labels ----------------------------------------------------
    def undescribed(self, limit: int = 20) -> Sequence[DbRow]:
        return self.db.query("SELECT id, level, resource_id, patient_id, study_uid FROM approvals "
                             "WHERE described=0 ORDER BY id LIMIT ?", (limit,))

    def describe(self, approval_id: int, words: dict[str, str]) -> None:
        with self.db.transaction() as connection:
            connection.execute(
                "UPDATE approvals SET patient_name=?, study_description=?, study_date=?, "
                "plan_label=?, described=1 WHERE id=?",
                (words.get("patient_name", ""), words.get("study_description", ""),
                 words.get("study_date", ""), words.get("plan_label", ""), approval_id))

    def plan_label(self, plan_uid: str) -> str:
        rows = self.db.query("SELECT plan_label FROM plan_bundles WHERE plan_uid=?", (plan_uid,))
        return (rows[0]["plan_label"] or "") if rows else ""

    def labels_due(self) -> tuple[Sequence[DbRow], Sequence[DbRow]]:
        """(studies to label as awaiting approval, studies whose last waiting approval ended)."""
        add = self.db.query("SELECT id, patient_id, study_uid FROM approvals WHERE "
                            "state='waiting' AND labelled=0 LIMIT 50")
        remove = self.db.query(
            "SELECT id, patient_id, study_uid FROM approvals a WHERE state<>'waiting' AND "
            "labelled=1 AND NOT EXISTS(SELECT 1 FROM approvals b WHERE b.state='waiting' AND "
            "b.study_uid=a.study_uid AND b.patient_id=a.patient_id) LIMIT 50")
        return add, remove

    def set_labelled(self, approval_id: int, labelled: bool) -> None:
        self.db.execute("UPDATE approvals SET labelled=? WHERE id=?", (int(labelled), approval_id))

    # -- reading ----------------------------------------------------------------------------------
    def page(self, state: str | None, offset: int, limit: int) -> tuple[int, list[dict[str, Any]]]:
        where, values = ("WHERE state=?", [state]) if state else ("", [])
        total = self.db.query(f"SELECT COUNT(*) AS n FROM approvals {where}", values)[0]["n"]
        # Waiting: oldest first (the one expiring soonest); finished: newest first.
        order = "expires_epoch ASC, id ASC" if state == "waiting" else "id DESC"
        rows = self.db.query(f"SELECT * FROM approvals {where} ORDER BY {order} LIMIT ? OFFSET ?",
                             [*values, limit, offset])
        return total, [self._json(row) for row in rows]

    def get(self, approval_id: int) -> dict[str, Any] | None:
        rows = self.db.query("SELECT * FROM approvals WHERE id=?", (approval_id,))
        return self._json(rows[0]) if rows else None

    def counts(self) -> dict[str, int]:
        return {row["state"]: row["n"] for row in self.db.query(
            "SELECT state, COUNT(*) AS n FROM approvals GROUP BY state")}

    def waiting_for(self, target: str) -> int:
        return int(self.db.query(
            "SELECT COUNT(DISTINCT aj.approval_id) AS n FROM approval_jobs aj JOIN jobs j ON "
            "j.id=aj.job_id WHERE j.target=? AND j.state=?", (target, HELD))[0]["n"])

    def _json(self, row: DbRow) -> dict[str, Any]:
        jobs = self.db.query(
            "SELECT j.id, j.target, j.state, j.action, (SELECT COUNT(*) FROM job_items i WHERE "
            "i.job_id=j.id) AS instances, (SELECT COUNT(*) FROM job_items i WHERE i.job_id=j.id "
            "AND i.state='sent') AS sent FROM approval_jobs aj JOIN jobs j ON j.id=aj.job_id "
            "WHERE aj.approval_id=? ORDER BY j.id", (row["id"],))
        decisions = self.db.query(
            'SELECT target, decision, "user", comment, at FROM approval_decisions WHERE '
            "approval_id=? ORDER BY id", (row["id"],))
        targets: dict[str, dict[str, Any]] = {}
        for job in jobs:
            entry = targets.setdefault(job["target"], {
                "target": job["target"], "job_ids": [], "instances": 0, "sent": 0, "states": []})
            entry["job_ids"].append(job["id"])
            entry["instances"] += job["instances"]
            entry["sent"] += job["sent"]
            entry["states"].append(job["state"])
        # What a physicist recognises a study by: its plans (read now, so a plan tracked after
        # the hold is named too).
        labels = [row["plan_label"] for row in self.db.query(
            "SELECT plan_label FROM plan_bundles WHERE study_uid=? AND patient_id=? AND "
            "COALESCE(plan_label, '')<>'' ORDER BY first_seen_epoch LIMIT 10",
            (row["study_uid"] or "", row["patient_id"] or ""))] if row["level"] != "plan" else []
        for entry in targets.values():
            entry["held"] = HELD in entry["states"]
            entry["decisions"] = [dict(d) for d in decisions if d["target"] == entry["target"]]
        return {
            "id": row["id"], "rule": row["rule"], "level": row["level"],
            "resource_id": row["resource_id"], "patient_id": row["patient_id"] or "",
            "study_uid": row["study_uid"] or "", "patient_name": row["patient_name"] or "",
            "study_description": row["study_description"] or "",
            "study_date": row["study_date"] or "", "plan_label": row["plan_label"] or "",
            "plans_of_study": labels,
            "approvers": json.loads(row["approvers"]), "state": row["state"],
            "created_at": row["created_at"], "expires_at": iso_at(row["expires_epoch"]),
            "targets": list(targets.values()),
            "decisions": [dict(d) for d in decisions],
        }


def _held_jobs(connection: DbConnection, approval_id: int) -> list[Job]:
    return [Job.of_row(row) for row in connection.execute(
        "SELECT j.* FROM approval_jobs aj JOIN jobs j ON j.id=aj.job_id WHERE "
        "aj.approval_id=? AND j.state=? ORDER BY j.id", (approval_id, HELD)).fetchall()]
