"""Claims as leases with fencing tokens (jobs/lease_store.py), on SQLite and on a real PostgreSQL:
a lease that runs out is taken over by another worker, and the old holder's late writes are
refused whole."""

from __future__ import annotations

import threading
import time
from unittest.mock import MagicMock

import pytest

from orthanc_plugin.config import RetryPolicySettings
from orthanc_plugin.db_engine import StateDatabase
from orthanc_plugin.jobs.executors import Registry
from orthanc_plugin.jobs.lease_store import LeaseLost
from orthanc_plugin.jobs.queue import Claim, ClaimedItem, JobQueue, JobSpec
from orthanc_plugin.jobs.states import JobState
from orthanc_plugin.jobs.workers import WorkerPool

POLICY = RetryPolicySettings(max_attempts=3, base_delay_seconds=0, max_delay_seconds=0)
LATER = 3600.0   # "now" for a takeover an hour on: every lease of the test has run out


def enqueue(queue: JobQueue, resource: str, instances: list[str]) -> int:
    with queue.db.transaction() as connection:
        job_id, _ = queue.enqueue(connection, JobSpec(
            rule="r", action="forward", trigger="stable-study", level="study",
            resource_id=resource, target="ARCHIVE"), instances)
    assert job_id is not None
    return job_id


def fence_of(db: StateDatabase, job_id: int) -> int:
    return int(db.query("SELECT fence FROM jobs WHERE id=?", (job_id,))[0]["fence"])


def item_states(db: StateDatabase, job_id: int) -> dict[str, str]:
    return {row["instance_id"]: row["state"] for row in db.query(
        "SELECT instance_id, state FROM job_items WHERE job_id=?", (job_id,))}


@pytest.fixture
def nodes(queue_database: StateDatabase) -> tuple[JobQueue, JobQueue]:
    """Two workers (two nodes' worth) on one database."""
    return (JobQueue(queue_database, POLICY, claimant="node-a:11"),
            JobQueue(queue_database, POLICY, claimant="node-b:22"))


def test_a_lease_that_ran_out_is_taken_over_and_the_old_holders_writes_are_refused(
        nodes: tuple[JobQueue, JobQueue]) -> None:
    old, new = nodes
    job_id = enqueue(old, "study-1", ["a", "b"])
    stale = old.claim(max_items=10)
    assert stale is not None and stale.job_ids == [job_id]
    assert fence_of(old.db, job_id) == 1
    # While the lease runs, nobody takes the job over.
    assert new.leases.take_over_expired() == ([], [])
    # An hour on (the old holder paused, its node died): any worker takes it over.
    assert new.leases.take_over_expired(time.time() + LATER) == ([job_id], [])
    taken = old.job(job_id)
    assert taken is not None and taken.state == JobState.PENDING
    assert taken.last_status == "lease-expired" and taken.crashes == 1
    fresh = new.claim(max_items=10)
    assert fresh is not None and fresh.job_ids == [job_id] and fence_of(new.db, job_id) == 3
    # The old holder wakes up: its item writes and its settle are refused and change nothing.
    with pytest.raises(LeaseLost) as lost:
        old.mark_sent(stale.items[:1], {"a": 10})
    assert lost.value.job_ids == [job_id]
    with pytest.raises(LeaseLost):
        old.mark_refused(stale.items[1], "0xA700")
    with pytest.raises(LeaseLost):
        old.settle(stale.job_ids, None, None)
    with pytest.raises(LeaseLost):
        old.postpone(stale.job_ids, 60, "waiting")
    assert item_states(old.db, job_id) == {"a": "pending", "b": "pending"}
    running = new.job(job_id)
    assert running is not None and running.state == JobState.RUNNING
    assert running.claimed_by == "node-b:22"
    # The new holder's writes are taken.
    new.mark_sent(fresh.items, {"a": 10, "b": 20})
    assert new.settle(fresh.job_ids, None, None) == {job_id: JobState.DONE}
    assert item_states(new.db, job_id) == {"a": "sent", "b": "sent"}


def test_a_renewed_lease_holds_and_a_lost_one_is_reported_to_its_old_holder(
        nodes: tuple[JobQueue, JobQueue]) -> None:
    old, new = nodes
    job_id = enqueue(old, "study-1", ["a"])
    assert old.claim(max_items=10) is not None
    before = old.job(job_id)
    assert before is not None and before.lease_until is not None
    time.sleep(0.01)   # a renewal later than the claim by a measurable amount of clock
    assert old.renew_leases() == []
    renewed = old.job(job_id)
    assert renewed is not None and renewed.lease_until is not None
    assert renewed.lease_until > before.lease_until
    # The holder's own late lease is renewed by it, never taken over by it.
    assert old.leases.take_over_expired(time.time() + LATER) == ([], [])
    assert new.leases.take_over_expired(time.time() + LATER) == ([job_id], [])
    # Its next renewal learns the job is gone and forgets it.
    assert old.renew_leases() == [job_id]
    assert old.leases.held() == {}


def test_a_job_whose_lease_runs_out_twice_is_parked_as_poison(
        nodes: tuple[JobQueue, JobQueue]) -> None:
    old, new = nodes
    job_id = enqueue(old, "study-1", ["a"])
    assert old.claim(max_items=10) is not None
    assert new.leases.take_over_expired(time.time() + LATER) == ([job_id], [])
    assert old.claim(max_items=10) is not None
    assert new.leases.take_over_expired(time.time() + LATER) == ([], [job_id])
    parked = new.job(job_id)
    assert parked is not None and parked.state == JobState.DEAD
    assert parked.last_status == "poison" and "lease ran out" in (parked.last_error or "")


def test_a_claim_cut_short_gives_back_only_the_jobs_it_still_holds(
        nodes: tuple[JobQueue, JobQueue]) -> None:
    old, new = nodes
    kept_id = enqueue(old, "study-1", ["a"])
    lost_id = enqueue(old, "study-2", ["b"])
    claim = old.claim(max_items=10)
    assert claim is not None and claim.job_ids == [kept_id, lost_id]
    # Only the second job's lease ran out (its renewal failed, say).
    with old.db.transaction() as connection:
        connection.execute("UPDATE jobs SET lease_until=0 WHERE id=?", (lost_id,))
    assert new.take_over_expired() == ([lost_id], [])
    assert old.give_back(claim.job_ids, "cut short") == [kept_id]
    kept, lost = old.job(kept_id), old.job(lost_id)
    assert kept is not None and lost is not None
    # Given back: waiting at once, the attempt not spent; the other keeps its takeover.
    assert (kept.state, kept.attempts, kept.last_status) == (JobState.PENDING, 0, "interrupted")
    assert (lost.state, lost.last_status) == (JobState.PENDING, "lease-expired")
    assert old.leases.held() == {}


def test_a_worker_pool_renews_its_claims_and_gives_back_a_claim_that_was_taken_over(
        queue_database: StateDatabase) -> None:
    """The pool's lease thread keeps a long claim alive; a claim whose jobs another worker took
    over ends without a settle of its own (no 'internal error'), and the job runs again."""
    holder = JobQueue(queue_database, POLICY, claimant="node-a:11", lease_seconds=2.0)
    other = JobQueue(queue_database, POLICY, claimant="node-b:22")
    long_job = enqueue(holder, "study-1", ["a"])
    started, release = threading.Event(), threading.Event()
    errors: list[str] = []

    class Slow:
        max_items_per_claim = 10

        def run(self, claim: Claim) -> None:
            started.set()
            release.wait(30)
            holder.mark_sent(claim.items, {})
            holder.settle(claim.job_ids, None, None)

    registry = Registry()
    registry.add_executor("forward", Slow())
    pool = WorkerPool(MagicMock(), holder, registry, workers=1, poll_interval_seconds=0.05,
                      log_error=errors.append)
    pool.start(intake=False)
    try:
        assert started.wait(10)
        first = holder.job(long_job)
        assert first is not None and first.lease_until is not None
        deadline = time.monotonic() + 20
        renewed = first.lease_until
        while renewed < first.lease_until + 2 * holder.leases.renew_every * 0.9:
            assert time.monotonic() < deadline, "the lease thread never renewed the claim"
            time.sleep(0.05)
            now = holder.job(long_job)
            assert now is not None and now.lease_until is not None
            renewed = now.lease_until
        # Renewed twice: its lease is still running, nobody may take the job.
        assert other.take_over_expired() == ([], [])
        # Now another worker takes it over (an hour on, for it), and the holder goes on.
        assert other.leases.take_over_expired(time.time() + LATER) == ([long_job], [])
        release.set()
        deadline = time.monotonic() + 20
        while not any("taken over" in line for line in errors):
            assert time.monotonic() < deadline, errors
            time.sleep(0.05)
        # The log line can come before the job is claimed again: the pool must not stop first.
        while (state := other.job(long_job)) is None or state.state != JobState.DONE:
            assert time.monotonic() < deadline + 20, (state, errors)
            time.sleep(0.05)
    finally:
        release.set()
        pool.stop()
    # The first run's writes were refused; the job, waiting again, was claimed anew (a third
    # token) and that run delivered it: sent once, settled once, no internal error.
    job = other.job(long_job)
    assert job is not None and job.state == JobState.DONE and job.fence == 3
    assert item_states(queue_database, long_job) == {"a": "sent"}
    assert not any("internal error" in line for line in errors), errors


def test_a_node_starting_takes_back_its_own_earlier_claims_never_a_live_neighbours(
        queue_database: StateDatabase) -> None:
    """Two nodes on one database: node A restarts (a new generation) while node B runs a claim.
    A's start takes back A's earlier claims and claims made before leases existed, and leaves
    B's to B (or to B's lease, should B be gone too)."""
    before_a = JobQueue(queue_database, POLICY, claimant="node-a/100-1:101")
    neighbour = JobQueue(queue_database, POLICY, claimant="node-b/200-1:201")
    restarted = JobQueue(queue_database, POLICY, claimant="node-a/300-2:301")
    a_old = enqueue(before_a, "study-1", ["a"])
    assert before_a.claim(max_items=1) is not None
    b_live = enqueue(neighbour, "study-2", ["b"])
    assert neighbour.claim(max_items=1) is not None
    legacy = enqueue(neighbour, "study-3", ["c"])
    assert neighbour.claim(max_items=1) is not None
    with queue_database.transaction() as connection:   # claimed by a release before leases
        connection.execute("UPDATE jobs SET lease_until=NULL, claimed_by='400-1:401' WHERE id=?",
                           (legacy,))
    assert restarted.recover_after_crash("node-a/300-2") == 2
    states = {job_id: restarted.job(job_id) for job_id in (a_old, b_live, legacy)}
    assert {job_id: job.state for job_id, job in states.items() if job} == {
        a_old: JobState.PENDING, b_live: JobState.RUNNING, legacy: JobState.PENDING}
    # A's old claim carries a new token: its dead worker's writes could not land.
    assert fence_of(queue_database, a_old) == 2 and fence_of(queue_database, b_live) == 1
    # B is undisturbed: its writes are taken.
    neighbour.mark_sent([ClaimedItem(b_live, "b")], {"b": 1})
    assert neighbour.settle([b_live], None, None) == {b_live: JobState.DONE}
