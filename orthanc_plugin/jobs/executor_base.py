"""One executor contract for the capabilities that work instance by instance (anonymize, export,
overlay): the base owns the claim loop, the rule-action lookup, settle, park, quarantine, refuse,
"source gone", postpone and the audit events; a capability writes only its `step` (as pynetdicom's
service classes write only their SCP()). Forwarding, which works a whole association at a time,
keeps its own loop (forwarding/action.py) on the same queue calls.

A step answers with a result (recorded as sent) or raises one of:
- Postpone(seconds, reason): the job waits (images still arriving), no attempt spent;
- Refuse(reason, status, quarantine): this instance can never succeed; parked with the reason,
  copied to quarantine when asked; the others go on;
- RetryLater(reason, status): something outside is not ready (a folder, Orthanc); the job goes back
  to the queue with backoff;
- HostError with `missing`: the source instance was deleted meanwhile: skipped alone, audited.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

from orthanc_plugin.audit.recorder import AuditRecorder
from orthanc_plugin.db_engine import StateDatabase
from orthanc_plugin.jobs.executors import action_of_job, jobs_with_items
from orthanc_plugin.jobs.follow_ups import FollowUp, queue_follow_ups
from orthanc_plugin.jobs.queue import Claim, ClaimedItem, JobQueue
from orthanc_plugin.jobs.records import Job
from orthanc_plugin.ports import Host, HostError
from orthanc_plugin.rules import RuleSet

Action = TypeVar("Action")
Result = TypeVar("Result")


@dataclass(frozen=True)
class JobContext:
    """What every executor is given: Orthanc, the database, the queue, the audit and the rules."""

    host: Host
    db: StateDatabase
    queue: JobQueue
    recorder: AuditRecorder
    rules: Callable[[], RuleSet]
    wake_workers: Callable[[], None]
    # Set when the worker is asked to stop: long steps end at their next safe boundary.
    stopping: threading.Event


class Postpone(Exception):
    def __init__(self, seconds: float, reason: str) -> None:
        super().__init__(reason)
        self.seconds = seconds
        self.reason = reason


class Refuse(Exception):
    def __init__(self, reason: str, status: str, *, quarantine: bool = False,
                 event: str = "failed") -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.quarantine = quarantine
        self.event = event  # the audit event is "<executor name>-<event>"


class RetryLater(Exception):
    def __init__(self, reason: str, status: str, event: str = "error") -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.event = event  # the audit event is "<executor name>-<event>"


class ItemExecutor(Generic[Action, Result]):
    # The audit event prefix ("export" gives export-failed, export-error, ...).
    name: ClassVar[str] = ""
    action_type: ClassVar[type]
    max_items_per_claim: int = 1
    # Results recorded (mark_sent and the capability's own rows) in batches of this size.
    record_batch: ClassVar[int] = 1
    # The audit event, after the name, that lists the jobs `follow` queued.
    follow_ups_event: ClassVar[str] = "followers-queued"

    def __init__(self, context: JobContext) -> None:
        self.context = context
        self.host = context.host
        self.db = context.db
        self.queue = context.queue
        self.recorder = context.recorder

    # -- what a capability writes ----------------------------------------------------------------
    def step(self, job: Job, item: ClaimedItem, action: Action) -> Result:
        raise NotImplementedError

    def record(self, job: Job, action: Action,
               done: Sequence[tuple[ClaimedItem, Result]]) -> None:
        """Record results; the default marks them sent with the size `size_of` gives."""
        self.queue.mark_sent([item for item, _ in done],
                             {item.instance_id: self.size_of(result) for item, result in done})

    def size_of(self, result: Result) -> int:
        return result if isinstance(result, int) else 0

    def after_job(self, job: Job, action: Action,
                  done: Sequence[tuple[ClaimedItem, Result]], outcome: str) -> None:
        """Called once the job is settled (outcome: done, pending, dead)."""

    # -- the contract's loop ---------------------------------------------------------------------
    def run(self, claim: Claim) -> None:
        for job, items in jobs_with_items(claim):
            self.run_job(job, items)

    def run_job(self, job: Job, items: list[ClaimedItem]) -> None:
        action = action_of_job(self.context.rules(), job, self.action_type)
        if action is None:
            reason = (f"rule '{job.rule}' has no {self.name} action for {job.target} any "
                      "more (rules reloaded?)")
            self.event(job, f"{self.name}-failed", "failed", reason)
            self.queue.park(job.id, reason, "no-action")
            return
        done: list[tuple[ClaimedItem, Result]] = []
        recorded = 0
        error: str | None = None
        status: str | None = None
        for item in items:
            if len(done) - recorded >= self.record_batch:
                self._record_durably(job, action, done[recorded:])
                recorded = len(done)
            try:
                done.append((item, self.step(job, item, action)))
            except Postpone as wait:
                self._record_durably(job, action, done[recorded:])
                self.queue.postpone([job.id], max(wait.seconds, 0.0), f"waiting: {wait.reason}")
                return
            except Refuse as refusal:
                self.refuse(job, item, refusal)
            except RetryLater as later:
                error, status = later.reason, later.status
                self.event(job, f"{self.name}-{later.event}", "retry", later.reason, item)
                break
            except HostError as problem:
                if problem.missing:
                    self.source_gone(job, item)
                    continue
                error, status = f"Orthanc: {problem}", "host"
                self.event(job, f"{self.name}-error", "retry", error, item)
                break
        self._record_durably(job, action, done[recorded:])
        outcome = self.queue.settle([job.id], error, status).get(job.id, "")
        self.after_job(job, action, done, outcome)

    def _record_durably(self, job: Job, action: Action,
                        done: Sequence[tuple[ClaimedItem, Result]]) -> None:
        # What was done is held here until the database takes it: a full disk delays the
        # record, never drops it (a capability's record is all-or-nothing and idempotent).
        if done:
            self.db.durable(lambda: self.record(job, action, done), f"recording {self.name}")

    # -- what follows a derivation ---------------------------------------------------------------
    def follow(self, job: Job, follow_ups: Sequence[FollowUp], *, patient: str = "",
               study: str = "") -> None:
        """Queues the jobs that hand on what this job made (follow_ups.py), in one transaction,
        audited as "<name>-<follow_ups_event>" under `patient` and `study` (the output's, when
        the job row names the originals)."""
        if not follow_ups:
            return
        with self.db.transaction() as connection:
            queued = queue_follow_ups(connection, self.queue, job, follow_ups)
        if queued:
            event, detail = f"{self.name}-{self.follow_ups_event}", "; ".join(queued)
            if patient or study:
                self.event(job, event, "ok", detail, patient=patient, study=study)
            else:
                self.event(job, event, "ok", detail)
            self.context.wake_workers()

    # -- shared outcomes -------------------------------------------------------------------------
    def refuse(self, job: Job, item: ClaimedItem, refusal: Refuse) -> None:
        self.event(job, f"{self.name}-{refusal.event}", "failed", refusal.reason, item)
        if refusal.quarantine:
            with self.db.transaction() as connection:
                self.recorder.quarantine(connection, item.instance_id,
                                         f"{self.name}: {refusal.reason}", detail=f"job {job.id}")
        self.queue.mark_refused(item, refusal.status)
        self.queue.note_refusal(job.id, refusal.reason, refusal.status)

    def source_gone(self, job: Job, item: ClaimedItem) -> None:
        reason = "the source instance is no longer in Orthanc"
        self.queue.mark_gone(item, reason)
        self.event(job, "source-gone", "skipped", reason, item)

    def event(self, job: Job, event: str, status: str, detail: str,
              item: ClaimedItem | None = None, **names: Any) -> None:
        self.recorder.event(
            event, status=status, detail=detail, rule=job.rule, target=job.target,
            job_id=job.id, resource_id=item.instance_id if item else job.resource_id,
            patient_id=names.get("patient", job.patient_id or ""),
            study_uid=names.get("study", job.study_uid or ""),
        )
