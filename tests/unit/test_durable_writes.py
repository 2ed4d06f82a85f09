"""A full database file: SQLite's own SQLITE_FULL (max_page_count caps the file, as a full disk
would), the wait, the recovery, and no row lost or written twice."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

from orthanc_plugin.audit.clock import now_iso
from orthanc_plugin.audit.translog import TransactionLog
from orthanc_plugin.db import Database, DatabaseUnwritable, is_disk_error

SCHEMA = "CREATE TABLE IF NOT EXISTS rows(n INTEGER PRIMARY KEY, data BLOB);"


def fill(db: Database) -> None:
    """Cap the file at its current size: the next write that needs a page fails SQLITE_FULL."""
    pages = db.query("PRAGMA page_count")[0][0]
    db.execute(f"PRAGMA max_page_count={pages}")


def free(db: Database) -> None:
    db.execute("PRAGMA max_page_count=1073741823")


@pytest.fixture
def db(tmp_path: Path) -> Database:
    database = Database(tmp_path / "g.sqlite", [SCHEMA])
    database.execute("PRAGMA journal_mode=DELETE")  # pages land in the file at once
    return database


def insert(db: Database, n: int) -> None:
    with db.transaction() as connection:
        connection.execute("INSERT INTO rows(n, data) VALUES(?, zeroblob(20000))", (n,))


def test_a_full_file_raises_a_disk_error_and_leaves_no_transaction_open(db: Database) -> None:
    fill(db)
    with pytest.raises(sqlite3.OperationalError) as caught:
        insert(db, 1)
    assert is_disk_error(caught.value)
    assert not db.connection().in_transaction
    free(db)
    insert(db, 1)
    assert db.query("SELECT COUNT(*) FROM rows")[0][0] == 1


def test_a_durable_write_waits_for_space_and_writes_once(db: Database) -> None:
    reports: list[str] = []
    db.trouble.report = reports.append
    fill(db)
    done = threading.Event()

    def writer() -> None:
        db.durable(lambda: insert(db, 7), "a test write")
        done.set()

    # max_page_count is per connection: the writer thread's own connection gets the cap too.
    def capped_writer() -> None:
        fill(db)
        writer()

    thread = threading.Thread(target=capped_writer)
    thread.start()
    time.sleep(1.0)
    assert not done.is_set() and db.trouble.unwritable
    assert any("cannot be written" in line for line in reports)
    # Space comes back: lift the cap on the writer's connection from inside its retries.
    original = db.trouble.failed

    def failed_then_free(error: BaseException, what: str) -> None:
        original(error, what)
        free(db)

    db.trouble.failed = failed_then_free  # type: ignore[method-assign]
    assert done.wait(10)
    thread.join()
    assert db.query("SELECT COUNT(*) FROM rows WHERE n=7")[0][0] == 1
    assert not db.trouble.unwritable and any("again" in line for line in reports)
    assert db.trouble.episodes == 1


def test_a_stop_ends_the_wait(db: Database) -> None:
    fill(db)
    db.stopping.set()
    with pytest.raises(DatabaseUnwritable):
        db.durable(lambda: insert(db, 1), "a test write")


def test_nested_durable_writes_retry_only_at_the_outermost(db: Database) -> None:
    calls: list[str] = []

    def inner() -> None:
        calls.append("inner")

    def outer() -> None:
        calls.append("outer")
        db.durable(inner, "inner")
        if len(calls) < 4:
            raise sqlite3.OperationalError("database or disk is full")

    db.durable(outer, "outer")
    assert calls == ["outer", "inner", "outer", "inner"]


def test_other_errors_are_not_waited_for(db: Database) -> None:
    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        db.durable(lambda: db.query("SELECT * FROM missing_table"), "a bad query")


def test_transaction_log_lines_wait_for_space(tmp_path: Path) -> None:
    log = TransactionLog(tmp_path / "logs")
    blocked = log.folder / "today.log"
    log.path_for = lambda moment: blocked  # type: ignore[method-assign]
    blocked.mkdir()  # opening it for append fails with an OSError, as a full disk does
    log.write(source_ip="1", calling_aet="A", study_uid="S", rule="r", destination="D",
              outcome="second")
    assert log.refused_writes == 1
    blocked.rmdir()
    log.write(source_ip="1", calling_aet="A", study_uid="S", rule="r", destination="D",
              outcome="third")
    lines = blocked.read_text().splitlines()
    assert [line.split("\t")[-1] for line in lines[1:]] == ["second", "third"]


def test_the_transaction_log_finds_a_transfer_line_by_its_number(tmp_path: Path) -> None:
    log = TransactionLog(tmp_path / "logs")
    log.write(source_ip="10.0.0.1", calling_aet="TPS", study_uid="1.2", rule="r",
              destination="ARCHIVE", outcome="success: 3 instance(s), 60 bytes, job 4, "
              "transfer 12")
    assert log.mentions("transfer 12", now_iso())
    assert not log.mentions("transfer 1", now_iso())      # 12 is not 1
    assert not log.mentions("transfer 120", now_iso())
    assert not log.mentions("transfer 12", "2001-01-01T00:00:00+00:00")
