"""The compress executor: original -> compressed copy stored in Orthanc -> the following forwards.

It writes only its step (read, compress, store as the gateway's own output) and what follows a
job (its copies, forwarded): the claim loop, refusals, quarantine and audit are the base's.
"""

from __future__ import annotations

from collections.abc import Sequence
from io import BytesIO

import pydicom
from pydicom.uid import UID, generate_uid

from orthanc_plugin.forwarding.rule import JOB_ACTION as FORWARD_ACTION
from orthanc_plugin.jobs.executor_base import ItemExecutor, Refuse
from orthanc_plugin.jobs.follow_ups import FollowUp
from orthanc_plugin.jobs.own_output import store_own_instance
from orthanc_plugin.jobs.queue import ClaimedItem
from orthanc_plugin.jobs.records import Job
from orthanc_plugin.ports import HostError
from tests.support.compress.rule import JOB_ACTION, CompressAction


class CompressExecutor(ItemExecutor[CompressAction, str]):
    name = JOB_ACTION
    action_type = CompressAction
    max_items_per_claim = 50

    def step(self, job: Job, item: ClaimedItem, action: CompressAction) -> str:
        ds = pydicom.dcmread(BytesIO(self.host.get_bytes(f"/instances/{item.instance_id}/file")))
        if "PixelData" not in ds:
            raise Refuse("no pixel data to compress", "invalid-input")
        # A copy beside the original: its own UIDs, the same for the same original every time
        # (a replay stores the same instance again, which Orthanc answers AlreadyStored).
        for keyword in ("SeriesInstanceUID", "SOPInstanceUID"):
            setattr(ds, keyword, generate_uid(entropy_srcs=[str(ds[keyword].value), JOB_ACTION]))
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.compress(UID(action.transfer_syntax))
        buffer = BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        answer = store_own_instance(self.host, self.db, ds, buffer.getvalue(), JOB_ACTION)
        if not isinstance(answer, dict) or "ID" not in answer:
            raise HostError(f"POST /instances answered {answer!r}")
        return str(answer["ID"])

    def after_job(self, job: Job, action: CompressAction,
                  done: Sequence[tuple[ClaimedItem, str]], outcome: str) -> None:
        copies = tuple(copy for _, copy in done)
        if copies:
            self.follow(job, [
                FollowUp(FORWARD_ACTION, target, job.level, job.resource_id, copies,
                         job.patient_id or "", job.study_uid or "", "{count} compressed to {target}")
                for target in action.targets])
