"""The anonymize executor: original from Orthanc -> de-identified copy stored in Orthanc -> forwards.

The copy is posted to Orthanc's REST API by a worker, noted first as the gateway's own output
(source GATEWAY), so rules skip it unless include_gateway_output. The rule's following forwards
are queued for the copies as ordinary forward jobs (retries, transfer rows, metrics). With
keep_original: false a delete-original job removes the original once its copy is confirmed
stored and no other job still needs it. Audit rows and log lines name the pseudonym only.

A claim's copies are made a few at a time on a small pool (pipeline.py): the next instance is read
and de-identified while Orthanc stores the previous one. The executor base still takes one
outcome per instance, in order, so recording, quarantine and retries are the base's as before.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from io import BytesIO
from typing import Any

import pydicom
from pydicom.errors import InvalidDicomError

from orthanc_plugin.audit.recorder import AuditRecorder
from orthanc_plugin.db_engine import StateDatabase
from orthanc_plugin.deid.keys import Pseudonymizer
from orthanc_plugin.deid.model import DeidError, DeidResult, copy_keys, deidentify
from orthanc_plugin.deid.pipeline import Pipeline
from orthanc_plugin.deid.rule import JOB_ACTION, AnonymizeAction
from orthanc_plugin.deid.tables import (
    CopyRecord,
    has_copy,
    mark_original_deleted,
    original_keys,
    record_copies,
    record_mapping,
)
from orthanc_plugin.forwarding.rule import JOB_ACTION as FORWARD_ACTION
from orthanc_plugin.jobs.executor_base import ItemExecutor, JobContext, Refuse
from orthanc_plugin.jobs.executors import action_of_job, jobs_with_items
from orthanc_plugin.jobs.follow_ups import FollowUp
from orthanc_plugin.jobs.own_output import (
    note_own_output,
    orthanc_instance_id,
    store_own_instance,
)
from orthanc_plugin.jobs.queue import Claim, ClaimedItem, JobQueue
from orthanc_plugin.jobs.records import Job
from orthanc_plugin.labels import DEID_COPY, StudyLabels
from orthanc_plugin.ports import Host, HostError
from orthanc_plugin.rules.priority import Priority

DELETE_JOB_ACTION = "delete-original"
DELETE_TARGET_PREFIX = "originals-after-"
STORED_STATUSES = ("Success", "AlreadyStored")
DELETE_WAIT_SECONDS = 5.0
RECORD_BATCH = 50
# Copies in the making at once per worker process. bench/deid (200 CT slices, 2 shared cores, 8
# rounds each, gateway/Orthanc /anonymize): 1 (before) 0.54, 2 0.63, 3 0.81, 4 0.82-0.91, 6 0.91.
# Once copies cost less Python (elements left as read, notes ahead), in one window: 3 0.94, 4 0.90,
# 6 1.02. Memory: at most this many originals and copies held at once (a large RTDOSE is ~50 MB).
COPY_THREADS = 6
# Items started ahead of the one the executor waits for, per thread: a queued item holds no bytes.
AHEAD_PER_THREAD = 2


@dataclass(frozen=True)
class StoredCopy:
    instance_id: str
    study_id: str
    result: DeidResult
    study_uid: str
    sop_instance_uid: str
    size: int


class AnonymizeExecutor(ItemExecutor[AnonymizeAction, StoredCopy]):
    name = JOB_ACTION
    action_type = AnonymizeAction
    max_items_per_claim = 100
    record_batch = RECORD_BATCH

    def __init__(self, context: JobContext, keys: Pseudonymizer,
                 threads: int = COPY_THREADS, labels: StudyLabels | None = None) -> None:
        super().__init__(context)
        self.keys = keys
        # The copies' studies are labelled rtgw-deid-copy (Orthanc 1.12+; None: no labels).
        self.labels = labels
        self.threads = max(1, threads)
        # Shared by the worker's sender threads: at most `threads` copies in the making per
        # process, each thread keeping its own keep-alive connection to Orthanc.
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="rtgw-deid-copier")
        # Per job (one sender thread runs a claim): where the time went, for the audit.
        self._clocks: dict[int, _PhaseClock] = {}
        # Per claimed job: the pipeline making its copies, and the action it makes them with.
        self._pipelines: dict[int, tuple[Pipeline[ClaimedItem, StoredCopy], AnonymizeAction]] = {}

    def run(self, claim: Claim) -> None:
        """Starts the claim's copies on the pool, then lets the base take them one by one.

        Actions are looked up here as the base will look them up: a job whose rule lost its
        action gets no copy made (the base parks it), and `step` makes a copy itself when the
        rules changed in between."""
        rules = self.context.rules()
        actions: dict[int, tuple[Job, AnonymizeAction]] = {}
        items: list[ClaimedItem] = []
        for job, job_items in jobs_with_items(claim):
            action = action_of_job(rules, job, AnonymizeAction)
            if action is not None:
                actions[job.id] = (job, action)
                self._clocks[job.id] = _PhaseClock(self.threads)
                items += job_items
        noted = self._note_copies_ahead({job_id: action for job_id, (_, action) in actions.items()},
                                        items)
        pipeline = Pipeline(self._pool,
                            lambda item: self._copy(*actions[item.job_id], item, noted),
                            items, self.threads * AHEAD_PER_THREAD)
        for job_id, (_, action) in actions.items():
            self._pipelines[job_id] = (pipeline, action)
        try:
            super().run(claim)
        finally:
            for job_id in actions:
                self._pipelines.pop(job_id, None)
                self._clocks.pop(job_id, None)
            pipeline.close()

    def step(self, job: Job, item: ClaimedItem, action: AnonymizeAction) -> StoredCopy:
        started = self._pipelines.get(job.id)
        if started is None or started[1] != action:
            return self._copy(job, action, item)
        return started[0].take(item)

    def _note_copies_ahead(self, actions: dict[int, AnonymizeAction],
                           items: list[ClaimedItem]) -> frozenset[str]:
        """Notes the Orthanc IDs the claim's copies will have as the gateway's own output, in one
        transaction, from the originals' keys and the keyed UIDs; a copy whose ID differs from
        the guess (an original not described yet, keys Orthanc trimmed) is noted on its own."""
        originals = original_keys(self.db, [item.instance_id for item in items])
        expected = []
        for item in items:
            keys = originals.get(item.instance_id)
            if keys is not None:
                expected.append(orthanc_instance_id(
                    *copy_keys(keys, actions[item.job_id].settings, self.keys)))
        if expected:
            note_own_output(self.db, expected, "deid")
        return frozenset(expected)

    def _copy(self, job: Job, action: AnonymizeAction, item: ClaimedItem,
              noted: frozenset[str] = frozenset()) -> StoredCopy:
        """Read, de-identify, store: runs on the pool; what it raises, `step` raises."""
        clock = self._clocks.get(job.id) or _PhaseClock(self.threads)
        with clock.timing("read"):
            original = self.host.get_bytes(f"/instances/{item.instance_id}/file")
        with clock.timing("de-identify"):
            try:
                ds = pydicom.dcmread(BytesIO(original))
                result = deidentify(ds, action.settings, self.keys)
            except (DeidError, InvalidDicomError) as problem:
                raise Refuse(f"cannot be de-identified: {problem}", "invalid-input",
                             quarantine=True) from problem
            del original  # the copy's bytes are next: hold one instance's worth, not two
            buffer = BytesIO()
            ds.save_as(buffer, enforce_file_format=True)
            data = buffer.getvalue()
        with clock.timing("store"):
            answer = store_own_instance(self.host, self.db, ds, data, "deid", noted)
        if not isinstance(answer, dict) or answer.get("Status") not in STORED_STATUSES:
            raise HostError(f"POST /instances did not confirm the copy: {answer!r}")
        return StoredCopy(str(answer["ID"]), str(answer.get("ParentStudy", "")), result,
                          str(ds.StudyInstanceUID), str(ds.SOPInstanceUID), len(data))

    def record(self, job: Job, action: AnonymizeAction,
               done: Sequence[tuple[ClaimedItem, StoredCopy]]) -> None:
        with self._clocks.get(job.id, _PhaseClock(1)).timing("record"):
            self._record(job, action, list(done))

    def after_job(self, job: Job, action: AnonymizeAction,
                  done: Sequence[tuple[ClaimedItem, StoredCopy]], outcome: str) -> None:
        clock = self._clocks.get(job.id) or _PhaseClock(self.threads)
        copies = list(done)
        self._queue_followers(job, action, copies)
        if self.labels is not None:
            for study_id in sorted({copy.study_id for _, copy in copies}):
                self.labels.add(study_id, DEID_COPY)
        if copies:
            first = copies[0][1]
            self.event(
                job, "anonymize-stored", "ok",
                f"{len(copies)} instance(s) as {first.result.new_patient_id} in "
                f"{clock.total():.3f} s ({clock}), {action.settings.describe()}, job {outcome}",
                patient=first.result.new_patient_id, study=first.study_uid,
            )

    def event(self, job: Job, event: str, status: str, detail: str,
              item: ClaimedItem | None = None, **names: Any) -> None:
        # The job row holds the original patient ID and study UID: the audit names the copy only.
        super().event(job, event, status, detail, item, patient=names.get("patient", ""),
                      study=names.get("study", ""))

    def _record(
        self, job: Job, action: AnonymizeAction, batch: list[tuple[ClaimedItem, StoredCopy]]
    ) -> None:
        """One transaction per batch, not per instance. A crash before it only means the copies
        are made again on replay, which Orthanc answers with AlreadyStored: same UIDs, same bytes."""
        if not batch:
            return
        with self.db.transaction() as connection:
            for _, copy in batch:
                result = copy.result
                record_mapping(connection, result,
                               self.keys.date_offset_days(result.original_patient_id))
            record_copies(connection, [
                CopyRecord(item.instance_id, job.target, copy.instance_id, copy.sop_instance_uid,
                           copy.result.new_patient_id, job.id, action.settings.describe(),
                           tuple(copy.result.changes))
                for item, copy in batch])
        self.queue.mark_sent([item for item, _ in batch],
                             {item.instance_id: copy.size for item, copy in batch})

    def _queue_followers(
        self, job: Job, action: AnonymizeAction, copies: list[tuple[ClaimedItem, StoredCopy]]
    ) -> None:
        if not copies:
            return
        first = copies[0][1]
        patient, study = first.result.new_patient_id, first.study_uid
        copy_ids = tuple(copy.instance_id for _, copy in copies)
        follow_ups = [FollowUp(FORWARD_ACTION, target, "study", first.study_id, copy_ids,
                               patient, study, "{count} copy(ies) to {target}")
                      for target in action.targets]
        if not action.keep_original:
            # Its own target: the queue assigns an instance once per (rule, target), and the
            # anonymize job already holds these originals for job.target.
            follow_ups.append(FollowUp(
                DELETE_JOB_ACTION, f"{DELETE_TARGET_PREFIX}{job.target}", job.level,
                job.resource_id, tuple(item.instance_id for item, _ in copies),
                patient, study, "delete {count} original(s)", priority=Priority.NORMAL))
        self.follow(job, follow_ups, patient=patient, study=study)


class DeleteOriginals:
    """Deletes originals whose copy Orthanc confirmed, once no other queued job still needs them."""

    max_items_per_claim = 200

    def __init__(self, host: Host, db: StateDatabase, queue: JobQueue, recorder: AuditRecorder) -> None:
        self.host = host
        self.db = db
        self.queue = queue
        self.recorder = recorder

    def run(self, claim: Claim) -> None:
        waiting = [item for item in claim.items if self._still_needed(item)]
        if waiting:
            self.queue.postpone(claim.job_ids, DELETE_WAIT_SECONDS,
                                f"{len(waiting)} original(s) still queued for other jobs")
            return
        error = None
        deleted = 0
        for item in claim.items:
            try:
                self.host.delete(f"/instances/{item.instance_id}")
            except HostError as problem:
                if not problem.missing:
                    error = f"Orthanc: {problem}"
                    break
            mark_original_deleted(self.db, item.instance_id)
            self.queue.mark_sent([item], {})
            deleted += 1
        self.queue.settle(claim.job_ids, error, "host" if error else None)
        for job in claim.jobs:
            self.recorder.event(
                "original-deleted", status="retry" if error else "ok",
                detail=f"{deleted} original(s) deleted after their copy was stored" + (
                    f"; {error}" if error else ""),
                rule=job.rule, target=job.target, job_id=job.id,
                resource_id=job.resource_id, patient_id=job.patient_id or "",
                study_uid=job.study_uid or "",
            )

    def _still_needed(self, item: ClaimedItem) -> bool:
        return (self.queue.pending_in_other_jobs(item.instance_id, DELETE_JOB_ACTION)
                or not has_copy(self.db, item.instance_id))


class _PhaseClock:
    """Seconds spent per phase, for the audit: where an operator's time goes (read, store, ...).

    Phases are summed over the copy threads, so they may add up to more than the job's time."""

    def __init__(self, threads: int) -> None:
        self.started = time.perf_counter()
        self.threads = threads
        self.phases: dict[str, float] = {}
        self._lock = threading.Lock()

    @contextmanager
    def timing(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            seconds = time.perf_counter() - start
            with self._lock:
                self.phases[phase] = self.phases.get(phase, 0.0) + seconds

    def total(self) -> float:
        return time.perf_counter() - self.started

    def __str__(self) -> str:
        with self._lock:
            phases = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in self.phases.items())
        return f"{phases}, over {self.threads} thread(s)" if phases else "nothing done"
