"""The export executor: each claimed instance's file from Orthanc into the rule's folder.

A missing or read-only folder (an unmounted share) sends the job back to the queue with backoff;
nothing is marked done that is not on disk. Audit events say exported, skipped (same content
already there) or failed; the FileTransfer table lists every file written.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

from pydicom.errors import InvalidDicomError

from orthanc_plugin.audit.recorder import AuditRecorder
from orthanc_plugin.config import resolve_path
from orthanc_plugin.db import Database
from orthanc_plugin.export.exporter import Source, export_instance
from orthanc_plugin.export.files import DestinationUnavailable
from orthanc_plugin.export.model import Decision
from orthanc_plugin.export.rule import ExportAction
from orthanc_plugin.jobs.executors import action_of_job, jobs_with_items
from orthanc_plugin.jobs.queue import Claim, ClaimedItem, JobQueue
from orthanc_plugin.ports import Host, HostError
from orthanc_plugin.rules import RuleSet


class ExportExecutor:
    max_items_per_claim = 50

    def __init__(
        self,
        host: Host,
        db: Database,
        queue: JobQueue,
        recorder: AuditRecorder,
        rules: Callable[[], RuleSet],
        config_dir: Path,
    ) -> None:
        self.host = host
        self.db = db
        self.queue = queue
        self.recorder = recorder
        self.rules = rules
        self.config_dir = config_dir

    def run(self, claim: Claim) -> None:
        for job, items in jobs_with_items(claim):
            self._run_job(job, items)

    def _run_job(self, job: sqlite3.Row, items: list[ClaimedItem]) -> None:
        action = self._action(job)
        if action is None:
            reason = (f"rule '{job['rule']}' has no export to {job['target']} any more "
                      "(rules reloaded?)")
            self._event(job, "export-failed", "failed", reason, job["resource_id"])
            self.queue.park(job["id"], reason, "no-action")
            return
        folder = resolve_path(self.config_dir, action.folder)
        error: str | None = None
        status: str | None = None
        for item in items:
            try:
                data = self.host.get_bytes(f"/instances/{item.instance_id}/file")
                outcome = export_instance(
                    self.db, folder, action.filename, data,
                    Source(item.instance_id, job["calling_aet"] or "", job["rule"]),
                )
            except DestinationUnavailable as problem:
                error, status = str(problem), "destination-unavailable"
                self._event(job, "export-waiting", "retry", error, item.instance_id)
                break
            except InvalidDicomError as problem:
                reason = f"export: not a readable DICOM file ({problem})"
                with self.db.transaction() as connection:
                    self.recorder.quarantine(connection, item.instance_id, reason,
                                             detail=f"job {job['id']}")
                self.queue.mark_refused(item, "invalid-input")
                self.queue.note_refusal(job["id"], reason, "invalid-input")
                continue
            except HostError as problem:
                if problem.missing:
                    self.queue.mark_refused(item, "gone")
                    self.queue.note_refusal(job["id"], "the instance is no longer in Orthanc", "gone")
                    continue
                error, status = f"Orthanc: {problem}", "host"
                break
            self.queue.mark_sent([item], {item.instance_id: outcome.size})
            if outcome.decision is Decision.SKIP:
                self._event(job, "export-skipped", "skipped",
                            f"{outcome.name} already exported with the same content to {folder}",
                            item.instance_id)
            else:
                self._event(job, "exported", "ok", f"{outcome.name} -> {folder}", item.instance_id)
        self.queue.settle([job["id"]], error, status)

    def _action(self, job: sqlite3.Row) -> ExportAction | None:
        return action_of_job(self.rules(), job, ExportAction)

    def _event(self, job: sqlite3.Row, event: str, status: str, detail: str, resource: str) -> None:
        self.recorder.event(
            event, status=status, detail=detail, rule=job["rule"], target=job["target"],
            job_id=job["id"], resource_id=resource, patient_id=job["patient_id"] or "",
            study_uid=job["study_uid"] or "",
        )
