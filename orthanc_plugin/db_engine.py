"""What the stores need of a database engine: the surface SQLite's `Database` (db.py) and
PostgreSQL's `PostgresDatabase` (db_postgres.py) both offer, so a store is typed against this and
not against `sqlite3`.

Statements use `?` placeholders and SQL both engines accept; a store that must say something only
one engine knows asks `dialect` (the queue's `FOR UPDATE SKIP LOCKED`)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    from orthanc_plugin.db import DiskTrouble, Migration

SQLITE = "sqlite"
POSTGRESQL = "postgresql"

Result = TypeVar("Result")


class DbRow(Protocol):
    """A row read by column name or by position (sqlite3.Row, db_postgres.Row); `dict(row)`
    gives its columns."""

    def __getitem__(self, key: int | str, /) -> Any: ...

    def keys(self) -> list[str]: ...


class DbCursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class DbConnection(Protocol):
    """One thread's connection; inside `transaction()` its statements are that transaction's."""

    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> DbCursor: ...

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> DbCursor: ...


class StateDatabase(Protocol):
    """The gateway's state, whichever engine keeps it."""

    @property
    def dialect(self) -> str: ...          # SQLITE or POSTGRESQL

    @property
    def trouble(self) -> DiskTrouble: ...

    @property
    def stopping(self) -> threading.Event: ...

    def connection(self) -> DbConnection: ...

    def transaction(self) -> AbstractContextManager[DbConnection]: ...

    def durable(self, write: Callable[[], Result], what: str) -> Result: ...

    def query(self, sql: str, parameters: Iterable[Any] = ...) -> Sequence[DbRow]: ...

    def execute(self, sql: str, parameters: Iterable[Any] = ...) -> DbCursor: ...

    def get_meta(self, key: str) -> str | None: ...

    def set_meta(self, key: str, value: str, connection: DbConnection | None = None) -> None: ...

    def schema_version(self) -> int: ...

    def migrate(self, migrations: Sequence[Migration]) -> list[int]: ...


def dialect_of(connection: DbConnection) -> str:
    """The engine behind a connection, for SQL handed only a connection (a migration's `moves`,
    a store function inside its caller's transaction): PostgreSQL's connection says so
    (db_postgres.PgConnection.dialect), sqlite3's says nothing."""
    return str(getattr(connection, "dialect", SQLITE))


class SplitSchema(str):
    """A part's schema that says something PostgreSQL's translation (db_postgres.postgres_ddl)
    cannot, such as a CREATE TRIGGER: the string itself is the SQLite text (`portable` then
    `sqlite_only`), what db.Database runs; on PostgreSQL `portable` is translated and
    `postgres_only` (PostgreSQL's own DDL: plpgsql functions and their triggers) runs after it."""

    portable: str
    postgres_only: str

    def __new__(cls, portable: str, sqlite_only: str, postgres_only: str) -> SplitSchema:
        schema = super().__new__(cls, portable + sqlite_only)
        schema.portable = portable
        schema.postgres_only = postgres_only
        return schema
