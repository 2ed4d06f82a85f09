"""Fixtures shared by every test folder: a real PostgreSQL (tests/support/postgres.py), started
once per session and only when a test asks for it."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from orthanc_plugin.audit.tables import SCHEMA as AUDIT_SCHEMA
from orthanc_plugin.db import META_SCHEMA, Database
from orthanc_plugin.db_engine import POSTGRESQL, SQLITE, StateDatabase
from orthanc_plugin.db_postgres import PostgresDatabase
from orthanc_plugin.jobs.tables import SCHEMA as JOBS_SCHEMA
from tests.support.postgres import PostgresServer, running_postgres

if TYPE_CHECKING:
    from orthanc_plugin.index.store import IndexStore


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    # No skip when PostgreSQL is missing: running_postgres raises with what to install.
    with running_postgres() as server:
        yield server


@pytest.fixture
def postgres_conninfo(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh, empty database of its own for one test."""
    conninfo = postgres_server.create_database()
    yield conninfo
    postgres_server.drop_database(conninfo)


# The queue's tables on each engine: a test that takes this runs twice, on an SQLite file and on
# the real PostgreSQL above (an SQLite-only test builds its own file).
@pytest.fixture(params=[SQLITE, POSTGRESQL])
def queue_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StateDatabase]:
    if request.param == SQLITE:
        yield Database(tmp_path / "q.sqlite", [META_SCHEMA, AUDIT_SCHEMA, JOBS_SCHEMA])
        return
    db = PostgresDatabase(request.getfixturevalue("postgres_conninfo"), [AUDIT_SCHEMA, JOBS_SCHEMA])
    yield db
    db.close()


# A store's own tables on each engine: `make_database([SCHEMA, ...])` in a test that takes this
# builds them on an SQLite file, then (second run) on a fresh database of the real PostgreSQL.
# SQLite's meta table is added; PostgresDatabase adds its own.
MakeDatabase = Callable[[Sequence[str]], StateDatabase]


@pytest.fixture(params=[SQLITE, POSTGRESQL])
def make_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MakeDatabase]:
    opened: list[PostgresDatabase] = []

    def make(schemas: Sequence[str]) -> StateDatabase:
        if request.param == SQLITE:
            return Database(tmp_path / f"s{len(opened)}.sqlite", [META_SCHEMA, *schemas])
        db = PostgresDatabase(request.getfixturevalue("postgres_conninfo"), list(schemas))
        opened.append(db)
        return db

    yield make
    for db in opened:
        db.close()


@pytest.fixture
def plans_database(make_database: MakeDatabase) -> StateDatabase:
    """The plan store's tables with its worklist index, on each engine (SQLite: migrated, with
    the search fold function its triggers call; PostgreSQL: the tables whole, the writer folds)."""
    from orthanc_plugin.app import all_migrations
    from orthanc_plugin.plans.search import SQL_FUNCTION, fold
    from orthanc_plugin.plans.tables import SCHEMA as PLANS_SCHEMA
    from orthanc_plugin.plans.tables import create_worklist_index

    database = make_database([AUDIT_SCHEMA, JOBS_SCHEMA, PLANS_SCHEMA])
    if isinstance(database, Database):
        database.migrate(all_migrations())
        database.add_function(SQL_FUNCTION, 1, fold)
    create_worklist_index(database)
    return database


# The SQL index on each engine: `make_index(layout)` in a test that takes this opens it in its own
# SQLite file, then (second run) in the `conquest` schema of a fresh database of the real
# PostgreSQL, read through its reader role (created by the index itself: the tests' server runs
# as a superuser). A second call with another layout opens the same index again (a new dicom.sql).
MakeIndex = Callable[..., "IndexStore"]


@pytest.fixture(params=[SQLITE, POSTGRESQL])
def make_index(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MakeIndex]:
    from orthanc_plugin.index.model import DEFAULT_LAYOUT, Layout
    from orthanc_plugin.index.postgres_store import PostgresIndexSettings, open_postgres_index
    from orthanc_plugin.index.store import IndexStore

    opened: list[PostgresDatabase] = []

    def make(layout: Layout = DEFAULT_LAYOUT) -> IndexStore:
        if request.param == SQLITE:
            return IndexStore(tmp_path / "conquest.sqlite", layout)
        conninfo = request.getfixturevalue("postgres_conninfo")
        db = PostgresDatabase(conninfo, [])
        opened.append(db)
        return open_postgres_index(db, conninfo, layout, PostgresIndexSettings())

    yield make
    for db in opened:
        db.close()
