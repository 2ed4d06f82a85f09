"""The gateway's SQLite file: one connection per thread, WAL, and the schema of every capability."""

from __future__ import annotations

import functools
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar

from orthanc_plugin.db_engine import SQLITE, DbConnection, StateDatabase

# SQLite's primary result codes that mean the file cannot be written now but may be later:
# a full disk (SQLITE_FULL), an I/O error (SQLITE_IOERR, with its extended codes), a journal or
# WAL file that cannot be created (SQLITE_CANTOPEN).
DISK_ERROR_CODES = frozenset({13, 10, 14})
WAIT_FIRST_SECONDS = 0.2
WAIT_LONGEST_SECONDS = 5.0


def database_errors() -> tuple[type[BaseException], ...]:
    """What a failed statement raises, whichever engine: for `except` clauses of loops that give
    up a round and try again (PostgreSQL's driver only when a worker has loaded it: Orthanc's
    process and a single node never do)."""
    psycopg = sys.modules.get("psycopg")
    return (sqlite3.Error, psycopg.Error) if psycopg is not None else (sqlite3.Error,)


def is_disk_error(error: BaseException) -> bool:
    code = getattr(error, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF in DISK_ERROR_CODES
    text = str(error).lower()
    return "disk is full" in text or "disk i/o error" in text


def is_outage(error: BaseException) -> bool:
    """The database cannot take writes now (a full disk; a PostgreSQL server gone or out of
    reach), as against a statement that is wrong: waited out, and told once per episode."""
    if is_disk_error(error):
        return True
    psycopg = sys.modules.get("psycopg")
    return psycopg is not None and isinstance(error, psycopg.OperationalError)


class DatabaseUnwritable(Exception):
    """The gateway database could not be written and the wait was cut short by a stop."""


class DiskTrouble:
    """Whether writes to the gateway database fail now, since when, and how often they did.

    Shared by the threads of one process; each process reports its own (the lead's /health
    probes the file itself)."""

    def __init__(self, report: Callable[[str], None] | None = None,
                 remedy: str = "free space where RtGateway.Database lives") -> None:
        self.report = report or (lambda message: None)
        # What a person does about it: the engine's own cause (a full disk, a server down).
        self.remedy = remedy
        self._lock = threading.Lock()
        self.since: float | None = None
        self.last_error = ""
        self.failures = 0
        self.episodes = 0

    def failed(self, error: BaseException, what: str) -> None:
        with self._lock:
            self.failures += 1
            self.last_error = str(error)
            starting = self.since is None
            if starting:
                self.since = time.monotonic()
                self.episodes += 1
        if starting:
            self.report(f"the gateway database cannot be written ({error}) while {what}: work "
                        f"waits and nothing is recorded as sent until it can; {self.remedy}")

    def recovered(self) -> None:
        with self._lock:
            if self.since is None:
                return
            lasted = time.monotonic() - self.since
            self.since = None
        self.report(f"the gateway database can be written again after {lasted:.1f} s; "
                    "the waiting work goes on")

    @property
    def unwritable(self) -> bool:
        return self.since is not None


class Database:
    # Which SQL the stores may speak to it (db_engine.StateDatabase).
    dialect = SQLITE

    def __init__(self, path: Path, schemas: Iterable[str],
                 report_trouble: Callable[[str], None] | None = None) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._functions: dict[str, tuple[int, Callable[..., Any]]] = {}
        self.trouble = DiskTrouble(report_trouble)
        # Set when the process stops: a write waiting for disk space gives up (the work it
        # would have recorded is still in flight in the queue and is verified at the next start).
        self.stopping = threading.Event()
        # executescript commits on its own, so the schema is applied outside transaction().
        for schema in schemas:
            self.connection().executescript(schema)

    def migrate(self, migrations: Sequence[Migration]) -> list[int]:
        """Brings the database to the last migration's version; returns the versions applied.

        Each migration runs in its own write transaction that first reads the version again, so
        worker processes starting together apply each one once; one that stops half-way is rolled
        back whole and runs again at the next start. Adding a column is idempotent: a database
        that an earlier version upgraded column by column (before versions were kept) takes the
        migrations it already has without error."""
        ordered = check_migrations(migrations)
        applied = []
        for migration in ordered:
            with self.transaction() as connection:
                row = connection.execute("SELECT value FROM meta WHERE key=?",
                                         (SCHEMA_VERSION_KEY,)).fetchone()
                current = int(row["value"]) if row else 0
                if current >= migration.version:
                    continue
                for table, columns in migration.columns.items():
                    present = {c["name"] for c in connection.execute(f"PRAGMA table_info({table})")}
                    if not present:
                        continue  # not made yet: its part's schema makes it whole
                    for name, declaration in columns.items():
                        if name not in present:
                            connection.execute(f"ALTER TABLE {table} ADD COLUMN {name} {declaration}")
                for statement in migration.statements:
                    connection.execute(statement)
                if migration.moves is not None:
                    migration.moves(connection)
                self.set_meta(SCHEMA_VERSION_KEY, str(migration.version), connection)
                applied.append(migration.version)
        return applied

    def schema_version(self) -> int:
        value = self.get_meta(SCHEMA_VERSION_KEY)
        return int(value) if value else 0

    def connection(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE), so two threads
            # never both read-then-write on a stale snapshot.
            connection = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            connection.row_factory = sqlite3.Row
            connection.execute("PRAGMA journal_mode=WAL")
            # NORMAL loses nothing on a process crash (kill -9), only on power loss mid-checkpoint.
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.execute("PRAGMA foreign_keys=ON")
            for name, (arity, function) in self._functions.items():
                connection.create_function(name, arity, function, deterministic=True)
            self._local.connection = connection
        return connection

    def add_function(self, name: str, arity: int, function: Callable[..., Any]) -> None:
        """A SQL function the schema's triggers call (every connection of every thread has it;
        a writer without it fails loudly with "no such function", never silently)."""
        self._functions[name] = (arity, function)
        self.connection().create_function(name, arity, function, deterministic=True)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        connection = self.connection()
        connection.execute("BEGIN IMMEDIATE")
        try:
            yield connection
            connection.execute("COMMIT")
        except BaseException:
            # After SQLITE_FULL or an I/O error SQLite may have rolled back already, and a
            # failed COMMIT leaves the transaction open: either way the connection must end up
            # outside any transaction, and the first error is the one that counts.
            if connection.in_transaction:
                with suppress(sqlite3.Error):
                    connection.execute("ROLLBACK")
            raise

    def durable(self, write: Callable[[], Result], what: str) -> Result:
        """Runs `write` (whole transactions, all or nothing) until the file takes it: a full
        disk makes the caller wait, never lose the row. Nested calls run once, inside the outer
        one's retry (a failed inner write rolled the outer transaction back too)."""
        if getattr(self._local, "durable_depth", 0):
            return write()
        delay = WAIT_FIRST_SECONDS
        self._local.durable_depth = 1
        try:
            while True:
                try:
                    result = write()
                except sqlite3.OperationalError as error:
                    if not is_disk_error(error):
                        raise
                    self.trouble.failed(error, what)
                    if self.stopping.wait(delay):
                        raise DatabaseUnwritable(f"{what}: {error}") from error
                    delay = min(delay * 2, WAIT_LONGEST_SECONDS)
                    continue
                if self.trouble.unwritable:
                    self.trouble.recovered()
                return result
        finally:
            self._local.durable_depth = 0

    def query(self, sql: str, parameters: Iterable[Any] = ()) -> list[sqlite3.Row]:
        return self.connection().execute(sql, tuple(parameters)).fetchall()

    def execute(self, sql: str, parameters: Iterable[Any] = ()) -> sqlite3.Cursor:
        return self.connection().execute(sql, tuple(parameters))

    def get_meta(self, key: str) -> str | None:
        rows = self.query("SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0]["value"] if rows else None

    def set_meta(self, key: str, value: str, connection: DbConnection | None = None) -> None:
        (connection or self.connection()).execute(
            "INSERT INTO meta(key, value) VALUES(?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def close(self) -> None:
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None


def write_probe(connection: DbConnection, size_bytes: int) -> None:
    """Writes `size_bytes` to a table of its own and removes them, in the caller's transaction:
    fails as a real write of that size would when the file cannot take it."""
    connection.execute("CREATE TABLE IF NOT EXISTS health_probe(data BLOB)")
    connection.execute("INSERT INTO health_probe(data) VALUES(zeroblob(?))", (size_bytes,))
    connection.execute("DELETE FROM health_probe")


Result = TypeVar("Result")
Params = ParamSpec("Params")


class _HasDatabase(Protocol):
    # Read-only, so an owner typed with the concrete engine (db: Database) fits too.
    @property
    def db(self) -> StateDatabase: ...


Owner = TypeVar("Owner", bound=_HasDatabase)


def durable_write(
    method: Callable[Concatenate[Owner, Params], Result],
) -> Callable[Concatenate[Owner, Params], Result]:
    """A method whose database writes wait out a full disk (see Database.durable). The method
    must be all-or-nothing: one transaction, or writes into a transaction its caller owns."""
    def wrapper(self: Owner, /, *args: Params.args, **kwargs: Params.kwargs) -> Result:
        return self.db.durable(lambda: method(self, *args, **kwargs),
                               method.__name__.replace("_", " "))
    functools.update_wrapper(wrapper, method)
    return wrapper


META_SCHEMA = "CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT);"
SCHEMA_VERSION_KEY = "schema_version"


@dataclass(frozen=True)
class Migration:
    """One step of the schema after the first release: columns a database of an earlier version
    lacks (table -> column -> declaration), then statements (indexes). Its part (jobs, audit, a
    capability's tables.py) declares it; the gateway runs them all in version order at start."""

    version: int
    what: str
    columns: dict[str, dict[str, str]] = field(default_factory=dict)
    statements: tuple[str, ...] = ()
    # A step that moves rows (a record leaving one part's table for another's), run after the
    # columns and statements in the same transaction; it must find out what the database holds,
    # since a new database runs every step too.
    moves: Callable[[sqlite3.Connection], None] | None = None


def check_migrations(migrations: Sequence[Migration]) -> list[Migration]:
    """The migrations in version order; versions must run 1, 2, 3... with none twice or missing
    (two parts declaring the same version would otherwise apply in an order nobody chose)."""
    ordered = sorted(migrations, key=lambda migration: migration.version)
    versions = [migration.version for migration in ordered]
    if versions != list(range(1, len(ordered) + 1)):
        raise ValueError(f"schema migrations must be numbered 1..{len(ordered)}, got {versions}")
    return ordered
