"""Follows described instances into plan bundles and runs the plan-complete rules.

Called by the intake after each describe pass (Intake.after_describe), in the intake thread. Its
cursor over the received table lives in the ctx database, so a restart goes on where it was.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from io import BytesIO
from typing import TYPE_CHECKING, Any

from pydicom import dcmread

from orthanc_plugin.audit.clock import now_iso
from orthanc_plugin.jobs.apply import Applied, queue_rule_actions
from orthanc_plugin.jobs.queue import JobSpec
from orthanc_plugin.labels import HELD, orthanc_study_id
from orthanc_plugin.plans.model import RT_MODALITIES, RtObject, StoredInstance, build_bundles
from orthanc_plugin.plans.references import REFERENCE_KEYWORDS, rt_object
from orthanc_plugin.ports import HostError
from orthanc_plugin.rules import Rule, Trigger, evaluate
from orthanc_plugin.rules.priority import Priority

if TYPE_CHECKING:
    from orthanc_plugin.context import CapabilityContext

CURSOR_KEY = "plans_cursor"
BATCH = 200
MAX_READ_FAILURES = 3
FINAL_OUTCOMES = ("fired", "not-matched")
GRACE_OUTCOMES = ("forwarded-incomplete", "held", "grace-not-matched")


class PlanTracker:
    def __init__(self, ctx: CapabilityContext, expected_doses: int = 1) -> None:
        self.ctx = ctx
        self.db = ctx.db
        self.host = ctx.host
        self.expected_doses = expected_doses
        self._read_failures: dict[str, int] = {}

    # -- the hook --------------------------------------------------------------------------------
    def step(self) -> bool:
        busy = self._follow_received()
        if self._run_rules():
            self.ctx.wake_workers()
        return busy

    def _follow_received(self) -> bool:
        cursor = int(self.db.get_meta(CURSOR_KEY) or 0)
        rows = self.db.query(
            "SELECT * FROM received WHERE seq > ? ORDER BY seq LIMIT ?", (cursor, BATCH)
        )
        handled: list[sqlite3.Row] = []
        objects: dict[str, _ReadObject | None] = {}
        for row in rows:
            if row["state"] == "new":
                break  # not described yet: wait for it, keep the order
            if row["state"] == "ready" and row["modality"] in RT_MODALITIES:
                try:
                    objects[row["instance_id"]] = self._read_references(row["instance_id"])
                except Exception as error:
                    failures = self._read_failures.get(row["instance_id"], 0) + 1
                    self._read_failures[row["instance_id"]] = failures
                    if failures < MAX_READ_FAILURES:
                        break
                    objects[row["instance_id"]] = None
                    self.ctx.recorder.event(
                        "plan-references-unreadable", status="error",
                        resource_id=row["instance_id"], patient_id=row["patient_id"] or "",
                        study_uid=row["study_uid"] or "", detail=f"{type(error).__name__}: {error}",
                    )
            handled.append(row)
        if not handled:
            return False
        patients = {row["patient_id"] or "" for row in handled if row["state"] == "ready"}
        with self.db.transaction() as connection:
            for row in handled:
                item = objects.get(row["instance_id"])
                if item is not None:
                    _record_object(connection, row, item)
            for patient_id in patients:
                self.refresh_patient(connection, patient_id)
            self.db.set_meta(CURSOR_KEY, str(handled[-1]["seq"]), connection)
        return len(rows) == BATCH and len(handled) == len(rows)

    def _read_references(self, instance_id: str) -> _ReadObject | None:
        try:
            data = self.host.get_bytes(f"/instances/{instance_id}/file")
        except HostError as error:
            if error.missing:
                return None
            raise
        # Only the reference attributes are parsed: an RTSTRUCT's contours are skipped unread
        # except for the per-contour image references.
        ds = dcmread(BytesIO(data), force=True,
                     specific_tags=[*REFERENCE_KEYWORDS, "RTPlanName", "RTPlanDate"])
        return _ReadObject(rt_object(ds), str(ds.get("RTPlanName", "") or ""),
                           str(ds.get("RTPlanDate", "") or ""))

    # -- bundles ---------------------------------------------------------------------------------
    def refresh_patient(self, connection: sqlite3.Connection, patient_id: str) -> None:
        object_rows = connection.execute(
            "SELECT o.*, r.study_id, r.remote_ip FROM rt_objects o JOIN received r "
            "ON r.instance_id = o.instance_id WHERE o.patient_id=? AND r.state='ready'",
            (patient_id,),
        ).fetchall()
        objects = [
            RtObject(row["sop_instance_uid"], row["modality"],
                     tuple(json.loads(row["references_json"])), row["plan_label"] or "",
                     row["dose_summation"] or "", row["beam_count"] or 0)
            for row in object_rows
        ]
        wanted = {item.sop_instance_uid for item in objects}
        for item in objects:
            wanted.update(item.references)
        stored = _stored_by_uid(connection, sorted(wanted))
        plans = {row["sop_instance_uid"]: row for row in object_rows if row["modality"] == "RTPLAN"}
        now = time.time()
        for bundle in build_bundles(objects, stored, self.expected_doses):
            plan = plans[bundle.plan_uid]
            members = [
                {"instance_id": m.instance_id, "sop_instance_uid": m.sop_instance_uid,
                 "modality": m.modality, "series_uid": m.series_uid}
                for m in bundle.members
            ]
            study_tags = self.ctx.facts.study_tags(plan["study_id"])
            connection.execute(
                "INSERT INTO plan_bundles(plan_uid, plan_instance_id, patient_id, patient_name,"
                " study_uid, calling_aet, remote_ip, plan_label, plan_name, plan_date, complete,"
                " missing_json, members_json, first_seen_epoch, completed_epoch, updated_at,"
                " accession_number, patient_birth_date, patient_sex)"
                " VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT(plan_uid) DO UPDATE SET"
                " complete=excluded.complete, missing_json=excluded.missing_json,"
                " accession_number=excluded.accession_number,"
                " patient_birth_date=excluded.patient_birth_date,"
                " patient_sex=excluded.patient_sex,"
                " members_json=excluded.members_json, updated_at=excluded.updated_at,"
                " completed_epoch=COALESCE(plan_bundles.completed_epoch, excluded.completed_epoch)",
                (
                    bundle.plan_uid, plan["instance_id"], patient_id,
                    study_tags.get("PatientName", ""), plan["study_uid"], plan["calling_aet"],
                    plan["remote_ip"], plan["plan_label"], plan["plan_name"], plan["plan_date"],
                    int(bundle.complete), json.dumps(list(bundle.missing)), json.dumps(members),
                    now, now if bundle.complete else None, now_iso(),
                    study_tags.get("AccessionNumber", ""),
                    study_tags.get("PatientBirthDate", ""), study_tags.get("PatientSex", ""),
                ),
            )

    # -- plan-complete rules ---------------------------------------------------------------------
    def _run_rules(self) -> bool:
        ruleset = self.ctx.rules()
        rules = ruleset.for_trigger(Trigger.PLAN_COMPLETE)
        if not rules:
            return False
        queued = False
        now = time.time()
        for rule in rules:
            pending = self.db.query(
                "SELECT * FROM plan_bundles b WHERE NOT EXISTS (SELECT 1 FROM plan_rule_runs r "
                "WHERE r.rule=? AND r.plan_uid=b.plan_uid AND r.outcome IN (?,?)) "
                "ORDER BY first_seen_epoch",
                (rule.name, *FINAL_OUTCOMES),
            )
            for bundle in pending:
                if bundle["complete"]:
                    queued |= self._act(rule, bundle, grace=False)
                elif (rule.complete_within_seconds is not None
                      and now - bundle["first_seen_epoch"] >= rule.complete_within_seconds
                      and not self._ran(rule.name, bundle["plan_uid"], GRACE_OUTCOMES)):
                    queued |= self._act(rule, bundle, grace=True)
        return queued

    def _ran(self, rule: str, plan_uid: str, outcomes: Sequence[str]) -> bool:
        marks = ",".join("?" * len(outcomes))
        return bool(self.db.query(
            f"SELECT 1 FROM plan_rule_runs WHERE rule=? AND plan_uid=? AND outcome IN ({marks})",
            (rule, plan_uid, *outcomes),
        ))

    def _act(self, rule: Rule, bundle: sqlite3.Row, grace: bool) -> bool:
        """Fire on a complete bundle, or apply `then` to one still incomplete after the wait."""
        missing = json.loads(bundle["missing_json"])
        hold = grace and rule.then == "hold"
        ruleset = self.ctx.rules()
        with self.db.transaction() as connection:
            rows = _member_rows(connection, bundle)
            facts = self.ctx.facts.build(rows, (bundle["plan_label"] or "",))
            evaluation = evaluate(rule, facts) if rows else None
            matched = bool(evaluation and evaluation.matched)
            applied = Applied()
            if matched and not hold and evaluation is not None:
                chosen = set(evaluation.instance_ids)
                ordered = [row["instance_id"] for row in rows if row["instance_id"] in chosen]
                applied = queue_rule_actions(
                    connection, self.ctx.queue, self.ctx.registry, rule, ordered,
                    lambda job_action, target: plan_job_spec(
                        rule.name, rule.on.value, job_action, target, bundle, rule.priority))
            job_ids, new_instances, targets = (applied.job_ids, applied.new_instances,
                                               applied.targets)
            if grace:
                outcome = ("held" if hold else "forwarded-incomplete") if matched else "grace-not-matched"
            else:
                outcome = "fired" if matched else "not-matched"
            self.ctx.recorder.evaluation(
                connection, trigger=Trigger.PLAN_COMPLETE.value, level="plan",
                resource_id=bundle["plan_uid"], patient_id=bundle["patient_id"] or "",
                study_uid=bundle["study_uid"] or "", rule=rule.name, matched=matched,
                failed_condition=evaluation.failed_condition if evaluation else None,
                reason=evaluation.reason if evaluation else "the bundle has no stored member",
                instances=len(evaluation.instance_ids) if evaluation else 0,
                new_instances=new_instances, rules_sha256=ruleset.sha256,
                source={"remote_ip": bundle["remote_ip"] or "",
                        "calling_aet": bundle["calling_aet"] or ""},
                targets=targets,
            )
            if grace and matched:
                what = "held" if hold else f"forwarded incomplete ({new_instances} instance(s))"
                self.ctx.recorder.event(
                    "plan-incomplete", status=outcome, rule=rule.name,
                    resource_id=bundle["plan_uid"], patient_id=bundle["patient_id"] or "",
                    study_uid=bundle["study_uid"] or "",
                    detail=f"plan {bundle['plan_label']!r} {what} after "
                    f"{rule.complete_within_seconds:g}s; missing: {'; '.join(missing)}",
                    connection=connection,
                )
            connection.execute(
                "INSERT OR IGNORE INTO plan_rule_runs(rule, plan_uid, outcome, at, missing_json, jobs)"
                " VALUES(?,?,?,?,?,?)",
                (rule.name, bundle["plan_uid"], outcome, now_iso(), json.dumps(missing),
                 len(job_ids)),
            )
        if grace and matched and hold and bundle["study_uid"]:
            # After the transaction: a label is a REST call, never made holding the write lock.
            self.ctx.labels.add(orthanc_study_id(bundle["patient_id"] or "", bundle["study_uid"]),
                                HELD)
        return new_instances > 0


def plan_job_spec(rule: str, trigger: str, action: str, target: str, bundle: Any,
                  priority: int = Priority.NORMAL) -> JobSpec:
    return JobSpec(
        rule=rule, action=action, trigger=trigger, level="plan", resource_id=bundle["plan_uid"],
        target=target, patient_id=bundle["patient_id"] or "", study_uid=bundle["study_uid"] or "",
        calling_aet=bundle["calling_aet"] or "", remote_ip=bundle["remote_ip"] or "",
        priority=priority,
    )


@dataclass(frozen=True)
class _ReadObject:
    rt: RtObject
    plan_name: str
    plan_date: str


def _record_object(connection: sqlite3.Connection, row: sqlite3.Row, read: _ReadObject) -> None:
    item, plan_name, plan_date = read.rt, read.plan_name, read.plan_date
    connection.execute(
        "INSERT INTO rt_objects(instance_id, sop_instance_uid, modality, patient_id, study_uid,"
        " calling_aet, plan_label, plan_name, plan_date, references_json, recorded_at,"
        " dose_summation, beam_count) VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?)"
        " ON CONFLICT(instance_id) DO UPDATE SET references_json=excluded.references_json",
        (
            row["instance_id"], item.sop_instance_uid, item.modality, row["patient_id"],
            row["study_uid"], row["calling_aet"], item.plan_label, plan_name, plan_date,
            json.dumps(list(item.references)), now_iso(), item.dose_summation, item.beam_count,
        ),
    )


def _stored_by_uid(connection: sqlite3.Connection, uids: Sequence[str]) -> dict[str, StoredInstance]:
    stored: dict[str, StoredInstance] = {}
    for start in range(0, len(uids), 500):
        chunk = uids[start:start + 500]
        marks = ",".join("?" * len(chunk))
        for row in connection.execute(
            "SELECT instance_id, sop_instance_uid, modality, series_uid, instance_number "
            f"FROM received WHERE state='ready' AND sop_instance_uid IN ({marks})", chunk,
        ):
            stored[row["sop_instance_uid"]] = StoredInstance(
                row["instance_id"], row["sop_instance_uid"], row["modality"] or "",
                row["series_uid"] or "", row["instance_number"] or 0,
            )
    return stored


def _member_rows(connection: sqlite3.Connection, bundle: Any) -> list[sqlite3.Row]:
    """The received rows of the bundle's members, in the bundle's sending order."""
    ids = [member["instance_id"] for member in json.loads(bundle["members_json"])]
    rows: dict[str, sqlite3.Row] = {}
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        marks = ",".join("?" * len(chunk))
        for row in connection.execute(
            f"SELECT * FROM received WHERE state='ready' AND instance_id IN ({marks})", chunk
        ):
            rows[row["instance_id"]] = row
    return [rows[iid] for iid in ids if iid in rows]
