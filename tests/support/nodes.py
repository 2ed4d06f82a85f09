"""A second gateway node's handle on the database a test already made (make_database): another
SQLite connection on the same file, or another PostgreSQL session on the same database, as a
second node sharing the gateway's state has."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from orthanc_plugin.db import META_SCHEMA, Database
from orthanc_plugin.db_engine import StateDatabase
from orthanc_plugin.db_postgres import PostgresDatabase


@contextmanager
def other_node(db: StateDatabase, schemas: Sequence[str]) -> Iterator[StateDatabase]:
    if isinstance(db, Database):
        yield Database(db.path, [META_SCHEMA, *schemas])
        return
    assert isinstance(db, PostgresDatabase)
    second = PostgresDatabase(db.conninfo, schemas)
    try:
        yield second
    finally:
        second.close()
