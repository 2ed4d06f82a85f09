"""Writes the audit: evaluations, transfers and other events to SQLite, and the daily log."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from typing import Any

from orthanc_plugin.audit.clock import now_iso
from orthanc_plugin.audit.metrics import Metrics
from orthanc_plugin.audit.translog import TransactionLog
from orthanc_plugin.db import Database, durable_write


class AuditRecorder:
    def __init__(self, db: Database, log: TransactionLog, metrics: Metrics) -> None:
        self.db = db
        self.log = log
        self.metrics = metrics

    @staticmethod
    def now() -> str:
        return now_iso()

    def evaluation(
        self,
        connection: sqlite3.Connection,
        *,
        trigger: str,
        level: str,
        resource_id: str,
        patient_id: str,
        study_uid: str,
        rule: str,
        matched: bool,
        failed_condition: str | None,
        reason: str,
        instances: int,
        new_instances: int,
        rules_sha256: str,
        source: Mapping[str, str],
        targets: tuple[str, ...] = (),
    ) -> None:
        connection.execute(
            "INSERT INTO evaluations(at, trigger, level, resource_id, patient_id, study_uid, rule,"
            " matched, failed_condition, reason, instances, new_instances, rules_sha256)"
            " VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                now_iso(), trigger, level, resource_id, patient_id, study_uid, rule, int(matched),
                failed_condition, reason, instances, new_instances, rules_sha256,
            ),
        )
        self.metrics.count("rtgw_rule_evaluations_total")
        if matched and new_instances:
            self.metrics.count("rtgw_rule_matches_total")
            for target in targets:
                self.log.write(
                    source_ip=source.get("remote_ip"),
                    calling_aet=source.get("calling_aet"),
                    study_uid=study_uid,
                    rule=rule,
                    destination=target,
                    outcome=f"queued {new_instances} instance(s)",
                )

    @durable_write
    def transfer(
        self,
        *,
        job: Mapping[str, Any],
        attempt: int,
        status: str,
        instances: int,
        bytes_sent: int,
        started_at: str,
        error: str | None,
        orthanc_job: str | None,
        job_state: str,
    ) -> None:
        with self.db.transaction() as connection:
            connection.execute(
                "INSERT INTO transfers(job_id, rule, resource_id, patient_id, study_uid, target,"
                " attempt, status, instances, bytes, started_at, ended_at, error, orthanc_job)"
                " VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    job["id"], job["rule"], job["resource_id"], job["patient_id"],
                    job["study_uid"], job["target"], attempt, status, instances, bytes_sent,
                    started_at, now_iso(), error, orthanc_job,
                ),
            )
        outcome = f"{status}: {instances} instance(s), {bytes_sent} bytes, job {job['id']}"
        if job_state == "dead":
            outcome += " (parked)"
        elif job_state == "pending" and status != "success":
            outcome += " (will retry)"
        if error:
            outcome += f": {error}"
        self.log.write(
            source_ip=job["remote_ip"],
            calling_aet=job["calling_aet"],
            study_uid=job["study_uid"],
            rule=job["rule"],
            destination=job["target"],
            outcome=outcome,
        )
        self.metrics.count("rtgw_instances_sent_total", instances)
        self.metrics.count("rtgw_bytes_sent_total", bytes_sent)
        self.metrics.count(f"rtgw_target_{job['target']}_instances_sent_total", instances)
        if status != "success":
            self.metrics.count("rtgw_transfer_failures_total")
            self.metrics.count(f"rtgw_target_{job['target']}_failures_total")

    def event(
        self,
        event: str,
        *,
        status: str = "",
        detail: str = "",
        rule: str = "",
        target: str = "",
        job_id: int | None = None,
        resource_id: str = "",
        patient_id: str = "",
        study_uid: str = "",
        connection: sqlite3.Connection | None = None,
    ) -> None:
        row = (
            now_iso(), event, status, patient_id, study_uid, resource_id, rule, target, job_id,
            detail,
        )
        sql = (
            "INSERT INTO audit_events(at, event, status, patient_id, study_uid, resource_id, rule,"
            " target, job_id, detail) VALUES(?,?,?,?,?,?,?,?,?,?)"
        )
        if connection is not None:
            connection.execute(sql, row)  # the caller's transaction: its caller retries it
            return

        def write() -> None:
            with self.db.transaction() as own:
                own.execute(sql, row)
        self.db.durable(write, f"writing the audit event {event}")

    def quarantine(
        self, connection: sqlite3.Connection, instance_id: str, reason: str, detail: str = ""
    ) -> None:
        connection.execute(
            "INSERT INTO quarantine(at, instance_id, reason, detail) VALUES(?,?,?,?)",
            (now_iso(), instance_id, reason, detail),
        )
        self.event(
            "quarantined", status="quarantined", resource_id=instance_id, detail=reason,
            connection=connection,
        )
        self.metrics.count("rtgw_quarantined_total")
        self.log.write(
            source_ip=None, calling_aet=None, study_uid=None, rule=None, destination=None,
            outcome=f"quarantined instance {instance_id}: {reason}",
        )
