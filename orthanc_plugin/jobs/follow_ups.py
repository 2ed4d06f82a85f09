"""Jobs that follow a derivation: what an action queues once its output is stored.

A derivation (a de-identified copy, an overlay series, any new "make X then send it") stores its
output in Orthanc and then hands it on: forwards of the output, the deletion of the originals.
Each capability says *what* follows (`FollowUp`, with the job action its owner defines); the
executor base queues them all the same way (`ItemExecutor.follow`): one transaction, the rule,
trigger, calling AE and remote IP of the job that made the output, one audit event naming the
jobs queued, the job workers woken. The queue assigns an instance once per (rule, target), so a
follow-up queued again after a crash or a replay adds nothing.

The queue knows no capability: a follow-up's action is only the name its owner registered.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from orthanc_plugin.db_engine import DbConnection
from orthanc_plugin.jobs.queue import JobQueue, JobSpec
from orthanc_plugin.jobs.records import Job


@dataclass(frozen=True)
class FollowUp:
    """One job to queue after a derivation: `action` on `instance_ids`, toward `target`.

    `summary` words what the job does for the audit, with {count} and {target} filled in
    (e.g. "{count} copy(ies) to {target}")."""

    action: str
    target: str
    level: str
    resource_id: str
    instance_ids: tuple[str, ...]
    patient_id: str
    study_uid: str
    summary: str
    priority: int | None = None  # None: the job that made the output's own priority


def queue_follow_ups(connection: DbConnection, queue: JobQueue, job: Job,
                     follow_ups: Sequence[FollowUp]) -> list[str]:
    """Queues each follow-up in the caller's transaction; returns "job N: <summary>" for each
    job that got new instances (none when every instance was already assigned)."""
    queued = []
    for follow_up in follow_ups:
        spec = JobSpec(
            rule=job.rule, action=follow_up.action, trigger=job.trigger,
            level=follow_up.level, resource_id=follow_up.resource_id, target=follow_up.target,
            patient_id=follow_up.patient_id, study_uid=follow_up.study_uid,
            calling_aet=job.calling_aet or "", remote_ip=job.remote_ip or "",
            priority=_priority(follow_up, job),
        )
        job_id, count = queue.enqueue(connection, spec, follow_up.instance_ids)
        if job_id is not None:
            summary = follow_up.summary.format(count=count, target=follow_up.target)
            queued.append(f"job {job_id}: {summary}")
    return queued


def _priority(follow_up: FollowUp, job: Job) -> int:
    if follow_up.priority is not None:
        return follow_up.priority
    return job.priority
