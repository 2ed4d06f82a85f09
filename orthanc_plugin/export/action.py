"""The export executor: each claimed instance's file from Orthanc into the rule's folder.

A missing or read-only folder (an unmounted share) sends the job back to the queue with backoff;
nothing is marked done that is not on disk. A file another worker is writing at that moment (on
this node or another sharing the folder: exporter.py's claims) postpones the job briefly.
Audit events say exported, skipped (same content already there) or failed; the FileTransfer
table lists every file written.
"""

from __future__ import annotations

from pathlib import Path

from pydicom.errors import InvalidDicomError

from orthanc_plugin.config import resolve_path
from orthanc_plugin.export.exporter import ExportHeld, Source, export_instance
from orthanc_plugin.export.files import DestinationUnavailable
from orthanc_plugin.export.model import Decision
from orthanc_plugin.export.rule import ExportAction
from orthanc_plugin.jobs.executor_base import (
    ItemExecutor,
    JobContext,
    Postpone,
    Refuse,
    RetryLater,
)
from orthanc_plugin.jobs.queue import ClaimedItem
from orthanc_plugin.jobs.records import Job

# Waiting on another worker's claim: look again soon (a file is written in moments), and never
# later than this even when its claim has long to run (its worker may finish early).
HELD_WAIT_SECONDS = 2.0
HELD_WAIT_LONGEST = 30.0


class ExportExecutor(ItemExecutor[ExportAction, int]):
    name = "export"
    action_type = ExportAction
    max_items_per_claim = 50

    def __init__(self, context: JobContext, config_dir: Path) -> None:
        super().__init__(context)
        self.config_dir = config_dir

    def step(self, job: Job, item: ClaimedItem, action: ExportAction) -> int:
        folder = resolve_path(self.config_dir, action.folder)
        data = self.host.get_bytes(f"/instances/{item.instance_id}/file")
        try:
            outcome = export_instance(
                self.db, folder, action.filename, data,
                Source(item.instance_id, job.calling_aet or "", job.rule),
            )
        except ExportHeld as held:
            # Another worker (here or on another node) is writing this very file: wait for it
            # without spending an attempt; the next run finds it exported.
            raise Postpone(min(max(held.seconds, HELD_WAIT_SECONDS), HELD_WAIT_LONGEST),
                           str(held)) from held
        except DestinationUnavailable as problem:
            raise RetryLater(str(problem), "destination-unavailable", "waiting") from problem
        except InvalidDicomError as problem:
            raise Refuse(f"not a readable DICOM file ({problem})", "invalid-input",
                         quarantine=True) from problem
        if outcome.decision is Decision.SKIP:
            self.event(job, "export-skipped", "skipped",
                       f"{outcome.name} already exported with the same content to {folder}", item)
        else:
            self.event(job, "exported", "ok", f"{outcome.name} -> {folder}", item)
        return outcome.size
