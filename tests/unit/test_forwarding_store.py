"""Forwarding's store on a real gateway database: a commitment request's life (due, requested,
committed, lost and asked again, refused), what is in flight, the jobs labelled after they settle,
and forwarding's records following the queue's items (retried by hand, pruned, moved out of the
queue's table by the migration), each written in the queue's transactions as the forwarder does."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from orthanc_plugin.audit import counts
from orthanc_plugin.audit.tables import SCHEMA as AUDIT_SCHEMA
from orthanc_plugin.config import RetryPolicySettings
from orthanc_plugin.db_engine import StateDatabase
from orthanc_plugin.forwarding import store
from orthanc_plugin.forwarding.tables import SCHEMA as FORWARDING_SCHEMA
from orthanc_plugin.forwarding.tables import move_records_out_of_the_queue
from orthanc_plugin.jobs.own_output import SCHEMA as OWN_OUTPUT_SCHEMA
from orthanc_plugin.jobs.queue import ClaimedItem, JobQueue, JobSpec
from orthanc_plugin.jobs.tables import SCHEMA as JOBS_SCHEMA
from tests.conftest import MakeDatabase


@pytest.fixture
def db(make_database: MakeDatabase) -> StateDatabase:
    """On each engine (conftest.make_database: SQLite, then PostgreSQL)."""
    return make_database([AUDIT_SCHEMA, JOBS_SCHEMA, OWN_OUTPUT_SCHEMA, FORWARDING_SCHEMA])


def sent_with_commitment(db: StateDatabase, target: str, instances: list[str]) -> list[ClaimedItem]:
    queue = JobQueue(db, RetryPolicySettings())
    with db.transaction() as connection:
        queue.enqueue(connection, JobSpec("r", "forward", "instance", "instance", instances[0],
                                          target), instances)
    claim = queue.claim(1000)
    assert claim is not None
    queue.mark_sent(claim.items, {},
                    also=lambda connection, sent: store.note_delivered(connection, sent, 50.0))
    queue.settle(claim.job_ids, None, None)
    return list(claim.items)


def in_flight(db: StateDatabase, items: list[ClaimedItem], orthanc_job: str) -> None:
    with db.transaction() as connection:
        store.mark_in_flight(connection, items, orthanc_job, time.time())


def test_a_request_goes_from_due_to_committed_with_its_target(db: StateDatabase) -> None:
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
    # The committed are counted as they commit (audit/counts.py), once: a report that comes
    # twice adds nothing.
    assert store.commit_state_counts(db) == {store.DUE: 1, store.REQUESTED: 1}
    assert counts.running_totals(db)["committed"] == 1
    store.record_committed(db, "1.2.3", [(items[0].job_id, "a")])
    assert counts.running_totals(db)["committed"] == 1


def test_a_lost_report_makes_its_instances_due_again(db: StateDatabase) -> None:
    items = sent_with_commitment(db, "LINAC", ["a", "b"])
    store.note_requested(db, "LINAC", "9.9", [(i.job_id, i.instance_id) for i in items], 5.0)
    store.ask_again(db, "9.9")
    assert store.pending_requests(db) == []
    assert store.requested_items(db, "9.9") == []
    assert [item.instance_id for item in store.due_items(db, limit=10)] == ["a", "b"]


def test_not_committed_parks_the_instance_and_its_finished_job(db: StateDatabase) -> None:
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


def test_in_flight_lists_only_pending_items_an_orthanc_job_carries(db: StateDatabase) -> None:
    queue = JobQueue(db, RetryPolicySettings())
    with db.transaction() as connection:
        queue.enqueue(connection, JobSpec("r", "forward", "instance", "instance", "s",
                                          "PACS"), ["x", "y", "z"])
    claim = queue.claim(1000)
    assert claim is not None
    in_flight(db, claim.items[:2], "orthanc-job-1")
    assert store.in_flight_of(db, claim.items) == {
        claim.items[0]: store.InFlight("orthanc-job-1", 0),
        claim.items[1]: store.InFlight("orthanc-job-1", 1)}
    queue.mark_sent(claim.items[:1], {},
                    also=lambda connection, sent: store.note_delivered(connection, sent, None))
    assert [(row["instance_id"], row["in_flight_pos"], row["target"])
            for row in store.in_flight(db, limit=10)] == [("y", 1, "PACS")]
    assert store.in_flight(db, limit=0) == []
    queue.mark_refused(claim.items[1], "0xA700", also=store.clear_in_flight)
    assert store.in_flight_of(db, claim.items) == {}
    # Nothing is kept of an instance neither in flight nor followed for commitment.
    assert db.query("SELECT COUNT(*) AS n FROM forward_items")[0]["n"] == 0
    assert db.query("SELECT orthanc_job FROM orthanc_store_jobs")[0]["orthanc_job"] == \
        "orthanc-job-1"


def test_settled_jobs_carry_their_study_state_and_sent_count(db: StateDatabase) -> None:
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


def test_a_job_retried_by_hand_is_committed_afresh(db: StateDatabase) -> None:
    items = sent_with_commitment(db, "LINAC", ["a", "b"])
    job_id = items[0].job_id
    store.record_not_committed(db, [(job_id, "a")], "failure 0x0110", [job_id], "refused", None)
    queue = JobQueue(db, RetryPolicySettings())
    queue.items_reset.append(store.forget_reset_items)   # as forwarding's install does
    assert queue.retry_by_hand(job_id)
    # "a" goes back to pending and its failed commitment is forgotten; "b" still waits for its.
    assert store.commit_state_counts(db) == {store.DUE: 1}
    assert [item.instance_id for item in store.due_items(db, limit=10)] == ["b"]


def test_a_jobs_commitment_shows_in_its_json(db: StateDatabase) -> None:
    items = sent_with_commitment(db, "LINAC", ["a", "b", "c"])
    job_id = items[0].job_id
    store.record_committed(db, "t", [(job_id, "a")])
    store.record_not_committed(db, [(job_id, "b")], "failure 0x0110", [job_id], "refused", None)
    queue = JobQueue(db, RetryPolicySettings())
    queue.job_details.append(lambda job: store.job_commitment(db, job))
    job = queue.get(job_id)
    assert job is not None and job["commitment"] == {
        "committed": 1, "waiting": 1,
        "not_committed": [{"instance": "b", "reason": "failure 0x0110"}]}
    assert store.job_commitment(db, 999) == {}


def test_pruned_jobs_take_their_records_and_carry_the_committed(db: StateDatabase) -> None:
    items = sent_with_commitment(db, "LINAC", ["a", "b"])
    other = sent_with_commitment(db, "LINAC", ["c"])
    store.record_committed(db, "t", [(items[0].job_id, "a")])
    with db.transaction() as connection:
        assert store.forget_pruned_jobs(connection, [items[0].job_id]) == {"committed": 1.0}
    assert [item.instance_id for item in store.due_items(db, limit=10)] == [
        item.instance_id for item in other]


def test_the_migration_moves_the_records_out_of_the_queues_table(tmp_path: Path) -> None:
    """A database of version 6 kept forwarding's records on job_items: version 7 moves them."""
    path = tmp_path / "v6.sqlite"
    with sqlite3.connect(path) as connection:
        connection.executescript(FORWARDING_SCHEMA + """
            CREATE TABLE job_items(job_id INTEGER, rule TEXT, target TEXT, instance_id TEXT,
                position INTEGER, state TEXT, in_flight_job TEXT, in_flight_pos INTEGER,
                commit_state TEXT, commit_txn TEXT, commit_since REAL,
                PRIMARY KEY(job_id, instance_id));
            CREATE INDEX job_items_commit ON job_items(commit_state)
                WHERE commit_state IS NOT NULL;
            INSERT INTO job_items VALUES(1, 'r', 'PACS', 'a', 0, 'pending', 'oj', 3,
                                         NULL, NULL, NULL);
            INSERT INTO job_items VALUES(1, 'r', 'PACS', 'b', 1, 'sent', NULL, NULL,
                                         'requested', 'txn', 12.5);
            INSERT INTO job_items VALUES(1, 'r', 'PACS', 'c', 2, 'sent', NULL, NULL,
                                         NULL, NULL, NULL);
            """)
        move_records_out_of_the_queue(connection)
        assert connection.execute(
            "SELECT * FROM forward_items ORDER BY instance_id").fetchall() == [
            (1, "a", "oj", 3, None, None, None), (1, "b", None, None, "requested", "txn", 12.5)]
        assert connection.execute(
            "SELECT COUNT(*) FROM job_items WHERE in_flight_job IS NOT NULL "
            "OR commit_state IS NOT NULL").fetchone() == (0,)
        assert connection.execute(
            "SELECT name FROM sqlite_master WHERE name='job_items_commit'").fetchone() is None
        move_records_out_of_the_queue(connection)   # run twice (a new database runs it too)
        assert connection.execute("SELECT COUNT(*) FROM forward_items").fetchone() == (2,)
