"""Approval before sending: the gate that holds a rule's new jobs, a person's decision, and the
lead worker's round (expiry, re-opening, the page's words, Orthanc's labels)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from orthanc_plugin.approvals.model import Decision, HoldAction, check_comment
from orthanc_plugin.approvals.store import ApprovalStore, Decided
from orthanc_plugin.audit.recorder import AuditRecorder
from orthanc_plugin.db_engine import DbConnection
from orthanc_plugin.jobs.queue import JobSpec
from orthanc_plugin.labels import AWAITING_APPROVAL, StudyLabels, orthanc_study_id
from orthanc_plugin.ports import Host, HostError
from orthanc_plugin.rules import Rule

EVENTS = {"approve": "approval-approved", "reject": "approval-rejected",
          "expired": "approval-expired"}


def hold_of(rule: Rule) -> HoldAction | None:
    return next((action for action in rule.actions if isinstance(action, HoldAction)), None)


class Approvals:
    def __init__(self, host: Host, store: ApprovalStore, recorder: AuditRecorder,
                 labels: StudyLabels, wake_workers: Callable[[], None]) -> None:
        self.host = host
        self.store = store
        self.recorder = recorder
        self.labels = labels
        self.wake_workers = wake_workers

    # -- the gate (inside the transaction that queued the jobs) -----------------------------------
    def gate(self, connection: DbConnection, rule: Rule,
             queued: list[tuple[int, JobSpec]]) -> None:
        hold = hold_of(rule)
        if hold is None:
            return
        approval_id = self.store.hold(connection, rule.name, hold, queued)
        spec = queued[0][1]
        targets = ", ".join(sorted({queued_spec.target for _, queued_spec in queued}))
        self.recorder.event(
            "held-for-approval", status="held", rule=rule.name, resource_id=spec.resource_id,
            patient_id=spec.patient_id, study_uid=spec.study_uid,
            detail=f"approval {approval_id}: {len(queued)} job(s) to {targets} wait for "
                   f"{', '.join(hold.approvers) or 'any signed-in user'}",
            connection=connection)

    # -- a person's decision ----------------------------------------------------------------------
    def decide(self, approval_id: int, decision: Decision, targets: Sequence[str] | None,
               user: str, comment: str) -> Decided:
        text = check_comment(decision, comment)
        decided = self.store.decide(approval_id, decision, targets, user, text)
        self._audit(decided, user, text)
        if decision == Decision.APPROVE:
            self.wake_workers()
        return decided

    def _audit(self, decided: Decided, user: str, comment: str) -> None:
        said = f" ({comment})" if comment else ""
        for target in decided.targets:
            self.recorder.event(
                EVENTS[decided.decision], status=decided.decision, rule=decided.rule,
                target=target, patient_id=decided.patient_id, study_uid=decided.study_uid,
                detail=f"approval {decided.approval_id}: {decided.decision} by {user}{said}")

    # -- the lead worker's round ------------------------------------------------------------------
    def tick(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        for expired in self.store.expire_due(now):
            self._audit(expired, "nobody", "")
        for approval_id in self.store.reopen_retried(now):
            self.recorder.event("approval-reopened", status="held",
                                detail=f"approval {approval_id}: a parked job was retried by "
                                       f"hand, so it waits for approval again")
        self.store.close_emptied()
        self._describe()
        self._label()

    def _describe(self) -> None:
        for row in self.store.undescribed():
            words: dict[str, str] = {}
            try:
                study = self.host.get_json(
                    f"/studies/{orthanc_study_id(row['patient_id'] or '', row['study_uid'] or '')}")
            except HostError as error:
                if not error.missing:
                    return  # Orthanc busy or restarting: described next round
                study = {}
            words = study_words(study)
            if row["level"] == "plan":
                words["plan_label"] = self.store.plan_label(row["resource_id"])
            self.store.describe(row["id"], words)

    def _label(self) -> None:
        if not self.labels.supported:
            return
        add, remove = self.store.labels_due()
        for row in add:
            study = orthanc_study_id(row["patient_id"] or "", row["study_uid"] or "")
            if self.labels.add(study, AWAITING_APPROVAL):
                self.store.set_labelled(row["id"], True)
        for row in remove:
            study = orthanc_study_id(row["patient_id"] or "", row["study_uid"] or "")
            self.labels.remove(study, AWAITING_APPROVAL)
            self.store.set_labelled(row["id"], False)


def study_words(study: Any) -> dict[str, str]:
    if not isinstance(study, dict):
        return {}
    tags = study.get("MainDicomTags") or {}
    patient = study.get("PatientMainDicomTags") or {}
    return {"patient_name": str(patient.get("PatientName", "")),
            "study_description": str(tags.get("StudyDescription", "")),
            "study_date": str(tags.get("StudyDate", ""))}
