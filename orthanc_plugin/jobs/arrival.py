"""Decide at arrival, record after: forward rules the stored-instance note can answer are decided
and their jobs queued from the note, before the instance is described; once it is described, the
same records are completed (the evaluation row and its log line, the jobs' and transfers'
patient and study, the audit events of those jobs, the study's labels).

Why: describing an instance costs a REST call, and the audit rows, the index and plan tracking
follow it; on the relay's critical path that recording was the gateway's whole gap to Orthanc's
own Lua router (issue 11's measurements). The decision itself needs only the note.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from orthanc_plugin.audit.recorder import AuditRecorder
from orthanc_plugin.db_engine import DbConnection
from orthanc_plugin.jobs import arrival_store
from orthanc_plugin.jobs.apply import queue_rule_actions
from orthanc_plugin.jobs.arrival_store import ArrivalDecision
from orthanc_plugin.jobs.executors import Registry
from orthanc_plugin.jobs.intake_store import NewReceived, Received
from orthanc_plugin.jobs.queue import JobQueue, JobSpec
from orthanc_plugin.rules import InstanceFacts, Rule, RuleSet, evaluate
from orthanc_plugin.rules.arrival import answers, arrival_facts, decidable_at_arrival


@dataclass(frozen=True)
class Completed:
    """What completing a batch's records left to do once its transaction commits."""

    transfers_to_log: tuple[tuple[int, str], ...]  # (transfer id, its job's state)
    settled_jobs: tuple[int, ...]                   # jobs that ended before the description


class ArrivalDecider:
    def __init__(self, queue: JobQueue, registry: Registry, recorder: AuditRecorder,
                 rules: Callable[[], RuleSet]) -> None:
        self.queue = queue
        self.registry = registry
        self.recorder = recorder
        self.rules = rules
        self._rules_sha = ""
        self._decidable: list[Rule] = []
        self.decided = 0  # instances decided at arrival since start (GET stats)

    def decidable_rules(self) -> list[Rule]:
        ruleset = self.rules()
        if ruleset.sha256 != self._rules_sha:
            self._decidable = [rule for rule in ruleset.rules if decidable_at_arrival(rule)]
            self._rules_sha = ruleset.sha256
        return self._decidable

    # -- at arrival ------------------------------------------------------------------------------
    def decide(self, connection: DbConnection, instance_id: str,
               note: Mapping[str, Any], stamp: str) -> bool:
        """Decide the note-answerable rules for a newly received instance, in the caller's
        transaction (the received row, the decision and its jobs commit together). Returns True
        when something was queued."""
        rules = self.decidable_rules()
        facts = arrival_facts(instance_id, {key: str(value or "") for key, value in note.items()})
        if not rules or facts is None:
            return False
        queued = False
        decided = False
        sha = self.rules().sha256
        for rule in rules:
            if not answers(rule, facts):
                continue
            decided = True
            queued |= self._decide_rule(connection, rule, facts, sha, stamp)
        self.decided += decided
        return queued

    def _decide_rule(self, connection: DbConnection, rule: Rule, facts: InstanceFacts,
                     sha: str, stamp: str) -> bool:
        evaluation = evaluate(rule, [facts])
        job_ids: list[int] = []
        targets: tuple[str, ...] = ()
        new_instances = 0
        if evaluation.matched:
            def spec_for(job_action: str, target: str) -> JobSpec:
                # Patient and study are filled in once the instance is described (complete()).
                return JobSpec(
                    rule=rule.name, action=job_action, trigger=rule.on.value, level="instance",
                    resource_id=facts.instance_id, target=target,
                    calling_aet=facts.calling_aet, remote_ip=facts.remote_ip,
                    priority=rule.priority, awaits_description=True,
                )
            applied = queue_rule_actions(connection, self.queue, self.registry, rule,
                                         [facts.instance_id], spec_for)
            job_ids, targets, new_instances = applied.job_ids, applied.targets, applied.new_instances
        arrival_store.record_decision(connection, ArrivalDecision(
            facts.instance_id, rule.name, evaluation.matched, evaluation.failed_condition,
            evaluation.reason, new_instances, targets, tuple(job_ids), sha), stamp)
        return new_instances > 0

    # -- once described ----------------------------------------------------------------------------
    @staticmethod
    def pending(connection: DbConnection, instance_ids: Sequence[str]
                ) -> dict[str, dict[str, ArrivalDecision]]:
        """instance ID -> rule name -> the decision taken at its arrival."""
        return arrival_store.decisions_for(connection, instance_ids)

    def complete(self, connection: DbConnection, row: Received | NewReceived,
                 decisions: Mapping[str, ArrivalDecision], described_facts: InstanceFacts | None,
                 rules_by_name: Mapping[str, Rule]) -> Completed:
        """Record the arrival decisions of one described instance as if they had been taken now,
        with the patient and study the description gave, in the caller's transaction (a row
        never described, gone or quarantined, has neither: NewReceived)."""
        patient_id, study_uid = ((row.patient_id or "", row.study_uid or "")
                                 if isinstance(row, Received) else ("", ""))
        job_ids: list[int] = []
        for decision in decisions.values():
            self.recorder.evaluation(
                connection, trigger="instance", level="instance", resource_id=row.instance_id,
                patient_id=patient_id, study_uid=study_uid, rule=decision.rule,
                matched=decision.matched, failed_condition=decision.failed_condition,
                reason=decision.reason, instances=1 if decision.matched else 0,
                new_instances=decision.new_instances, rules_sha256=decision.rules_sha256,
                source={"remote_ip": row.remote_ip or "",
                        "calling_aet": row.calling_aet or ""},
                targets=decision.targets,
            )
            self._check_against_description(connection, row, decision, described_facts,
                                            rules_by_name.get(decision.rule))
            job_ids += decision.job_ids
        arrival_store.forget_decisions(connection, row.instance_id)
        if not job_ids:
            return Completed((), ())
        arrival_store.name_patient_and_study(connection, job_ids, patient_id, study_uid)
        return Completed(tuple(arrival_store.transfers_awaiting_description(connection, job_ids)),
                         tuple(arrival_store.settled_jobs(connection, job_ids)))

    def _check_against_description(self, connection: DbConnection,
                                   row: Received | NewReceived, decision: ArrivalDecision,
                                   facts: InstanceFacts | None, rule: Rule | None) -> None:
        """The note's facts are Orthanc's own metadata, but a modality read from the SOP class
        can differ from a faulty file's Modality: such a difference is audited, never hidden
        (what was queued stands: it may already have been sent). Only a described row has
        facts to check against."""
        if facts is None or rule is None or not isinstance(row, Received):
            return
        if evaluate(rule, [facts]).matched == decision.matched:
            return
        self.recorder.event(
            "arrival-decision-differs", status="warning", rule=rule.name,
            resource_id=row.instance_id, patient_id=row.patient_id or "",
            study_uid=row.study_uid or "",
            detail=(f"decided {'matched' if decision.matched else 'not matched'} from the "
                    f"arrival note, the description says otherwise (modality "
                    f"{row.modality or '?'}, SOP class {row.sop_class_uid or '?'})"),
            connection=connection,
        )

