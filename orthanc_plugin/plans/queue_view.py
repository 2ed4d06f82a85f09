"""The queue as the page shows it: one page of jobs with the patient, the plan, the target and
"37 / 120 instances", and the count of jobs in each state, in the words the page uses."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from orthanc_plugin.api.router import ApiError
from orthanc_plugin.db_engine import StateDatabase
from orthanc_plugin.jobs.states import ALL_JOB_STATES, LIVE_JOB_STATES, JobState
from orthanc_plugin.plans import store

# The page's word for each queue state, the same on every tab ("dead" is the table's word).
STATE_WORDS: dict[str, str] = {
    JobState.PENDING: "waiting", JobState.RUNNING: "sending", JobState.DONE: "done",
    JobState.DEAD: "parked", JobState.CANCELLED: "cancelled", JobState.HELD: "awaiting approval"}
VIEWS = {"active": (JobState.PENDING, JobState.RUNNING), "held": (JobState.HELD,),
         "parked": (JobState.DEAD,), "done": (JobState.DONE,),
         "cancelled": (JobState.CANCELLED,), "all": ALL_JOB_STATES}
PER_PAGE_MAX = 200


COUNTS = ("all", "live")


def queue_page(db: StateDatabase, view: str, target: str, page: int, per_page: int,
               counts_of: str = "all") -> dict[str, Any]:
    """`counts_of` "live": the counts of the live states only (the page's badge, refreshed on
    every tab), without counting the finished jobs that make most of the table."""
    if view not in VIEWS:
        raise ApiError(400, f"view: expected one of {', '.join(VIEWS)}")
    if counts_of not in COUNTS:
        raise ApiError(400, f"counts: expected one of {', '.join(COUNTS)}")
    states = VIEWS[view]
    total = store.count_jobs(db, states, target)
    # Waiting work in the order it will go; finished work newest first.
    rows = store.jobs_page(db, states, target, oldest_first=view == "active", limit=per_page,
                           offset=(page - 1) * per_page)
    counts = {STATE_WORDS.get(state, state): n for state, n in store.jobs_by_state(
        db, LIVE_JOB_STATES if counts_of == "live" else None).items()}
    targets = store.job_targets(db)
    parked_targets = store.job_targets(db, JobState.DEAD)
    return {"total": total, "page": page, "per_page": per_page,
            "pages": max(1, -(-total // per_page)), "counts": counts, "targets": targets,
            "parked_targets": parked_targets,
            "jobs": _described(db, rows)}


def _described(db: StateDatabase, rows: Sequence[store.QueueJob]) -> list[dict[str, Any]]:
    if not rows:
        return []
    items = store.item_counts(db, [row.id for row in rows])
    labels = store.plan_names(db, sorted({row.resource_id for row in rows if row.level == "plan"}))
    names = store.patient_names(db, sorted({row.patient_id for row in rows if row.patient_id}))
    unnamed = store.PlanNames("", "", "")
    described = []
    for row in rows:
        counts = items.get(row.id, {})
        plan = labels.get(row.resource_id, unnamed)
        described.append({
            "id": row.id,
            "state": STATE_WORDS.get(row.state, row.state),
            "target": row.target,
            "rule": row.rule,
            "manual": row.trigger == "manual",
            "kind": row.level,
            "action": row.action,
            "patient_id": row.patient_id,
            "patient_name": names.get(row.patient_id or "", ""),
            "plan_label": plan.label if row.level == "plan" else None,
            "plan_name": plan.name or None,
            "plan_date": plan.date or None,
            "instances": sum(counts.values()),
            "sent": counts.get("sent", 0),
            "refused": counts.get("refused", 0) + counts.get("not-committed", 0),
            "gone": counts.get("gone", 0),
            "attempts": row.attempts,
            "created_epoch": row.created_epoch,
            "updated_at": row.updated_at,
            "next_attempt_at": row.next_attempt_at if row.state == JobState.PENDING else None,
            "waiting_for": row.last_error if row.last_status == "waiting" else None,
            "last_error": None if row.state == JobState.DONE else row.last_error,
        })
    return described
