"""The migrations on PostgreSQL (PostgresDatabase.migrate): a new database made with every schema
the gateway creates (app.Gateway) takes every part's migrations (app.all_migrations) once, and
ends with the tables and columns a new SQLite database has; forwarding's version 7, which moves
rows out of the queue's job_items, finds and moves them on PostgreSQL too."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from orthanc_plugin import capabilities
from orthanc_plugin.app import all_migrations
from orthanc_plugin.audit.tables import SCHEMA as AUDIT_SCHEMA
from orthanc_plugin.db import META_SCHEMA, SCHEMA_VERSION_KEY, Database, check_migrations
from orthanc_plugin.db_postgres import PostgresDatabase
from orthanc_plugin.forwarding.tables import queue_item_columns
from orthanc_plugin.jobs.arrival_store import SCHEMA as ARRIVAL_SCHEMA
from orthanc_plugin.jobs.own_output import SCHEMA as OWN_OUTPUT_SCHEMA
from orthanc_plugin.jobs.tables import SCHEMA as JOBS_SCHEMA

# As app.Gateway makes them (META_SCHEMA: PostgresDatabase adds its own).
SCHEMAS = [AUDIT_SCHEMA, JOBS_SCHEMA, OWN_OUTPUT_SCHEMA, ARRIVAL_SCHEMA,
           *capabilities.extra_schemas()]
LATEST = len(check_migrations(all_migrations()))
# Forwarding's columns on job_items in versions 2-6 (forwarding/tables.py, version 7).
OLD_FORWARDING_COLUMNS = ("in_flight_job TEXT", "in_flight_pos BIGINT", "commit_state TEXT",
                          "commit_txn TEXT", "commit_since DOUBLE PRECISION")


def sqlite_tables(path: Path) -> dict[str, set[str]]:
    with sqlite3.connect(path) as connection:
        names = [row[0] for row in connection.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'")]
        return {name.lower(): {row[1].lower() for row in connection.execute(
            f"PRAGMA table_info({name})")} for name in names}


def postgres_tables(db: PostgresDatabase) -> dict[str, set[str]]:
    tables: dict[str, set[str]] = {}
    for row in db.query("SELECT table_name, column_name FROM information_schema.columns "
                        "WHERE table_schema = current_schema()"):
        tables.setdefault(str(row["table_name"]).lower(), set()).add(
            str(row["column_name"]).lower())
    return tables


def test_a_new_postgres_database_takes_every_migration_once_and_ends_as_sqlite_does(
        postgres_conninfo: str, tmp_path: Path) -> None:
    db = PostgresDatabase(postgres_conninfo, SCHEMAS)
    try:
        assert db.migrate(all_migrations()) == list(range(1, LATEST + 1))
        assert db.schema_version() == LATEST
        assert db.migrate(all_migrations()) == []      # the next start has nothing to do
        # A second node starting on the same database: its schemas change nothing.
        PostgresDatabase(postgres_conninfo, SCHEMAS).close()
        sqlite = Database(tmp_path / "new.sqlite", [META_SCHEMA, *SCHEMAS])
        sqlite.migrate(all_migrations())
        sqlite.close()
        assert postgres_tables(db) == sqlite_tables(tmp_path / "new.sqlite")
    finally:
        db.close()


def test_version_7_moves_forwardings_records_out_of_the_queue_on_postgres(
        postgres_conninfo: str) -> None:
    """A database at version 6 with forwarding's records on job_items (as SQLite's were)."""
    db = PostgresDatabase(postgres_conninfo, SCHEMAS)
    try:
        with db.transaction() as connection:
            for column in OLD_FORWARDING_COLUMNS:
                connection.execute(f"ALTER TABLE job_items ADD COLUMN {column}")
            connection.execute(
                "INSERT INTO jobs(idempotency_key, rule, action, trigger, level, resource_id,"
                " target, created_at, updated_at) VALUES('k', 'r', 'forward', 'instance',"
                " 'instance', 'a', 'PACS', 'then', 'then')")
            connection.executemany(
                "INSERT INTO job_items(job_id, rule, target, instance_id, position, state,"
                " in_flight_job, in_flight_pos, commit_state, commit_txn, commit_since)"
                " VALUES(1, 'r', 'PACS', ?, ?, ?, ?, ?, ?, ?, ?)",
                [("a", 0, "pending", "oj", 3, None, None, None),
                 ("b", 1, "sent", None, None, "requested", "txn", 12.5),
                 ("c", 2, "sent", None, None, None, None, None)])
            db.set_meta(SCHEMA_VERSION_KEY, "6", connection)
        assert "commit_since" in queue_item_columns(db.connection())
        assert db.migrate(all_migrations()) == list(range(7, LATEST + 1))
        assert [tuple(row) for row in db.query(
            "SELECT job_id, instance_id, in_flight_job, in_flight_pos, commit_state, commit_txn,"
            " commit_since FROM forward_items ORDER BY instance_id")] == [
            (1, "a", "oj", 3, None, None, None), (1, "b", None, None, "requested", "txn", 12.5)]
        assert db.query("SELECT COUNT(*) AS n FROM job_items WHERE in_flight_job IS NOT NULL "
                        "OR commit_state IS NOT NULL")[0]["n"] == 0
    finally:
        db.close()


def test_the_queue_items_columns_are_read_from_either_engines_catalogue(
        postgres_conninfo: str, tmp_path: Path) -> None:
    sqlite = Database(tmp_path / "t.sqlite", [META_SCHEMA, JOBS_SCHEMA])
    postgres = PostgresDatabase(postgres_conninfo, [JOBS_SCHEMA])
    try:
        for db in (sqlite, postgres):
            assert {"job_id", "instance_id", "reported"} <= queue_item_columns(db.connection())
            assert "commit_since" not in queue_item_columns(db.connection())
    finally:
        sqlite.close()
        postgres.close()
