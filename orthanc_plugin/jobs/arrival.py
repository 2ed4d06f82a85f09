"""Decide at arrival, record after: forward rules the stored-instance note can answer are decided
and their jobs queued from the note, before the instance is described; once it is described, the
same records are completed (the evaluation row and its log line, the jobs' and transfers'
patient and study, the audit events of those jobs, the study's labels).

Why: describing an instance costs a REST call, and the audit rows, the index and plan tracking
follow it; on the relay's critical path that recording was the gateway's whole gap to Orthanc's
own Lua router (issue 11's measurements). The decision itself needs only the note.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from orthanc_plugin.audit.recorder import LOG_AWAITS_DESCRIPTION, AuditRecorder
from orthanc_plugin.jobs.apply import queue_rule_actions
from orthanc_plugin.jobs.executors import Registry
from orthanc_plugin.jobs.queue import JobQueue, JobSpec
from orthanc_plugin.rules import InstanceFacts, Rule, RuleSet, evaluate
from orthanc_plugin.rules.arrival import answers, arrival_facts, decidable_at_arrival

SCHEMA = """
-- Decisions taken from a stored-instance note, waiting for the instance's description to be
-- recorded in full (jobs/arrival.py); a row lives from arrival to description.
CREATE TABLE IF NOT EXISTS arrival_decisions(
    instance_id TEXT NOT NULL, rule TEXT NOT NULL,
    matched INTEGER NOT NULL, failed_condition TEXT, reason TEXT,
    new_instances INTEGER NOT NULL DEFAULT 0, targets TEXT NOT NULL DEFAULT '[]',
    job_ids TEXT NOT NULL DEFAULT '[]', rules_sha256 TEXT, decided_at TEXT NOT NULL,
    PRIMARY KEY(instance_id, rule)
);
"""


@dataclass(frozen=True)
class ArrivalDecision:
    instance_id: str
    rule: str
    matched: bool
    failed_condition: str | None
    reason: str
    new_instances: int
    targets: tuple[str, ...]
    job_ids: tuple[int, ...]
    rules_sha256: str


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
    def decide(self, connection: sqlite3.Connection, instance_id: str,
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

    def _decide_rule(self, connection: sqlite3.Connection, rule: Rule, facts: InstanceFacts,
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
        connection.execute(
            "INSERT OR REPLACE INTO arrival_decisions(instance_id, rule, matched, failed_condition,"
            " reason, new_instances, targets, job_ids, rules_sha256, decided_at)"
            " VALUES(?,?,?,?,?,?,?,?,?,?)",
            (facts.instance_id, rule.name, int(evaluation.matched), evaluation.failed_condition,
             evaluation.reason, new_instances, json.dumps(list(targets)), json.dumps(job_ids),
             sha, stamp),
        )
        return new_instances > 0

    # -- once described ----------------------------------------------------------------------------
    @staticmethod
    def pending(connection: sqlite3.Connection, instance_ids: Sequence[str]
                ) -> dict[str, dict[str, ArrivalDecision]]:
        """instance ID -> rule name -> the decision taken at its arrival."""
        found: dict[str, dict[str, ArrivalDecision]] = {}
        for start in range(0, len(instance_ids), 500):
            chunk = list(instance_ids[start:start + 500])
            marks = ",".join("?" * len(chunk))
            for row in connection.execute(
                f"SELECT * FROM arrival_decisions WHERE instance_id IN ({marks})", chunk
            ).fetchall():
                found.setdefault(row["instance_id"], {})[row["rule"]] = ArrivalDecision(
                    row["instance_id"], row["rule"], bool(row["matched"]),
                    row["failed_condition"], row["reason"] or "", row["new_instances"],
                    tuple(json.loads(row["targets"])), tuple(json.loads(row["job_ids"])),
                    row["rules_sha256"] or "",
                )
        return found

    def complete(self, connection: sqlite3.Connection, row: sqlite3.Row,
                 decisions: Mapping[str, ArrivalDecision], described_facts: InstanceFacts | None,
                 rules_by_name: Mapping[str, Rule]) -> Completed:
        """Record the arrival decisions of one described instance as if they had been taken now,
        with the patient and study the description gave, in the caller's transaction."""
        patient_id, study_uid = _column(row, "patient_id"), _column(row, "study_uid")
        job_ids: list[int] = []
        for decision in decisions.values():
            self.recorder.evaluation(
                connection, trigger="instance", level="instance", resource_id=row["instance_id"],
                patient_id=patient_id, study_uid=study_uid, rule=decision.rule,
                matched=decision.matched, failed_condition=decision.failed_condition,
                reason=decision.reason, instances=1 if decision.matched else 0,
                new_instances=decision.new_instances, rules_sha256=decision.rules_sha256,
                source={"remote_ip": row["remote_ip"] or "",
                        "calling_aet": row["calling_aet"] or ""},
                targets=decision.targets,
            )
            self._check_against_description(connection, row, decision, described_facts,
                                            rules_by_name.get(decision.rule))
            job_ids += decision.job_ids
        connection.execute("DELETE FROM arrival_decisions WHERE instance_id=?",
                           (row["instance_id"],))
        if not job_ids:
            return Completed((), ())
        marks = ",".join("?" * len(job_ids))
        connection.execute(
            f"UPDATE jobs SET patient_id=?, study_uid=?, awaits_description=0 WHERE id IN ({marks})"
            " AND awaits_description=1", (patient_id, study_uid, *job_ids))
        for table in ("transfers", "audit_events"):
            connection.execute(
                f"UPDATE {table} SET patient_id=?, study_uid=? WHERE job_id IN ({marks}) AND "
                "(study_uid IS NULL OR study_uid='')", (patient_id, study_uid, *job_ids))
        to_log = connection.execute(
            f"SELECT t.id, j.state FROM transfers t JOIN jobs j ON j.id = t.job_id "
            f"WHERE t.job_id IN ({marks}) AND t.logged=? ORDER BY t.id",
            (*job_ids, LOG_AWAITS_DESCRIPTION)).fetchall()
        settled = connection.execute(
            f"SELECT id FROM jobs WHERE id IN ({marks}) AND state IN ('done', 'dead')",
            job_ids).fetchall()
        return Completed(tuple((item["id"], item["state"]) for item in to_log),
                         tuple(item["id"] for item in settled))

    def _check_against_description(self, connection: sqlite3.Connection, row: sqlite3.Row,
                                   decision: ArrivalDecision, facts: InstanceFacts | None,
                                   rule: Rule | None) -> None:
        """The note's facts are Orthanc's own metadata, but a modality read from the SOP class
        can differ from a faulty file's Modality: such a difference is audited, never hidden
        (what was queued stands: it may already have been sent)."""
        if facts is None or rule is None:
            return
        if evaluate(rule, [facts]).matched == decision.matched:
            return
        self.recorder.event(
            "arrival-decision-differs", status="warning", rule=rule.name,
            resource_id=row["instance_id"], patient_id=_column(row, "patient_id"),
            study_uid=_column(row, "study_uid"),
            detail=(f"decided {'matched' if decision.matched else 'not matched'} from the "
                    f"arrival note, the description says otherwise (modality "
                    f"{_column(row, 'modality') or '?'}, SOP class "
                    f"{_column(row, 'sop_class_uid') or '?'})"),
            connection=connection,
        )


def _column(row: sqlite3.Row, key: str) -> str:
    """A received row's column as text; a row read before its description lacks some."""
    return str(row[key] or "") if key in row.keys() else ""  # noqa: SIM118 (Row: `in` reads values)
