"""One migration path (db.Migration, issue 24 item 1): every part's migrations in one numbered sequence,
run at start, tested from every earlier version's schema: a database at version k (the columns
of the later migrations absent, as that version made it) ends with the same tables as a new one,
its rows kept and the new columns at their defaults."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from orthanc_plugin import capabilities
from orthanc_plugin.app import all_migrations
from orthanc_plugin.audit import counts
from orthanc_plugin.audit.tables import SCHEMA as AUDIT_SCHEMA
from orthanc_plugin.db import META_SCHEMA, SCHEMA_VERSION_KEY, Database, Migration, check_migrations
from orthanc_plugin.jobs import intake_store
from orthanc_plugin.jobs.arrival_store import SCHEMA as ARRIVAL_SCHEMA
from orthanc_plugin.jobs.own_output import SCHEMA as OWN_OUTPUT_SCHEMA
from orthanc_plugin.jobs.tables import SCHEMA as JOBS_SCHEMA

SCHEMAS = [META_SCHEMA, AUDIT_SCHEMA, JOBS_SCHEMA, OWN_OUTPUT_SCHEMA, ARRIVAL_SCHEMA,
           *capabilities.extra_schemas()]
MIGRATIONS = check_migrations(all_migrations())   # in version order
LATEST = len(MIGRATIONS)
# Columns whose default differs on purpose in an upgraded database: the rows that were there
# before it are what the default describes (job_items.reported: a delivery made before the column
# existed was reported by its own transfer row). Every insert names these columns.
DEFAULT_FOR_EARLIER_ROWS = {("job_items", "reported")}
# Version 7 moved forwarding's records (in flight, storage commitment) out of the queue's job_items
# into forwarding's own forward_items; versions 2-6 had them as job_items columns, which an
# upgraded database keeps, emptied (forwarding/tables.py says why).
FORWARDING_COLUMNS_BEFORE_7 = {"in_flight_job": "TEXT", "in_flight_pos": "INTEGER",
                               "commit_state": "TEXT", "commit_txn": "TEXT",
                               "commit_since": "REAL"}
LEFT_BEHIND = {("job_items", name) for name in FORWARDING_COLUMNS_BEFORE_7}


def tables_of(path: Path) -> dict[str, list[tuple[str, str, int, str | None]]]:
    """table -> its columns (name, type, not null, default), as SQLite reports them."""
    with sqlite3.connect(path) as connection:
        names = [row[0] for row in connection.execute(
            "SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
        return {name: sorted(
            (row[1], row[2], row[3], "(earlier rows)" if (name, row[1]) in
             DEFAULT_FOR_EARLIER_ROWS else row[4])
            for row in connection.execute(f"PRAGMA table_info({name})")
            if (name, row[1]) not in LEFT_BEHIND) for name in names}


def without_columns(connection: sqlite3.Connection, table: str, dropped: set[str]) -> None:
    """The table made again without these columns, its other columns as they are (type, NOT
    NULL, default, primary key). ALTER TABLE DROP COLUMN cannot be used: SQLite 3.40 refuses it
    on a table whose CREATE text ends in a comment."""
    info = connection.execute(f"PRAGMA table_info({table})").fetchall()
    kept = [row for row in info if row[1] not in dropped]
    if len(kept) == len(info):
        return
    keys = [row[1] for row in sorted(kept, key=lambda row: row[5]) if row[5]]
    definitions = []
    for _, name, kind, not_null, default, key in kept:
        text = f"{name} {kind}"
        if key and len(keys) == 1:
            text += " PRIMARY KEY AUTOINCREMENT" if kind.upper() == "INTEGER" else " PRIMARY KEY"
        text += " NOT NULL" * bool(not_null) + (f" DEFAULT {default}" if default is not None else "")
        definitions.append(text)
    if len(keys) > 1:
        definitions.append(f"PRIMARY KEY({', '.join(keys)})")
    columns = ", ".join(row[1] for row in kept)
    # Triggers on it go with the old table; the schemas make them again when the database opens.
    connection.execute("PRAGMA legacy_alter_table=ON")
    connection.execute(f"ALTER TABLE {table} RENAME TO {table}_today")
    connection.execute(f"CREATE TABLE {table}({', '.join(definitions)})")
    connection.execute(f"INSERT INTO {table}({columns}) SELECT {columns} FROM {table}_today")
    connection.execute(f"DROP TABLE {table}_today")


def database_at(path: Path, version: int) -> None:
    """A database as version `version` left it: today's tables without the later migrations'
    columns, and no version recorded before the first migration existed."""
    Database(path, SCHEMAS).migrate(MIGRATIONS)
    with sqlite3.connect(path) as connection:
        connection.execute("DELETE FROM meta WHERE key=?", (SCHEMA_VERSION_KEY,))
        later: dict[str, set[str]] = {}
        for migration in MIGRATIONS[version:]:
            for table, columns in migration.columns.items():
                later.setdefault(table, set()).update(columns)
        for table, dropped in later.items():
            without_columns(connection, table, dropped)
        if version < 7:
            connection.execute("DROP TABLE forward_items")
            for name, kind in FORWARDING_COLUMNS_BEFORE_7.items() if version >= 2 else ():
                connection.execute(f"ALTER TABLE job_items ADD COLUMN {name} {kind}")
        if version:
            connection.execute("INSERT INTO meta(key, value) VALUES(?, ?)",
                               (SCHEMA_VERSION_KEY, str(version)))
        connection.execute(
            "INSERT INTO jobs(idempotency_key, rule, action, trigger, level, resource_id, target,"
            " created_at, updated_at, next_attempt_at) VALUES('k', 'r', 'forward', 'instance',"
            " 'instance', 'i1', 'ARCHIVE', 'then', 'then', 0)")


def test_the_parts_migrations_are_one_sequence_without_gaps() -> None:
    assert [migration.version for migration in check_migrations(MIGRATIONS)] == list(
        range(1, LATEST + 1))
    with pytest.raises(ValueError, match=r"numbered 1\.\.2"):
        check_migrations([Migration(1, "a"), Migration(1, "b")])
    with pytest.raises(ValueError, match=r"got \[1, 3\]"):
        check_migrations([Migration(3, "c"), Migration(1, "a")])


@pytest.mark.parametrize("version", range(LATEST + 1))
def test_a_database_of_every_earlier_version_ends_as_a_new_one(tmp_path: Path,
                                                               version: int) -> None:
    new = tmp_path / "new.sqlite"
    Database(new, SCHEMAS).migrate(MIGRATIONS)
    old = tmp_path / "old.sqlite"
    database_at(old, version)
    # A later migration that adds columns makes the old tables differ (one that only moves rows or
    # starts totals, as 11 does, leaves them alike).
    assert tables_of(old) != tables_of(new) or not any(
        migration.columns for migration in MIGRATIONS[version:])

    db = Database(old, SCHEMAS)
    assert db.migrate(MIGRATIONS) == list(range(version + 1, LATEST + 1))
    assert db.schema_version() == LATEST
    assert tables_of(old) == tables_of(new)
    (job,) = db.query("SELECT * FROM jobs")
    assert (job["resource_id"], job["priority"], job["crashes"]) == ("i1", 10, 0)
    assert db.migrate(MIGRATIONS) == []   # the next start has nothing to do


def test_a_migration_that_fails_half_way_is_rolled_back_whole_and_runs_again(
        tmp_path: Path) -> None:
    db = Database(tmp_path / "g.sqlite", [META_SCHEMA, "CREATE TABLE t(a TEXT);"])
    steps = [Migration(1, "b", {"t": {"b": "TEXT"}}),
             Migration(2, "c, then an index on a table that is not there",
                       {"t": {"c": "TEXT"}}, ("CREATE INDEX t_d ON missing(d)",))]
    with pytest.raises(sqlite3.OperationalError):
        db.migrate(steps)
    assert db.schema_version() == 1
    assert [row["name"] for row in db.query("PRAGMA table_info(t)")] == ["a", "b"]
    fixed = [steps[0], Migration(2, "c", {"t": {"c": "TEXT"}}, ("CREATE INDEX t_c ON t(c)",))]
    assert db.migrate(fixed) == [2]
    assert [row["name"] for row in db.query("PRAGMA table_info(t)")] == ["a", "b", "c"]


def test_version_10_finds_the_studies_an_earlier_version_left_unseen(tmp_path: Path) -> None:
    """A study described before the upgrade, its stable-study rules not run yet, is still found
    once studies are read through the index of unseen ones; a study its rules saw is not."""
    path = tmp_path / "old.sqlite"
    database_at(path, 9)
    with sqlite3.connect(path) as connection:
        connection.executemany(
            "INSERT INTO received(instance_id, received_at, study_id, state) "
            "VALUES(?, 'then', ?, 'ready')", [("i1", "seen"), ("i2", "unseen"), ("i3", "unseen")])
        connection.executemany(
            "INSERT INTO study_progress(study_id, last_received_at, stable_done_seq) VALUES(?, 0, ?)",
            [("seen", 1), ("unseen", 1)])
    db = Database(path, SCHEMAS)
    assert db.migrate(MIGRATIONS) == list(range(10, LATEST + 1))
    assert [study.study_id for study in intake_store.studies_with_new_instances(db)] == ["unseen"]
    assert {row["study_id"]: row["ready_seq"] for row in db.query(
        "SELECT study_id, ready_seq FROM study_progress")} == {"seen": 1, "unseen": 3}


def test_version_11_starts_the_running_totals_from_the_tables_and_what_was_pruned(
        tmp_path: Path) -> None:
    """The Prometheus counters of an upgraded database go on from where the sums over its tables
    and retention's pruned totals left them, and then grow with each row written."""
    path = tmp_path / "old.sqlite"
    database_at(path, 10)
    with sqlite3.connect(path) as connection:
        connection.executemany(
            "INSERT INTO transfers(job_id, target, attempt, status, instances, bytes, started_at,"
            " ended_at) VALUES(1, ?, 1, ?, ?, ?, 't', 't')",
            [("PACS", "success", 3, 300), ("PACS", "failed", 2, 0), ("ARCHIVE", "success", 1, 10)])
        connection.executemany(
            "INSERT INTO evaluations(at, trigger, level, resource_id, rule, matched,"
            " new_instances) VALUES('t', 'instance', 'instance', 'i', 'r', ?, ?)",
            [(1, 1), (1, 0), (0, 0)])
        connection.execute("INSERT INTO quarantine(at, reason) VALUES('t', 'unreadable')")
        connection.executemany(
            "INSERT INTO forward_items(job_id, instance_id, commit_state) VALUES(1, ?, ?)",
            [("i1", "committed"), ("i2", "due")])
        connection.executemany("INSERT INTO meta(key, value) VALUES(?, ?)", [
            ("pruned_sent_instances", "100"), ("pruned_target_PACS_instances", "100"),
            ("pruned_failures", "2.0"), ("pruned_evaluations", "50"), ("pruned_committed", "7")])
    db = Database(path, SCHEMAS)
    assert db.migrate(MIGRATIONS) == list(range(11, LATEST + 1))
    assert counts.running_totals(db) == {
        "sent_instances": 106, "sent_bytes": 310, "failures": 3, "evaluations": 53,
        "matches": 1, "quarantined": 1, "target_PACS_instances": 105, "target_PACS_failures": 1,
        "target_ARCHIVE_instances": 1, "committed": 8}
    with db.transaction() as connection:
        counts.count_transfer(connection, "ARCHIVE", "success", 4, 40)
    assert counts.running_totals(db)["target_ARCHIVE_instances"] == 5
