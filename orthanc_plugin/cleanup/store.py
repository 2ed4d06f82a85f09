"""What the gateway's database says about a study the clean-up might delete: its arrival and what
still concerns it. Read-only; the only SQL of the clean-up.

It reads the tables of the queue, the intake, plans and harvests: the clean-up's guard is exactly
"none of them still needs this study".
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from orthanc_plugin.db_engine import DbRow, StateDatabase
from orthanc_plugin.harvest.model import ACTIVE_STATES
from orthanc_plugin.jobs.records import Job
from orthanc_plugin.jobs.states import JobState
from orthanc_plugin.retention import FOLLOWER_CURSORS

# Jobs that are the clean-up's own (delete-after) never keep a study: they end with it.
OPEN_JOB_STATES = ("pending", "held", "running", "dead")
MOST_NAMED = 3          # blockers of one kind named one by one; the rest counted
_HARVEST_ACTIVE = tuple(state.value for state in ACTIVE_STATES)


@dataclass(frozen=True)
class Arrival:
    last_epoch: float | None
    unfinished: int          # instances the intake has not yet routed (described, rules run)
    stable_pending: bool     # the study's stable-study rules have not yet run past its last one
    followers_behind: bool   # the SQL index or the plan tracker has not yet read its last one


class CleanupStore:
    def __init__(self, db: StateDatabase, own_actions: tuple[str, ...]) -> None:
        self.db = db
        self.own_actions = own_actions

    # -- a study --------------------------------------------------------------------------------
    def arrival(self, study_id: str) -> Arrival:
        rows = self.db.query(
            "SELECT MAX(seq) AS last_seq, MAX(received_at) AS last_at, SUM(CASE WHEN state='new' OR "
            "(state='ready' AND instance_rules_done=0) THEN 1 ELSE 0 END) AS unfinished "
            "FROM received WHERE study_id=?", (study_id,))
        last_seq = rows[0]["last_seq"] if rows else None
        progress = self.db.query(
            "SELECT last_received_at, stable_done_seq FROM study_progress WHERE study_id=?",
            (study_id,))
        last_epoch: float | None = None
        stable_pending = False
        if progress:
            last_epoch = float(progress[0]["last_received_at"])
            stable_pending = last_seq is not None and progress[0]["stable_done_seq"] < last_seq
        elif rows and rows[0]["last_at"]:
            last_epoch = datetime.fromisoformat(rows[0]["last_at"]).timestamp()
        cursors = [int(row["value"]) for row in self.db.query(
            f"SELECT value FROM meta WHERE key IN ({_marks(FOLLOWER_CURSORS)})", FOLLOWER_CURSORS)]
        behind = last_seq is not None and any(cursor < last_seq for cursor in cursors)
        return Arrival(last_epoch, int(rows[0]["unfinished"] or 0) if rows else 0,
                       stable_pending, behind)

    def study_needs(self, study_id: str, study_uid: str,
                    patient_id: str) -> tuple[Arrival, list[str]]:
        """Its arrival, and what still needs the study besides its jobs: the intake and its
        followers, its patient's plans, a harvest. One wording for a study and a relay's instance."""
        arrival = self.arrival(study_id)
        needs = []
        if arrival.unfinished:
            needs.append(f"{arrival.unfinished} instance(s) of the study not yet routed")
        if arrival.stable_pending:
            needs.append("the study's stable-study rules have not yet run")
        if arrival.followers_behind:
            needs.append("the SQL index or the plan tracker has not yet read its last instance")
        return arrival, needs + self.patient_plans(patient_id, study_uid) + self.harvests(patient_id)

    def open_jobs(self, study_id: str, study_uid: str) -> list[str]:
        """Jobs not delivered nor cancelled that concern the study, by its UID or its instances."""
        rows = self.db.query(
            f"SELECT * FROM jobs "
            f"WHERE state IN ({_marks(OPEN_JOB_STATES)}) AND action NOT IN "
            f"({_marks(self.own_actions)}) AND (study_uid=? OR id IN (SELECT i.job_id FROM "
            f"job_items i JOIN received r ON r.instance_id=i.instance_id WHERE r.study_id=?)) "
            f"ORDER BY id", (*OPEN_JOB_STATES, *self.own_actions, study_uid, study_id))
        return _named([_job_text(Job.of_row(row)) for row in rows], "more job(s) not finished")

    def instance_jobs(self, instance_id: str) -> list[str]:
        """Jobs not delivered nor cancelled that carry this instance."""
        rows = self.db.query(
            f"SELECT j.* FROM job_items i "
            f"JOIN jobs j ON j.id=i.job_id WHERE i.instance_id=? AND j.state IN "
            f"({_marks(OPEN_JOB_STATES)}) AND j.action NOT IN ({_marks(self.own_actions)}) "
            f"ORDER BY j.id", (instance_id, *OPEN_JOB_STATES, *self.own_actions))
        return _named([_job_text(Job.of_row(row)) for row in rows], "more job(s) not finished")

    def study_of(self, instance_id: str) -> tuple[str, str, str] | None:
        """(Orthanc study ID, StudyInstanceUID, PatientID) of a received instance."""
        rows = self.db.query("SELECT study_id, study_uid, patient_id FROM received "
                             "WHERE instance_id=?", (instance_id,))
        if not rows or not rows[0]["study_id"]:
            return None
        return rows[0]["study_id"], rows[0]["study_uid"] or "", rows[0]["patient_id"] or ""

    def patient_plans(self, patient_id: str, study_uid: str) -> list[str]:
        """Incomplete plans of the patient, and plans of the study a rule holds."""
        reasons = []
        for row in self.db.query(
                "SELECT plan_label, plan_name, missing_json FROM plan_bundles WHERE patient_id=? "
                "AND complete=0 ORDER BY first_seen_epoch", (patient_id,)):
            missing = _missing_text(row["missing_json"])
            reasons.append(f"plan {_plan_name(row)} of this patient is incomplete"
                           + (f" (missing {missing})" if missing else ""))
        for row in self.db.query(
                "SELECT DISTINCT b.plan_label, b.plan_name, r.rule FROM plan_rule_runs r JOIN "
                "plan_bundles b ON b.plan_uid=r.plan_uid WHERE b.study_uid=? AND r.outcome='held' "
                "AND NOT EXISTS (SELECT 1 FROM plan_rule_runs f WHERE f.plan_uid=r.plan_uid AND "
                "f.rule=r.rule AND f.outcome<>'held')", (study_uid,)):
            reasons.append(f"plan {_plan_name(row)} is held by rule '{row['rule']}'")
        return _named(reasons, "more plan(s)")

    def harvests(self, patient_id: str) -> list[str]:
        rows = self.db.query(
            f"SELECT DISTINCT h.id, h.name FROM harvest_items i JOIN harvests h ON "
            f"h.id=i.harvest_id WHERE i.patient_id=? AND h.state IN ('running','paused') AND "
            f"i.state IN ({_marks(_HARVEST_ACTIVE)})", (patient_id, *_HARVEST_ACTIVE))
        return [f"harvest {row['id']}" + (f" '{row['name']}'" if row["name"] else "")
                + " is still fetching this patient" for row in rows]

    def known_studies(self) -> set[str]:
        return {row["study_id"] for row in self.db.query("SELECT study_id FROM study_progress")}


def _job_text(job: Job) -> str:
    state = {"pending": "waiting to run", "running": "running", "dead": "parked",
             "held": "awaiting approval"}[job.state]
    what = f"job {job.id} ({job.action} to {job.target}) {state}"
    if job.state == JobState.DEAD and job.last_error:
        what += f": {job.last_error}"
    elif job.state == JobState.PENDING and job.last_status == "waiting" and job.last_error:
        what += f" ({job.last_error})"
    return what


def _named(reasons: list[str], rest: str) -> list[str]:
    if len(reasons) <= MOST_NAMED:
        return reasons
    return [*reasons[:MOST_NAMED], f"{len(reasons) - MOST_NAMED} {rest}"]


def _plan_name(row: DbRow) -> str:
    label = row["plan_label"] or row["plan_name"] or "without a label"
    return f"'{label}'"


def _missing_text(missing_json: str | None) -> str:
    try:
        missing = json.loads(missing_json or "[]")
    except json.JSONDecodeError:
        return ""
    names = [str(item.get("what", item) if isinstance(item, dict) else item) for item in missing]
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def _marks(values: tuple[str, ...]) -> str:
    return ",".join("?" * len(values))
