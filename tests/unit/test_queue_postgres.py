"""Claims that hold across nodes: several processes, each with its own PostgreSQL connection and
claimant name, draining one queue on a real server (tests/support/postgres.py)."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import threading
import time
from multiprocessing.synchronize import Barrier, Event
from pathlib import Path

from orthanc_plugin.audit.tables import SCHEMA as AUDIT_SCHEMA
from orthanc_plugin.config import RetryPolicySettings
from orthanc_plugin.db_postgres import PostgresDatabase
from orthanc_plugin.destinations.admission import DestinationAdmission
from orthanc_plugin.destinations.model import DestinationPolicy
from orthanc_plugin.jobs.lease_store import LeaseLost
from orthanc_plugin.jobs.queue import JobQueue, JobSpec
from orthanc_plugin.jobs.tables import SCHEMA as JOBS_SCHEMA

POLICY = RetryPolicySettings(max_attempts=3, base_delay_seconds=0, max_delay_seconds=0)
JOBS = 500
# spawn: a child shares nothing with the parent's connections (fork would copy its sockets).
SPAWN = multiprocessing.get_context("spawn")


def one_instance_jobs(db: PostgresDatabase, count: int) -> list[int]:
    queue = JobQueue(db, POLICY)
    ids = []
    with db.transaction() as connection:
        for number in range(count):
            job_id, _ = queue.enqueue(connection, JobSpec(
                rule="r", action="forward", trigger="instance", level="instance",
                resource_id=f"i{number}", target="ARCHIVE"), [f"i{number}"])
            assert job_id is not None
            ids.append(job_id)
    return ids


def drain(conninfo: str, claimant: str, start: Barrier, record: str) -> None:
    """A node's worker: claim a few, deliver, settle, until nothing waits; writes what it took."""
    queue = JobQueue(PostgresDatabase(conninfo), POLICY, claimant=claimant)
    taken: list[int] = []
    start.wait()
    while True:
        claim = queue.claim(max_items=5)
        if claim is None:
            if queue.state_counts().get("pending", 0) == 0:
                break
            continue        # the other node holds the rows it read: look again
        taken.extend(claim.job_ids)
        queue.mark_sent(claim.items, {item.instance_id: 1 for item in claim.items})
        queue.settle(claim.job_ids, None, None)
    Path(record).write_text(json.dumps(taken), encoding="utf-8")


def test_two_processes_claim_every_job_exactly_once(postgres_conninfo: str,
                                                   tmp_path: Path) -> None:
    db = PostgresDatabase(postgres_conninfo, [AUDIT_SCHEMA, JOBS_SCHEMA])
    ids = one_instance_jobs(db, JOBS)
    start = SPAWN.Barrier(2)
    records = [str(tmp_path / f"node-{name}.json") for name in "ab"]
    workers = [SPAWN.Process(target=drain, args=(postgres_conninfo, f"node-{name}:1", start, record))
               for name, record in zip("ab", records, strict=True)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
        assert worker.exitcode == 0
    taken = [json.loads(Path(record).read_text(encoding="utf-8")) for record in records]
    # What each process recorded: together every job, none twice, and both did some.
    assert sorted(taken[0] + taken[1]) == sorted(ids)
    assert all(len(mine) > 0 for mine in taken), [len(mine) for mine in taken]
    # What the database holds: every job done after one claim, by the node that recorded it.
    rows = db.query("SELECT id, state, attempts, claimed_by FROM jobs")
    assert {row["state"] for row in rows} == {"done"}
    assert {row["attempts"] for row in rows} == {1}
    by_node = {row["id"]: row["claimed_by"] for row in rows}
    assert all(by_node[job_id] == "node-a:1" for job_id in taken[0])
    assert all(by_node[job_id] == "node-b:1" for job_id in taken[1])
    sent = db.query("SELECT COUNT(*) AS n, COUNT(DISTINCT instance_id) AS d FROM job_items "
                    "WHERE state='sent'")[0]
    assert (sent["n"], sent["d"]) == (JOBS, JOBS)
    db.close()


def claim_then_hang(conninfo: str, claimed: Event) -> None:
    """A node that claims one job (committed: running, its name on it), then opens a transaction
    holding the next job's row lock, and hangs until it is killed."""
    db = PostgresDatabase(conninfo)
    queue = JobQueue(db, POLICY, claimant="doomed:1")
    assert queue.claim(max_items=1) is not None
    with db.transaction() as connection:
        connection.execute("SELECT id FROM jobs WHERE state='pending' ORDER BY id LIMIT 1 "
                           "FOR UPDATE")
        claimed.set()
        time.sleep(600)


def test_a_killed_claimant_s_job_is_reclaimed_and_finished_by_the_other(
        postgres_conninfo: str) -> None:
    db = PostgresDatabase(postgres_conninfo, [AUDIT_SCHEMA, JOBS_SCHEMA])
    first, second = one_instance_jobs(db, 2)
    claimed = SPAWN.Event()
    doomed = SPAWN.Process(target=claim_then_hang, args=(postgres_conninfo, claimed))
    doomed.start()
    assert claimed.wait(60)
    survivor = JobQueue(db, POLICY, claimant="survivor:1")
    # While it lives, its claim and its row lock keep both jobs from the survivor.
    assert survivor.claim(max_items=10) is None
    assert doomed.pid is not None
    os.kill(doomed.pid, signal.SIGKILL)
    doomed.join(timeout=30)
    assert doomed.exitcode == -signal.SIGKILL
    # Its open transaction dies with its connection (PostgreSQL rolls it back and frees the row):
    # the locked job is claimable; the claimed one is still running under its name.
    deadline = time.monotonic() + 30
    while (claim := survivor.claim(max_items=10)) is None:
        assert time.monotonic() < deadline, "the dead node's row lock was never released"
        time.sleep(0.1)
    assert claim.job_ids == [second]
    survivor.mark_sent(claim.items, {})
    survivor.settle(claim.job_ids, None, None)
    assert survivor.claim(max_items=10) is None
    # The supervisor's view of the dead node: its running job goes back, once.
    assert survivor.reclaim_from_crashed("doomed:1", "killed (SIGKILL)") == ([first], [])
    assert survivor.reclaim_from_crashed("doomed:1", "killed (SIGKILL)") == ([], [])
    claim = survivor.claim(max_items=10)
    assert claim is not None and claim.job_ids == [first]
    survivor.mark_sent(claim.items, {})
    assert survivor.settle(claim.job_ids, None, None) == {first: "done"}
    rows = {row["id"]: row for row in db.query("SELECT * FROM jobs")}
    assert (rows[first]["state"], rows[first]["claimed_by"], rows[first]["crashes"],
            rows[first]["attempts"]) == ("done", "survivor:1", 1, 2)
    assert (rows[second]["state"], rows[second]["claimed_by"]) == ("done", "survivor:1")
    db.close()


def claim_then_write_late(conninfo: str, claimed: Event, resume: Event, outcome: str) -> None:
    """A node that claims one job on a one-second lease, is paused (SIGSTOP by the test: no
    renewal, its connection idle), and once resumed tries to record the job as delivered."""
    queue = JobQueue(PostgresDatabase(conninfo), POLICY, claimant="paused:1", lease_seconds=1.0)
    claim = queue.claim(max_items=1)
    assert claim is not None
    claimed.set()
    assert resume.wait(120)
    try:
        queue.mark_sent(claim.items, {})
        queue.settle(claim.job_ids, None, None)
        result = "written"
    except LeaseLost:
        result = "refused"
    Path(outcome).write_text(result, encoding="utf-8")


def test_a_paused_node_s_lease_runs_out_another_finishes_and_its_late_writes_are_refused(
        postgres_conninfo: str, tmp_path: Path) -> None:
    db = PostgresDatabase(postgres_conninfo, [AUDIT_SCHEMA, JOBS_SCHEMA])
    (job_id,) = one_instance_jobs(db, 1)
    claimed, resume = SPAWN.Event(), SPAWN.Event()
    outcome = tmp_path / "paused.txt"
    paused = SPAWN.Process(target=claim_then_write_late,
                           args=(postgres_conninfo, claimed, resume, str(outcome)))
    paused.start()
    try:
        assert claimed.wait(60)
        assert paused.pid is not None
        os.kill(paused.pid, signal.SIGSTOP)
        survivor = JobQueue(db, POLICY, claimant="survivor:1")
        # Nobody's supervisor sees the paused node: its lease running out is what frees the job.
        deadline = time.monotonic() + 30
        while survivor.take_over_expired() != ([job_id], []):
            assert time.monotonic() < deadline, "the paused node's lease never ran out"
            time.sleep(0.1)
        claim = survivor.claim(max_items=10)
        assert claim is not None and claim.job_ids == [job_id]
        survivor.mark_sent(claim.items, {})
        assert survivor.settle(claim.job_ids, None, None) == {job_id: "done"}
    finally:
        if paused.pid is not None:
            os.kill(paused.pid, signal.SIGCONT)
        resume.set()
        paused.join(timeout=60)
    assert paused.exitcode == 0
    assert outcome.read_text(encoding="utf-8") == "refused"
    row = db.query("SELECT state, claimed_by, crashes, attempts, fence FROM jobs")[0]
    assert (row["state"], row["claimed_by"], row["crashes"], row["attempts"], row["fence"]) == (
        "done", "survivor:1", 1, 2, 3)
    sent = db.query("SELECT state, COUNT(*) AS n FROM job_items GROUP BY state")
    assert [(r["state"], r["n"]) for r in sent] == [("sent", 1)]
    db.close()


def test_a_destinations_association_cap_holds_across_nodes(postgres_conninfo: str) -> None:
    """Two nodes claim for one destination that takes one association at a time (its policy,
    destinations/admission.py). Each node looks, while it holds its claim, at how many claims
    run for it across the cluster: never two. Without the per-destination advisory lock both
    count zero at once under READ COMMITTED and both claim."""
    setup = PostgresDatabase(postgres_conninfo, [AUDIT_SCHEMA, JOBS_SCHEMA])
    ids = one_instance_jobs(setup, 200)
    policies = {"ARCHIVE": DestinationPolicy("ARCHIVE", max_associations=1)}
    start = threading.Barrier(2)
    most_seen: list[int] = []
    taken: list[int] = []
    errors: list[BaseException] = []

    def node(name: str) -> None:
        try:
            db = PostgresDatabase(postgres_conninfo)
            queue = JobQueue(db, POLICY, claimant=f"{name}/1-1:1")
            queue.admission_checks.append(DestinationAdmission(queue, lambda: policies))
            seen = 0
            start.wait()
            while True:
                claim = queue.claim(max_items=1)
                if claim is None:
                    if not db.query("SELECT 1 FROM jobs WHERE state IN ('pending','running') "
                                    "LIMIT 1"):
                        break
                    queue.look_again()   # 'busy': the other node holds the association
                    continue
                running = db.query("SELECT COUNT(DISTINCT claim_id) AS n FROM jobs "
                                   "WHERE state='running' AND target='ARCHIVE'")[0]["n"]
                seen = max(seen, int(running))
                time.sleep(0.002)        # an association's worth of time, held
                taken.extend(claim.job_ids)
                queue.mark_sent(claim.items, {})
                queue.settle(claim.job_ids, None, None)
            most_seen.append(seen)
            db.close()
        except BaseException as error:  # reported by the test's thread
            errors.append(error)

    threads = [threading.Thread(target=node, args=(name,)) for name in ("node-a", "node-b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=180)
    assert not errors, errors
    assert sorted(taken) == sorted(ids)
    assert most_seen == [1, 1]
    setup.close()


def test_two_nodes_queueing_the_same_instance_at_once_make_one_job_of_it(
        postgres_conninfo: str) -> None:
    """Node A queues a study (a, b) and has not committed; node B queues instance a for the same
    rule and target meanwhile. B waits on A's unique key, then finds a taken: B keeps no empty
    job and says it queued nothing; a is sent once, by A's job."""
    first_db = PostgresDatabase(postgres_conninfo, [AUDIT_SCHEMA, JOBS_SCHEMA])
    second_db = PostgresDatabase(postgres_conninfo)
    first, second = JobQueue(first_db, POLICY), JobQueue(second_db, POLICY)
    by_second: list[tuple[int | None, int]] = []

    def second_node() -> None:
        try:
            with second_db.transaction() as connection:
                by_second.append(second.enqueue(connection, JobSpec(
                    rule="r", action="forward", trigger="instance", level="instance",
                    resource_id="a", target="ARCHIVE"), ["a"]))
        except BaseException as error:  # reported by the test's thread
            by_second.append((None, -1))
            raise error

    with first_db.transaction() as connection:
        job_a, count = first.enqueue(connection, JobSpec(
            rule="r", action="forward", trigger="stable-study", level="study",
            resource_id="study-1", target="ARCHIVE"), ["a", "b"])
        assert job_a is not None and count == 2
        racer = threading.Thread(target=second_node)
        racer.start()
        # B is inside its insert, waiting on A's uncommitted key (a state, not a time). The
        # activity view is a snapshot per transaction: cleared before each look.
        deadline = time.monotonic() + 30
        while not first_db.query(
                "SELECT 1 FROM pg_stat_activity WHERE datname=current_database() AND "
                "wait_event_type='Lock' AND query LIKE 'INSERT INTO job_items%'"):
            assert time.monotonic() < deadline, "the second node never reached the unique key"
            connection.execute("SELECT pg_stat_clear_snapshot()").fetchall()
            time.sleep(0.02)
    racer.join(timeout=30)
    assert by_second == [(None, 0)]
    jobs = first_db.query("SELECT id FROM jobs")
    assert [row["id"] for row in jobs] == [job_a]
    items = first_db.query("SELECT job_id, instance_id FROM job_items ORDER BY instance_id")
    assert [(row["job_id"], row["instance_id"]) for row in items] == [(job_a, "a"), (job_a, "b")]
    second_db.close()
    first_db.close()
