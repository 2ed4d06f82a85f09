"""Follows described instances into plan bundles and runs the plan-complete rules.

Called by the intake after each describe pass (Intake.after_describe), in the intake thread. Its
cursor over the received table lives in the ctx database, so a restart goes on where it was.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from io import BytesIO
from typing import TYPE_CHECKING

from pydicom import dcmread

from orthanc_plugin.audit.clock import now_iso
from orthanc_plugin.db_engine import DbConnection
from orthanc_plugin.jobs.apply import Applied, queue_rule_actions
from orthanc_plugin.jobs.intake_store import Received
from orthanc_plugin.jobs.queue import JobSpec
from orthanc_plugin.labels import HELD, orthanc_study_id
from orthanc_plugin.plans import store
from orthanc_plugin.plans.model import RT_MODALITIES, RtObject, build_bundles
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
        rows = store.received_after(self.db, cursor, BATCH)
        handled: list[store.ReceivedRow] = []
        objects: dict[str, _ReadObject | None] = {}
        for row in rows:
            if row.state == "new":
                break  # not described yet: wait for it, keep the order
            if row.state == "ready" and row.modality in RT_MODALITIES:
                try:
                    objects[row.instance_id] = self._read_references(row.instance_id)
                except Exception as error:
                    failures = self._read_failures.get(row.instance_id, 0) + 1
                    self._read_failures[row.instance_id] = failures
                    if failures < MAX_READ_FAILURES:
                        break
                    objects[row.instance_id] = None
                    self.ctx.recorder.event(
                        "plan-references-unreadable", status="error",
                        resource_id=row.instance_id, patient_id=row.patient_id or "",
                        study_uid=row.study_uid or "", detail=f"{type(error).__name__}: {error}",
                    )
            handled.append(row)
        if not handled:
            return False
        patients = {row.patient_id or "" for row in handled if row.state == "ready"}
        with self.db.transaction() as connection:
            # Another node building these patients' bundles waits, or is waited for.
            store.lock_patients(self.db, connection, patients)
            for row in handled:
                item = objects.get(row.instance_id)
                if item is not None:
                    store.record_object(connection, row, item.rt, item.plan_name, item.plan_date,
                                        now_iso())
            for patient_id in patients:
                self.refresh_patient(connection, patient_id)
            self.db.set_meta(CURSOR_KEY, str(handled[-1].seq), connection)
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
    def refresh_patient(self, connection: DbConnection, patient_id: str) -> None:
        recorded = store.patient_objects(connection, patient_id)
        objects = [row.rt for row in recorded]
        wanted = {item.sop_instance_uid for item in objects}
        for item in objects:
            wanted.update(item.references)
        stored = store.stored_by_uid(connection, sorted(wanted))
        plans = {row.rt.sop_instance_uid: row for row in recorded if row.rt.modality == "RTPLAN"}
        now = time.time()
        for bundle in build_bundles(objects, stored, self.expected_doses):
            plan = plans[bundle.plan_uid]
            members = [
                {"instance_id": m.instance_id, "sop_instance_uid": m.sop_instance_uid,
                 "modality": m.modality, "series_uid": m.series_uid}
                for m in bundle.members
            ]
            study_tags = self.ctx.facts.study_tags(plan.study_id)
            store.save_bundle(connection, store.BundleState(
                plan_uid=bundle.plan_uid, plan_instance_id=plan.instance_id,
                patient_id=patient_id, patient_name=study_tags.get("PatientName", ""),
                study_uid=plan.study_uid, calling_aet=plan.calling_aet,
                remote_ip=plan.remote_ip, plan_label=plan.plan_label, plan_name=plan.plan_name,
                plan_date=plan.plan_date, complete=bundle.complete, missing=bundle.missing,
                members=members, accession_number=study_tags.get("AccessionNumber", ""),
                patient_birth_date=study_tags.get("PatientBirthDate", ""),
                patient_sex=study_tags.get("PatientSex", ""),
            ), now, now_iso())

    # -- plan-complete rules ---------------------------------------------------------------------
    def _run_rules(self) -> bool:
        ruleset = self.ctx.rules()
        rules = ruleset.for_trigger(Trigger.PLAN_COMPLETE)
        if not rules:
            return False
        queued = False
        now = time.time()
        for rule in rules:
            for bundle in store.bundles_not_run(self.db, rule.name, FINAL_OUTCOMES):
                if bundle.complete:
                    queued |= self._act(rule, bundle, grace=False)
                elif (rule.complete_within_seconds is not None
                      and now - bundle.first_seen_epoch >= rule.complete_within_seconds
                      and not store.has_run(self.db, rule.name, bundle.plan_uid, GRACE_OUTCOMES)):
                    queued |= self._act(rule, bundle, grace=True)
        return queued

    def _act(self, rule: Rule, bundle: store.PlanBundle, grace: bool) -> bool:
        """Fire on a complete bundle, or apply `then` to one still incomplete after the wait."""
        missing = bundle.missing
        hold = grace and rule.then == "hold"
        ruleset = self.ctx.rules()
        with self.db.transaction() as connection:
            # Another node may have acted on the plan since bundles_not_run: once only.
            if not store.rule_still_to_run(self.db, connection, rule.name, bundle.plan_uid,
                                           (*FINAL_OUTCOMES, *GRACE_OUTCOMES) if grace
                                           else FINAL_OUTCOMES):
                return False
            rows = member_rows(connection, bundle)
            facts = self.ctx.facts.build(rows, (bundle.plan_label or "",))
            evaluation = evaluate(rule, facts) if rows else None
            matched = bool(evaluation and evaluation.matched)
            applied = Applied()
            if matched and not hold and evaluation is not None:
                chosen = set(evaluation.instance_ids)
                ordered = [row.instance_id for row in rows if row.instance_id in chosen]
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
                resource_id=bundle.plan_uid, patient_id=bundle.patient_id or "",
                study_uid=bundle.study_uid or "", rule=rule.name, matched=matched,
                failed_condition=evaluation.failed_condition if evaluation else None,
                reason=evaluation.reason if evaluation else "the bundle has no stored member",
                instances=len(evaluation.instance_ids) if evaluation else 0,
                new_instances=new_instances, rules_sha256=ruleset.sha256,
                source={"remote_ip": bundle.remote_ip or "",
                        "calling_aet": bundle.calling_aet or ""},
                targets=targets,
            )
            if grace and matched:
                what = "held" if hold else f"forwarded incomplete ({new_instances} instance(s))"
                self.ctx.recorder.event(
                    "plan-incomplete", status=outcome, rule=rule.name,
                    resource_id=bundle.plan_uid, patient_id=bundle.patient_id or "",
                    study_uid=bundle.study_uid or "",
                    detail=f"plan {bundle.plan_label!r} {what} after "
                    f"{rule.complete_within_seconds:g}s; missing: {'; '.join(missing)}",
                    connection=connection,
                )
            store.record_rule_run(connection, rule.name, bundle.plan_uid, outcome, now_iso(),
                                  missing, len(job_ids))
        if grace and matched and hold and bundle.study_uid:
            # After the transaction: a label is a REST call, never made holding the write lock.
            self.ctx.labels.add(orthanc_study_id(bundle.patient_id or "", bundle.study_uid),
                                HELD)
        return new_instances > 0


def plan_job_spec(rule: str, trigger: str, action: str, target: str, bundle: store.PlanBundle,
                  priority: int = Priority.NORMAL) -> JobSpec:
    return JobSpec(
        rule=rule, action=action, trigger=trigger, level="plan", resource_id=bundle.plan_uid,
        target=target, patient_id=bundle.patient_id or "", study_uid=bundle.study_uid or "",
        calling_aet=bundle.calling_aet or "", remote_ip=bundle.remote_ip or "",
        priority=priority,
    )


@dataclass(frozen=True)
class _ReadObject:
    rt: RtObject
    plan_name: str
    plan_date: str


def member_rows(connection: DbConnection, bundle: store.PlanBundle) -> list[Received]:
    """The received rows of the bundle's members, in the bundle's sending order."""
    return store.member_rows(connection, [member["instance_id"] for member in bundle.members])
