"""Failover: a destination's jobs go to its failover destination once they have failed to reach it
for `failover_after`, or parked. Each job moves whole (a plan is never split between the two) and
the move is audited; new work still goes to the primary first, so when it is back, work returns.
Runs on the lead worker's loop; the queue's transaction makes a move and a claim exclusive."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from orthanc_plugin.audit.recorder import AuditRecorder
from orthanc_plugin.destinations.model import DestinationPolicy

# Only C-STORE jobs have a modality to fail over from.
from orthanc_plugin.forwarding.rule import JOB_ACTION as FORWARD
from orthanc_plugin.jobs.queue import JobQueue
from orthanc_plugin.jobs.states import JobState


class Failover:
    def __init__(self, queue: JobQueue, recorder: AuditRecorder,
                 policies: Callable[[], Mapping[str, DestinationPolicy]],
                 wake_workers: Callable[[], None]) -> None:
        self.queue = queue
        self.recorder = recorder
        self.policies = policies
        self.wake_workers = wake_workers

    def tick(self) -> None:
        self.move_due(time.time())

    def move_due(self, now: float) -> int:
        """Moves the jobs whose destination's failover is due; returns how many moved."""
        moved = 0
        for name, policy in self.policies().items():
            if not policy.failover:
                continue
            for job_id in self.queue.failover_candidates(
                    name, FORWARD, now - policy.failover_after_seconds):
                moved += self._move(job_id, policy, now)
        if moved:
            self.wake_workers()
        return moved

    def _move(self, job_id: int, policy: DestinationPolicy, now: float) -> int:
        reason = (f"{policy.name} not reached for {policy.failover_after_seconds:g} s or more, "
                  f"or parked")
        done = self.queue.redirect(job_id, policy.failover, reason)
        if done is None:
            return 0
        job, new_id, count = done
        why = ("parked" if job.state == JobState.DEAD else
               f"failing for {now - (job.failing_since or now):.0f} s")
        self.recorder.event(
            "failed-over", status="failover", rule=job.rule, target=policy.name,
            job_id=job_id, resource_id=job.resource_id, patient_id=job.patient_id or "",
            study_uid=job.study_uid or "",
            detail=f"job {job_id} to {policy.name} ({why}: {job.last_error or 'no answer'}) "
                   f"moved whole to {policy.failover}"
                   + (f" as job {new_id} ({count} instance(s))" if new_id is not None
                      else " (which already had every instance)"))
        return 1
