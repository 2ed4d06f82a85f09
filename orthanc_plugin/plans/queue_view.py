"""The queue as the page shows it: one page of jobs with the patient, the plan, the target and
"37 / 120 instances", and the count of jobs in each state, in the words the page uses."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from orthanc_plugin.api.router import ApiError
from orthanc_plugin.db import Database
from orthanc_plugin.jobs.states import ALL_JOB_STATES, JobState

# The page's word for each queue state, the same on every tab ("dead" is the table's word).
STATE_WORDS = {JobState.PENDING: "waiting", JobState.RUNNING: "sending", JobState.DONE: "done",
               JobState.DEAD: "parked", JobState.CANCELLED: "cancelled",
               JobState.HELD: "awaiting approval"}
VIEWS = {"active": (JobState.PENDING, JobState.RUNNING), "held": (JobState.HELD,),
         "parked": (JobState.DEAD,), "done": (JobState.DONE,),
         "cancelled": (JobState.CANCELLED,), "all": ALL_JOB_STATES}
PER_PAGE_MAX = 200


def queue_page(db: Database, view: str, target: str, page: int, per_page: int) -> dict[str, Any]:
    if view not in VIEWS:
        raise ApiError(400, f"view: expected one of {', '.join(VIEWS)}")
    states = VIEWS[view]
    marks = ",".join("?" * len(states))
    where = f"state IN ({marks})" + (" AND target = ?" if target else "")
    values: list[Any] = [*states, *([target] if target else [])]
    total = db.query(f"SELECT COUNT(*) AS n FROM jobs WHERE {where}", values)[0]["n"]
    # Waiting work in the order it will go; finished work newest first.
    order = "id ASC" if view == "active" else "updated_at DESC, id DESC"
    rows = db.query(f"SELECT * FROM jobs WHERE {where} ORDER BY {order} LIMIT ? OFFSET ?",
                    [*values, per_page, (page - 1) * per_page])
    counts = {STATE_WORDS.get(row["state"], row["state"]): row["n"] for row in db.query(
        "SELECT state, COUNT(*) AS n FROM jobs GROUP BY state")}
    targets = [row["target"] for row in db.query(
        "SELECT DISTINCT target FROM jobs ORDER BY target LIMIT 200")]
    parked_targets = [row["target"] for row in db.query(
        "SELECT DISTINCT target FROM jobs WHERE state='dead' ORDER BY target LIMIT 200")]
    return {"total": total, "page": page, "per_page": per_page,
            "pages": max(1, -(-total // per_page)), "counts": counts, "targets": targets,
            "parked_targets": parked_targets,
            "jobs": _described(db, rows)}


def _described(db: Database, rows: Sequence[Any]) -> list[dict[str, Any]]:
    if not rows:
        return []
    job_ids = [row["id"] for row in rows]
    marks = ",".join("?" * len(job_ids))
    items: dict[int, dict[str, int]] = {}
    for row in db.query(f"SELECT job_id, state, COUNT(*) AS n FROM job_items WHERE job_id IN "
                        f"({marks}) GROUP BY job_id, state", job_ids):
        items.setdefault(row["job_id"], {})[row["state"]] = row["n"]
    plan_ids = sorted({row["resource_id"] for row in rows if row["level"] == "plan"})
    patients = sorted({row["patient_id"] for row in rows if row["patient_id"]})
    labels: dict[str, tuple[str, str, str]] = {}
    if plan_ids:
        for plan in db.query(
                f"SELECT plan_uid, plan_label, plan_name, plan_date FROM plan_bundles WHERE "
                f"plan_uid IN ({','.join('?' * len(plan_ids))})", plan_ids):
            labels[plan["plan_uid"]] = (plan["plan_label"] or "", plan["plan_name"] or "",
                                        plan["plan_date"] or "")
    names: dict[str, str] = {}
    if patients:
        for patient in db.query(
                f"SELECT patient_id, MAX(patient_name) AS name FROM plan_bundles WHERE patient_id "
                f"IN ({','.join('?' * len(patients))}) GROUP BY patient_id", patients):
            names[patient["patient_id"]] = patient["name"] or ""
    described = []
    for row in rows:
        counts = items.get(row["id"], {})
        described.append({
            "id": row["id"],
            "state": STATE_WORDS.get(row["state"], row["state"]),
            "target": row["target"],
            "rule": row["rule"],
            "manual": row["trigger"] == "manual",
            "kind": row["level"],
            "action": row["action"],
            "patient_id": row["patient_id"],
            "patient_name": names.get(row["patient_id"] or "", ""),
            "plan_label": (labels.get(row["resource_id"], ("", "", ""))[0]
                           if row["level"] == "plan" else None),
            "plan_name": labels.get(row["resource_id"], ("", "", ""))[1] or None,
            "plan_date": labels.get(row["resource_id"], ("", "", ""))[2] or None,
            "instances": sum(counts.values()),
            "sent": counts.get("sent", 0),
            "refused": counts.get("refused", 0) + counts.get("not-committed", 0),
            "gone": counts.get("gone", 0),
            "attempts": row["attempts"],
            "created_epoch": row["created_epoch"],
            "updated_at": row["updated_at"],
            "next_attempt_at": row["next_attempt_at"] if row["state"] == JobState.PENDING else None,
            "waiting_for": row["last_error"] if row["last_status"] == "waiting" else None,
            "last_error": None if row["state"] == JobState.DONE else row["last_error"],
        })
    return described
