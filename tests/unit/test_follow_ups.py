"""The jobs that follow a derivation (jobs/follow_ups.py), queued one way for every capability:
the making job's rule, trigger, calling AE and priority carried over, the output's names, and
nothing queued twice when a replay queues the same follow-ups again."""

from __future__ import annotations

from pathlib import Path

import pytest

from orthanc_plugin.audit.tables import SCHEMA as AUDIT_SCHEMA
from orthanc_plugin.config import RetryPolicySettings
from orthanc_plugin.db import META_SCHEMA, Database
from orthanc_plugin.jobs.follow_ups import FollowUp, queue_follow_ups
from orthanc_plugin.jobs.queue import JobQueue, JobSpec
from orthanc_plugin.jobs.tables import SCHEMA as JOBS_SCHEMA
from orthanc_plugin.rules.priority import Priority

POLICY = RetryPolicySettings(max_attempts=3, base_delay_seconds=0, max_delay_seconds=0)


@pytest.fixture
def queue(tmp_path: Path) -> JobQueue:
    return JobQueue(Database(tmp_path / "q.sqlite", [META_SCHEMA, AUDIT_SCHEMA, JOBS_SCHEMA]),
                    POLICY)


def making_job(queue: JobQueue) -> int:
    spec = JobSpec(rule="research copy", action="anonymize", trigger="stable-study",
                   level="study", resource_id="study-1", target="RESEARCH", patient_id="P1",
                   study_uid="1.2.3", calling_aet="TPS", remote_ip="10.0.0.5",
                   priority=Priority.URGENT)
    with queue.db.transaction() as connection:
        job_id, _ = queue.enqueue(connection, spec, ["orig-1", "orig-2"])
    assert job_id is not None
    return job_id


def test_follow_ups_carry_the_making_jobs_rule_and_priority_and_the_outputs_names(
        queue: JobQueue) -> None:
    job = queue.job(making_job(queue))
    assert job is not None
    follow_ups = [
        FollowUp("forward", "RESEARCH", "study", "copy-study", ("copy-1", "copy-2"),
                 "ANON-1", "2.25.9", "{count} copy(ies) to {target}"),
        FollowUp("delete-original", "originals-after-RESEARCH", "study", "study-1",
                 ("orig-1", "orig-2"), "ANON-1", "2.25.9", "delete {count} original(s)",
                 priority=Priority.NORMAL),
    ]
    with queue.db.transaction() as connection:
        queued = queue_follow_ups(connection, queue, job, follow_ups)
    rows = queue.db.query("SELECT * FROM jobs WHERE id<>? ORDER BY id", (job.id,))
    assert queued == [f"job {rows[0]['id']}: 2 copy(ies) to RESEARCH",
                      f"job {rows[1]['id']}: delete 2 original(s)"]
    forward, delete = rows
    assert (forward["action"], forward["rule"], forward["trigger"], forward["calling_aet"],
            forward["remote_ip"], forward["patient_id"], forward["study_uid"],
            forward["priority"]) == ("forward", "research copy", "stable-study", "TPS",
                                     "10.0.0.5", "ANON-1", "2.25.9", int(Priority.URGENT))
    assert (delete["action"], delete["priority"]) == ("delete-original", int(Priority.NORMAL))
    items = queue.db.query("SELECT job_id, instance_id FROM job_items WHERE job_id<>? "
                           "ORDER BY job_id, instance_id", (job.id,))
    assert [(i["job_id"], i["instance_id"]) for i in items] == [
        (forward["id"], "copy-1"), (forward["id"], "copy-2"),
        (delete["id"], "orig-1"), (delete["id"], "orig-2")]

    # A replay (the making job run again after a crash) queues nothing new.
    with queue.db.transaction() as connection:
        assert queue_follow_ups(connection, queue, job, follow_ups) == []
    assert len(queue.db.query("SELECT id FROM jobs")) == 3
