"""Forwarding's store on a real gateway database: a commitment request's life (due, requested,
committed, lost and asked again, refused), the in-flight list and the jobs labelled after they
settle, each through the queue's own writes as the forwarder makes them."""

from __future__ import annotations

from pathlib import Path

import pytest

from orthanc_plugin.audit.tables import SCHEMA as AUDIT_SCHEMA
from orthanc_plugin.config import RetryPolicySettings
from orthanc_plugin.db import META_SCHEMA, Database
from orthanc_plugin.forwarding import store
from orthanc_plugin.forwarding.tables import SCHEMA as FORWARDING_SCHEMA
from orthanc_plugin.jobs.own_output import SCHEMA as OWN_OUTPUT_SCHEMA
from orthanc_plugin.jobs.queue import ClaimedItem, JobQueue, JobSpec
from orthanc_plugin.jobs.tables import SCHEMA as JOBS_SCHEMA


@pytest.fixture
def db(tmp_path: Path) -> Database:
    database = Database(tmp_path / "g.sqlite", [META_SCHEMA, AUDIT_SCHEMA, JOBS_SCHEMA,
                                                OWN_OUTPUT_SCHEMA, FORWARDING_SCHEMA])
    store.create_commit_index(database)
    return database


def sent_with_commitment(db: Database, target: str, instances: list[str]) -> list[ClaimedItem]:
    queue = JobQueue(db, RetryPolicySettings())
    with db.transaction() as connection:
        queue.enqueue(connection, JobSpec("r", "forward", "instance", "instance", instances[0],
                                          target), instances)
    claim = queue.claim(1000)
    assert claim is not None
    queue.mark_sent(claim.items, {}, commit=True)
    queue.settle(claim.job_ids, None, None)
    return list(claim.items)


def test_a_request_goes_from_due_to_committed_with_its_target(db: Database) -> None:
    items = sent_with_commitment(db, "LINAC", ["a", "b", "c"])
    due = store.due_items(db, limit=2)
    assert [(item.instance_id, item.target) for item in due] == [("a", "LINAC"), ("b", "LINAC")]
    assert all(item.since is not None for item in due)
    store.note_requested(db, "LINAC", "1.2.3", [(i.job_id, i.instance_id) for i in due], 100.0)
    assert store.pending_requests(db) == [store.CommitRequest("1.2.3", "LINAC", 100.0)]
    assert sorted(store.requested_items(db, "1.2.3")) == [(items[0].job_id, "a"),
                                                          (items[0].job_id, "b")]
    assert store.commit_state_counts(db) == {store.DUE: 1, store.REQUESTED: 2}
    store.record_committed(db, "1.2.3", [(items[0].job_id, "a")])
    assert store.pending_requests(db) == []
    assert store.commit_state_counts(db) == {store.DUE: 1, store.REQUESTED: 1,
                                             store.COMMITTED: 1}


def test_a_lost_report_makes_its_instances_due_again(db: Database) -> None:
    items = sent_with_commitment(db, "LINAC", ["a", "b"])
    store.note_requested(db, "LINAC", "9.9", [(i.job_id, i.instance_id) for i in items], 5.0)
    store.ask_again(db, "9.9")
    assert store.pending_requests(db) == []
    assert store.requested_items(db, "9.9") == []
    assert [item.instance_id for item in store.due_items(db, limit=10)] == ["a", "b"]


def test_not_committed_parks_the_instance_and_its_finished_job(db: Database) -> None:
    items = sent_with_commitment(db, "LINAC", ["a", "b"])
    job_id = items[0].job_id
    store.note_requested(db, "LINAC", "7.7", [(job_id, "a")], 5.0)
    store.record_not_committed(db, [(job_id, "a")], "failure 0x0110", [job_id],
                               "1 instance(s) not committed by LINAC", "7.7")
    assert store.pending_requests(db) == []
    assert store.commit_state_counts(db) == {store.DUE: 1, store.FAILED: 1}
    job = db.query("SELECT state, last_status FROM jobs WHERE id=?", (job_id,))[0]
    assert (job["state"], job["last_status"]) == ("dead", store.NOT_COMMITTED)
    item = db.query("SELECT state, status FROM job_items WHERE instance_id='a'")[0]
    assert (item["state"], item["status"]) == (store.NOT_COMMITTED, "failure 0x0110")


def test_in_flight_lists_only_pending_items_an_orthanc_job_carries(db: Database) -> None:
    queue = JobQueue(db, RetryPolicySettings())
    with db.transaction() as connection:
        queue.enqueue(connection, JobSpec("r", "forward", "instance", "instance", "s",
                                          "PACS"), ["x", "y", "z"])
    claim = queue.claim(1000)
    assert claim is not None
    queue.mark_in_flight(claim.items[:2], "orthanc-job-1")
    queue.mark_sent(claim.items[:1], {})
    assert [(row["instance_id"], row["in_flight_pos"], row["target"])
            for row in store.in_flight(db, limit=10)] == [("y", 1, "PACS")]
    assert store.in_flight(db, limit=0) == []


def test_settled_jobs_carry_their_study_state_and_sent_count(db: Database) -> None:
    sent_with_commitment(db, "PACS", ["a", "b"])
    queue = JobQueue(db, RetryPolicySettings())
    with db.transaction() as connection:
        other, _ = queue.enqueue(connection, JobSpec("r", "anonymize", "instance", "instance",
                                                     "c", "PACS"), ["c"])
    assert other is not None
    settled = store.settled_jobs(db, [1, other], "forward")
    assert [(job.job_id, job.state, job.sent, job.target) for job in settled] == [
        (1, "done", 2, "PACS")]
    assert store.job_study(db, 1) is not None and store.job_study(db, 999) is None
