"""One intake at a time across nodes on one PostgreSQL (jobs/intake_lock_store.py): the first
node's lead holds it, the other stands by, and when the holder's connection ends (its node died)
the other takes it on its next pass."""

from __future__ import annotations

import time
from pathlib import Path
from unittest.mock import MagicMock

import psycopg

from orthanc_plugin.audit.tables import SCHEMA as AUDIT_SCHEMA
from orthanc_plugin.config import RetryPolicySettings
from orthanc_plugin.db import META_SCHEMA, Database
from orthanc_plugin.db_postgres import PostgresDatabase
from orthanc_plugin.jobs.executors import Registry
from orthanc_plugin.jobs.intake_lock_store import IntakeLeadership
from orthanc_plugin.jobs.queue import JobQueue
from orthanc_plugin.jobs.tables import SCHEMA as JOBS_SCHEMA
from orthanc_plugin.jobs.workers import WorkerPool

POLICY = RetryPolicySettings(max_attempts=3, base_delay_seconds=0, max_delay_seconds=0)


def test_one_node_holds_the_intake_and_another_takes_it_when_that_connection_ends(
        postgres_conninfo: str) -> None:
    first = PostgresDatabase(postgres_conninfo, [AUDIT_SCHEMA, JOBS_SCHEMA])
    second = PostgresDatabase(postgres_conninfo)
    first_lead, second_lead = IntakeLeadership(first), IntakeLeadership(second)
    assert first_lead.held() and first_lead.held()       # taken, then still held
    assert not second_lead.held()
    holder = first_lead.holder()
    assert holder is not None and holder == second_lead.holder()
    first.close()        # the holder's node ends: its connection, and with it the lock
    deadline = time.monotonic() + 30
    while not second_lead.held():
        assert time.monotonic() < deadline, "the intake was never handed over"
        time.sleep(0.05)
    assert second_lead.holder() not in (None, holder)
    second.close()


def test_on_sqlite_the_lone_node_always_holds_the_intake(tmp_path: Path) -> None:
    db = Database(tmp_path / "g.sqlite", [META_SCHEMA, JOBS_SCHEMA])
    assert IntakeLeadership(db).held() and IntakeLeadership(db).holder() is None


def test_only_the_holding_node_s_pool_runs_intake_passes(postgres_conninfo: str) -> None:
    """Two nodes' worker pools, each with its intake loop: passes run on one node only; when its
    pool stops and its connection closes, the other node's loop takes over."""
    setup = PostgresDatabase(postgres_conninfo, [AUDIT_SCHEMA, JOBS_SCHEMA])
    pools: dict[str, WorkerPool] = {}
    dbs: dict[str, PostgresDatabase] = {}
    passes = {"a": 0, "b": 0}
    logged: list[str] = []
    for name in ("a", "b"):
        db = PostgresDatabase(postgres_conninfo)
        intake = MagicMock()

        def step(node: str = name) -> bool:
            passes[node] += 1
            time.sleep(0.01)
            return False

        intake.step.side_effect = step
        pools[name] = WorkerPool(intake, JobQueue(db, POLICY), Registry(), workers=0,
                                 poll_interval_seconds=0.05, log_error=logged.append,
                                 intake_held=IntakeLeadership(db).held)
        dbs[name] = db
    pools["a"].start()
    deadline = time.monotonic() + 30
    while passes["a"] < 3:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    pools["b"].start()
    # b's loop has asked (and stood by) at least once: it says so in its log.
    while not any("stands by" in line for line in logged):
        assert time.monotonic() < deadline, logged
        time.sleep(0.02)
    assert passes["b"] == 0
    pools["a"].stop()
    for thread in pools["a"].threads:
        assert not thread.is_alive()
    # The intake thread's connection belongs to that (ended) thread: closing the node's database
    # closes only this thread's; end the session from the server side as a dead node's would.
    setup.execute("SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype='advisory' "
                  "AND classid=250002")
    while passes["b"] < 3:
        assert time.monotonic() < deadline, "node b never took the intake over"
        time.sleep(0.02)
    assert any("reads Orthanc's changes now" in line for line in logged)
    pools["b"].stop()
    for db in (*dbs.values(), setup):
        db.close()


def test_a_database_out_of_reach_is_told_once_per_episode_not_each_pass(tmp_path: Path) -> None:
    """PostgreSQL gone: each intake pass fails to connect; the log says so once, and once more
    when writes are taken again, rather than a traceback every poll."""
    db = Database(tmp_path / "g.sqlite", [META_SCHEMA, AUDIT_SCHEMA, JOBS_SCHEMA])
    passes = {"failed": 0, "ok": 0}
    logged: list[str] = []
    intake = MagicMock()

    def step() -> bool:
        if passes["failed"] < 20:
            passes["failed"] += 1
            raise psycopg.OperationalError("connection refused: is the server running?")
        passes["ok"] += 1
        return False

    intake.step.side_effect = step
    pool = WorkerPool(intake, JobQueue(db, POLICY), Registry(), workers=0,
                      poll_interval_seconds=0.001, log_error=logged.append)
    pool.start()
    deadline = time.monotonic() + 30
    while passes["ok"] < 2:
        assert time.monotonic() < deadline, logged
        time.sleep(0.01)
    pool.stop()
    assert not any("Traceback" in line for line in logged), logged[:2]
    assert sum("cannot be written" in line for line in logged) == 1, logged
    assert sum("takes writes again" in line for line in logged) == 1, logged
