"""What /health reads from the gateway database, from its stores (jobs/queue.py, db.py), against a
real database file with the real schema: jobs by state, the oldest waiting job, and the write
probe that leaves nothing behind."""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path

import pytest

from orthanc_plugin.db import META_SCHEMA, Database, write_probe
from orthanc_plugin.jobs.queue import JobQueue
from orthanc_plugin.jobs.tables import SCHEMA as JOBS_SCHEMA


@pytest.fixture
def db(tmp_path: Path) -> Database:
    return Database(tmp_path / "g.sqlite", [META_SCHEMA, JOBS_SCHEMA])


def add_job(connection: sqlite3.Connection, state: str, created_epoch: float) -> None:
    connection.execute(
        "INSERT INTO jobs(idempotency_key, rule, action, trigger, level, resource_id, target,"
        " state, created_at, updated_at, created_epoch) VALUES(?, 'r', 'forward', 'instance',"
        " 'instance', 'x', 'PACS', ?, '', '', ?)", (uuid.uuid4().hex, state, created_epoch))


def test_live_jobs_by_state_and_the_oldest_pending_or_running_job(db: Database) -> None:
    assert JobQueue.live_jobs_by_state(db) == {}
    assert JobQueue.oldest_waiting_epoch(db) is None
    with db.transaction() as connection:
        add_job(connection, "done", 10.0)       # older, but finished
        add_job(connection, "held", 20.0)       # older, but not waiting for the queue
        add_job(connection, "dead", 30.0)
        add_job(connection, "running", 250.5)
        add_job(connection, "pending", 300.0)
        add_job(connection, "pending", 400.0)
    # The finished jobs are not counted: a monitor polls /health, and they make most of the table.
    assert JobQueue.live_jobs_by_state(db) == {"held": 1, "dead": 1, "running": 1, "pending": 2}
    assert JobQueue.oldest_waiting_epoch(db) == 250.5


def test_the_write_probe_leaves_nothing_behind_and_rolls_back_with_its_transaction(
        db: Database) -> None:
    with db.transaction() as connection:
        write_probe(connection, 16 * 1024)
        db.set_meta("checked", "1", connection)
    assert db.query("SELECT COUNT(*) FROM health_probe")[0][0] == 0
    assert db.get_meta("checked") == "1"

    class Stop(Exception):
        pass

    with pytest.raises(Stop), db.transaction() as connection:
        write_probe(connection, 16)
        db.set_meta("checked", "2", connection)
        raise Stop
    assert db.get_meta("checked") == "1"


def test_the_write_probe_really_writes_what_it_is_asked_to(db: Database) -> None:
    # Larger than SQLite lets a value be: only a probe that inserts its bytes fails.
    with pytest.raises(sqlite3.Error), db.transaction() as connection:
        write_probe(connection, 2_000_000_000)
