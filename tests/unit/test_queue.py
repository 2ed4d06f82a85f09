import dataclasses
import sqlite3
import time
from pathlib import Path

import pytest

from orthanc_plugin.app import all_migrations
from orthanc_plugin.audit.tables import SCHEMA as AUDIT_SCHEMA
from orthanc_plugin.config import RetryPolicySettings
from orthanc_plugin.db import META_SCHEMA, Database
from orthanc_plugin.db_engine import SQLITE, StateDatabase
from orthanc_plugin.jobs.queue import JobQueue, JobSpec
from orthanc_plugin.jobs.records import Job
from orthanc_plugin.jobs.retry import decide
from orthanc_plugin.jobs.states import JobState
from orthanc_plugin.jobs.tables import SCHEMA as JOBS_SCHEMA
from orthanc_plugin.rules.priority import Priority

POLICY = RetryPolicySettings(max_attempts=3, base_delay_seconds=0, max_delay_seconds=0)


# `queue_database` (tests/conftest.py): every test here runs on SQLite and on a real PostgreSQL.
@pytest.fixture
def database(queue_database: StateDatabase) -> StateDatabase:
    return queue_database


@pytest.fixture
def queue(database: StateDatabase) -> JobQueue:
    return JobQueue(database, POLICY)


def table_columns(db: StateDatabase, table: str) -> list[str]:
    if db.dialect == SQLITE:
        return [row["name"] for row in db.query(f"PRAGMA table_info({table})")]
    return [row["column_name"] for row in db.query(
        "SELECT column_name FROM information_schema.columns WHERE table_name=? "
        "AND table_schema=current_schema() ORDER BY ordinal_position", (table,))]


def spec(target: str = "ARCHIVE", resource: str = "study-1") -> JobSpec:
    return JobSpec(rule="r", action="forward", trigger="stable-study", level="study",
                   resource_id=resource, target=target)


def enqueue(queue: JobQueue, ids: list[str], **kwargs: str) -> tuple[int | None, int]:
    with queue.db.transaction() as connection:
        return queue.enqueue(connection, spec(**kwargs), ids)


def test_an_instance_is_queued_once_per_rule_and_target(queue: JobQueue) -> None:
    job, count = enqueue(queue, ["a", "b"])
    assert job is not None and count == 2
    assert enqueue(queue, ["a", "b"]) == (None, 0)          # a replay queues nothing
    second, count = enqueue(queue, ["a", "b", "c"])          # the study grew: only c
    assert second is not None and count == 1
    other, count = enqueue(queue, ["a"], target="ORGANO")    # another target is another job
    assert other is not None and count == 1


def test_claim_groups_jobs_of_one_target_and_keeps_order(queue: JobQueue) -> None:
    for name in ["i1", "i2", "i3"]:
        enqueue(queue, [name], resource=name)
    enqueue(queue, ["x"], target="ORGANO", resource="x")
    claim = queue.claim(max_items=10)
    assert claim is not None and claim.target == "ARCHIVE"
    assert [item.instance_id for item in claim.items] == ["i1", "i2", "i3"]
    assert queue.claim(max_items=10).target == "ORGANO"
    assert queue.claim(max_items=10) is None


def test_a_claim_hands_out_frozen_job_records_of_what_was_enqueued(queue: JobQueue) -> None:
    with queue.db.transaction() as connection:
        named, _ = queue.enqueue(connection, JobSpec(
            rule="plan to linac", action="forward", trigger="stable-study", level="study",
            resource_id="study-1", target="LINAC", patient_id="P1", study_uid="1.2.3",
            calling_aet="TPS", remote_ip="10.0.0.5", priority=Priority.URGENT), ["a", "b"])
        bare, _ = queue.enqueue(connection, JobSpec(
            rule="plan to linac", action="forward", trigger="instance", level="instance",
            resource_id="c", target="LINAC"), ["c"])
    claim = queue.claim(max_items=10)
    assert claim is not None and claim.job_ids == [named, bare]
    first, second = claim.jobs
    assert all(type(job) is Job for job in claim.jobs)
    assert (first.id, first.rule, first.action, first.trigger, first.level, first.resource_id,
            first.target, first.priority, first.patient_id, first.study_uid, first.calling_aet,
            first.remote_ip) == (named, "plan to linac", "forward", "stable-study", "study",
                                 "study-1", "LINAC", int(Priority.URGENT), "P1", "1.2.3", "TPS",
                                 "10.0.0.5")
    assert (second.id, second.resource_id, second.priority, second.patient_id,
            second.study_uid) == (bare, "c", int(Priority.NORMAL), "", "")
    # As read at the claim: waiting, no attempt yet (the claim's own update comes after).
    assert first.state == JobState.PENDING == "pending" and first.attempts == 0
    assert first.awaits_description is False and first.failing_since is None
    assert isinstance(first.created_epoch, float) and isinstance(first.next_attempt_at, float)
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.target = "ELSEWHERE"  # type: ignore[misc]
    # Every column of the jobs table is a field, and nothing else.
    columns = table_columns(queue.db, "jobs")
    assert [field.name for field in dataclasses.fields(Job)] == columns
    # The queue's own read of the job: the claim's update, the rest as enqueued.
    running = queue.job(named)
    assert running is not None and running.claim_id
    assert running == dataclasses.replace(
        first, state=JobState.RUNNING, attempts=1, updated_at=running.updated_at, claimed_by="",
        claim_id=running.claim_id, claim_items=2, lease_until=running.lease_until, fence=1)
    # Its lease runs from the claim (lease_store.LEASE_SECONDS), its token is the first.
    assert running.lease_until is not None and running.lease_until > time.time() + 30


def test_partial_delivery_then_retry_then_park(queue: JobQueue) -> None:
    job_id, _ = enqueue(queue, ["a", "b", "c"])
    claim = queue.claim(10)
    queue.mark_sent(claim.items[:1], {"a": 10})
    assert queue.settle(claim.job_ids, "connection refused", "network")[job_id] == "pending"
    claim = queue.claim(10)
    assert [i.instance_id for i in claim.items] == ["b", "c"]   # only what was not sent
    queue.settle(claim.job_ids, "connection refused", "network")
    claim = queue.claim(10)
    assert queue.settle(claim.job_ids, "connection refused", "network")[job_id] == "dead"
    assert queue.claim(10) is None
    assert queue.retry_by_hand(job_id)
    claim = queue.claim(10)
    queue.mark_sent(claim.items, {})
    assert queue.settle(claim.job_ids, None, None)[job_id] == "done"
    assert queue.get(job_id)["sent"] == 3


def test_refused_instance_parks_the_job_after_the_rest_is_sent(queue: JobQueue) -> None:
    job_id, _ = enqueue(queue, ["a", "b"])
    claim = queue.claim(10)
    queue.mark_refused(claim.items[0], "0xA700")
    queue.mark_sent(claim.items[1:], {})
    assert queue.settle(claim.job_ids, None, None)[job_id] == "dead"
    job = queue.get(job_id)
    assert job["refused"] == [{"instance": "a", "status": "0xA700"}]
    assert not queue.retry_by_hand(job_id + 100)


def test_running_jobs_are_requeued_after_a_crash(queue: JobQueue) -> None:
    enqueue(queue, ["a"])
    assert queue.claim(10) is not None
    assert queue.claim(10) is None
    assert queue.recover_after_crash() == 1
    assert queue.claim(10) is not None


def test_backoff_doubles_up_to_the_cap_then_gives_up() -> None:
    policy = RetryPolicySettings(max_attempts=5, base_delay_seconds=2, max_delay_seconds=10)
    assert [decide(n, policy).delay_seconds for n in range(1, 5)] == [2, 4, 8, 10]
    assert decide(5, policy).retry is False


def test_next_due_reflects_backoff(database: StateDatabase) -> None:
    db = database
    queue = JobQueue(db, RetryPolicySettings(5, 30, 60))
    with db.transaction() as connection:
        queue.enqueue(connection, spec(), ["a"])
    claim = queue.claim(10)
    queue.settle(claim.job_ids, "down", "network")
    due = queue.next_due_in()
    assert due is not None and 25 < due <= 30
    assert queue.claim(10) is None
    assert time.time() > 0


def test_nothing_in_flight_sends_at_once_and_a_second_claim_lingers(queue: JobQueue) -> None:
    enqueue(queue, ["first"], resource="first")
    # Nothing running for the target: the first instance leaves at once, whatever the linger.
    first = queue.claim(200, linger_seconds=60, linger_until_items=40)
    assert first is not None and len(first.items) == 1
    for number in range(10):
        enqueue(queue, [f"i{number}"], resource=f"i{number}")
    # One claim running and fewer than one association's worth ready, jobs still arriving: wait.
    assert queue.claim(200, linger_seconds=60, linger_until_items=40) is None
    for number in range(10, 45):
        enqueue(queue, [f"i{number}"], resource=f"i{number}")
    # 45 ready: an association can be filled, so no more waiting even though jobs keep coming.
    claim = queue.claim(200, linger_seconds=60, linger_until_items=40)
    assert claim is not None and len(claim.items) == 45


def test_each_delivery_is_counted_by_one_transfer_row_whoever_established_it(
    queue: JobQueue,
) -> None:
    job_id, _ = enqueue(queue, ["a", "b", "c"])
    assert job_id is not None
    claim = queue.claim(10)
    assert claim is not None
    # A worker marks two sent, then dies before writing its transfer row.
    queue.mark_sent(claim.items[:2], {"a": 10, "b": 20})
    assert queue.recover_after_crash("gen-2") == 1
    claim = queue.claim(10)
    assert claim is not None and [i.instance_id for i in claim.items] == ["c"]
    queue.mark_sent(claim.items, {"c": 30})
    with queue.db.transaction() as connection:
        assert queue.take_unreported(connection, job_id) == (3, 60)
    with queue.db.transaction() as connection:
        assert queue.take_unreported(connection, job_id) == (0, 0)   # never twice
    assert queue.settle([job_id], None, None)[job_id] == "done"


def test_a_delivery_in_an_older_database_is_not_counted_again(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as connection:  # job_items as an earlier version made it
        connection.executescript(
            "CREATE TABLE job_items(job_id INTEGER, rule TEXT, target TEXT, instance_id TEXT,"
            " position INTEGER, state TEXT NOT NULL DEFAULT 'pending', status TEXT,"
            " sent_at TEXT, bytes INTEGER NOT NULL DEFAULT 0, PRIMARY KEY(job_id, instance_id),"
            " UNIQUE(rule, target, instance_id));"
            "INSERT INTO job_items(job_id, rule, target, instance_id, position, state)"
            " VALUES(1, 'r', 'ARCHIVE', 'old', 0, 'sent');")
    db = Database(path, [META_SCHEMA, AUDIT_SCHEMA, JOBS_SCHEMA])
    assert db.migrate(all_migrations()) == list(range(1, len(all_migrations()) + 1))
    queue = JobQueue(db, POLICY)
    with db.transaction() as connection:
        assert queue.take_unreported(connection, 1) == (0, 0)
    job_id, _ = enqueue(queue, ["new"])
    assert job_id is not None
    claim = queue.claim(10)
    assert claim is not None
    queue.mark_sent(claim.items, {"new": 5})
    with db.transaction() as connection:
        assert queue.take_unreported(connection, job_id) == (1, 5)


def test_a_job_failing_over_moves_whole_even_what_reached_the_primary(queue: JobQueue) -> None:
    job_id, _ = enqueue(queue, ["ct1", "ct2", "plan"], target="LINAC1")
    assert job_id is not None
    claim = queue.claim(max_items=10)
    assert claim is not None
    queue.mark_sent(claim.items[:1], {})          # ct1 reached LINAC1, then it went down
    queue.settle(claim.job_ids, "connection refused", "failed")
    failing = queue.db.query("SELECT failing_since FROM jobs WHERE id=?", (job_id,))[0][0]
    assert failing is not None
    assert queue.failover_candidates("LINAC1", "forward", failing - 1) == []
    assert queue.failover_candidates("LINAC1", "forward", failing) == [job_id]
    moved = queue.redirect(job_id, "LINAC2", "LINAC1 not reached for 600 s")
    assert moved is not None
    _, new_id, count = moved
    assert count == 3                              # the whole plan, ct1 included
    assert [r["instance_id"] for r in queue.db.query(
        "SELECT instance_id FROM job_items WHERE job_id=? ORDER BY position", (new_id,))] == [
        "ct1", "ct2", "plan"]
    old = queue.get(job_id)
    assert old is not None and old["state"] == "cancelled" and old["last_status"] == "failed-over"
    assert queue.redirect(job_id, "LINAC2", "again") is None     # moved once


def test_a_delivery_ends_a_run_of_failures(queue: JobQueue) -> None:
    job_id, _ = enqueue(queue, ["a", "b"])
    claim = queue.claim(max_items=1)
    assert claim is not None
    queue.settle(claim.job_ids, "timed out", "failed")
    queue.db.execute("UPDATE jobs SET next_attempt_at=0")
    claim = queue.claim(max_items=1)
    assert claim is not None
    queue.mark_sent(claim.items, {})
    assert queue.db.query("SELECT failing_since FROM jobs WHERE id=?", (job_id,))[0][0] is None


def test_a_job_is_settled_with_its_records_or_not_at_all(queue: JobQueue) -> None:
    """The executor's rows (forwarding's transfer rows) commit with the job's new state: a job
    never shows as done before they exist, and a failure while writing them leaves it running."""
    job_id, _ = enqueue(queue, ["a", "b"])
    assert job_id is not None
    claim = queue.claim(10)
    assert claim is not None
    queue.mark_sent(claim.items, {"a": 1, "b": 2})
    seen: list[dict[int, str]] = []

    def fails_half_way(connection: sqlite3.Connection, outcome: dict[int, str]) -> None:
        seen.append(dict(outcome))
        queue.take_unreported(connection, job_id)
        raise RuntimeError("killed while writing the rows")

    with pytest.raises(RuntimeError):
        queue.settle([job_id], None, None, with_outcome=fails_half_way)
    assert seen == [{job_id: "done"}]
    assert queue.db.query("SELECT state FROM jobs WHERE id=?", (job_id,))[0]["state"] == "running"
    counted: list[tuple[int, int]] = []

    def counts(connection: sqlite3.Connection, outcome: dict[int, str]) -> None:
        counted.append(queue.take_unreported(connection, job_id))

    assert queue.settle([job_id], None, None, with_outcome=counts) == {job_id: "done"}
    assert counted == [(2, 3)]    # the failed settle counted nothing: it was rolled back whole


def test_a_job_taken_elsewhere_between_choice_and_claim_is_left_out(queue: JobQueue) -> None:
    """The claim takes each job by compare-and-set (state still pending), not by trusting the
    engine's lock: with row locks (PostgreSQL), another node may take a chosen job first. Here a
    trigger makes the database refuse the update of one job, as a row another claim took would."""
    first, _ = enqueue(queue, ["a", "b"], resource="s1")
    second, _ = enqueue(queue, ["c"], resource="s2")
    assert first is not None and second is not None
    with queue.db.transaction() as connection:
        if queue.db.dialect == SQLITE:
            connection.execute(
                f"CREATE TRIGGER taken_elsewhere BEFORE UPDATE OF state ON jobs WHEN old.id = "
                f"{first} AND new.state = 'running' BEGIN SELECT RAISE(IGNORE); END")
        else:   # a BEFORE trigger returning NULL skips the row, as RAISE(IGNORE) does
            connection.execute(
                "CREATE FUNCTION skip_update() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN RETURN NULL; END $$")
            connection.execute(
                f"CREATE TRIGGER taken_elsewhere BEFORE UPDATE OF state ON jobs FOR EACH ROW "
                f"WHEN (old.id = {first} AND new.state = 'running') EXECUTE FUNCTION skip_update()")
    claim = queue.claim(10)
    assert claim is not None
    assert [job.id for job in claim.jobs] == [second]
    assert [item.instance_id for item in claim.items] == ["c"]
    states = {row["id"]: row["state"] for row in queue.db.query("SELECT id, state FROM jobs")}
    assert states == {first: "pending", second: "running"}
