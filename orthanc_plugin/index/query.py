"""Read-only SQL over the index file. SQLite itself refuses writes: the connection is opened with
mode=ro and query_only, so no string inspection decides what is a write. The same limits on
PostgreSQL: index/postgres_query.py; a caller holds either as an `IndexReader`."""

from __future__ import annotations

import csv
import io
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from orthanc_plugin.csv_cells import safe_row

DEFAULT_MAX_ROWS = 10_000
DEFAULT_TIME_LIMIT_SECONDS = 30.0
# One value (zeroblob(2e8), a 1 GB string built by printf) is refused by SQLite itself above this.
MAX_VALUE_BYTES = 1_000_000
# The answer stops growing here (about its JSON size); the result says it was truncated and why.
DEFAULT_MAX_RESULT_BYTES = 32 * 1024 * 1024
# Functions that reach past the data: pointers (fts3_tokenizer), native code (load_extension),
# files (readfile/writefile of the CLI, present in some builds).
DENIED_FUNCTIONS = frozenset({"fts3_tokenizer", "load_extension", "readfile", "writefile", "edit",
                              "fts5_source_id", "sqlite_dbpage"})


class QueryError(ValueError):
    """The engine refused or aborted the query; the message is the engine's."""


@dataclass(frozen=True)
class QueryResult:
    columns: list[str]
    rows: list[tuple[Any, ...]]
    truncated: bool
    truncated_reason: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {"columns": self.columns, "rows": [dict(zip(self.columns, row, strict=True))
                                                  for row in self.rows],
                "count": len(self.rows), "truncated": self.truncated,
                "truncated_reason": self.truncated_reason}

    def as_csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(self.columns)
        writer.writerows(safe_row(row) for row in self.rows)
        return buffer.getvalue()


def read_only_connection(path: Path) -> sqlite3.Connection:
    connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=10,
                                 check_same_thread=False)
    connection.execute("PRAGMA query_only=ON")
    connection.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, MAX_VALUE_BYTES)
    # No ATTACH: a query reads the index, not other SQLite files on the disk.
    connection.set_authorizer(_authorize)
    return connection


def _authorize(action: int, first: str | None, second: str | None, *_: Any) -> int:
    if action in (sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH):
        return sqlite3.SQLITE_DENY
    if action == sqlite3.SQLITE_FUNCTION and (second or "").lower() in DENIED_FUNCTIONS:
        return sqlite3.SQLITE_DENY
    if action == sqlite3.SQLITE_PRAGMA and (first or "").lower() not in READABLE_PRAGMAS:
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK


# Pragmas that describe the index's tables; the others tune or reveal the engine.
READABLE_PRAGMAS = frozenset({"table_info", "table_xinfo", "index_list", "index_info",
                              "foreign_key_list", "query_only"})


def _value_bytes(value: Any) -> int:
    if isinstance(value, str | bytes):
        return len(value) + 4
    return 12


class IndexReader(Protocol):
    """The user's read-only SQL over the index, whichever engine keeps it."""

    engine: str     # named in a refusal: "SQLite" or "PostgreSQL"

    def run_query(self, sql: str, max_rows: int = DEFAULT_MAX_ROWS,
                  time_limit_seconds: float = DEFAULT_TIME_LIMIT_SECONDS,
                  max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES) -> QueryResult: ...

    def table_names(self) -> list[str]: ...


class SqliteIndexReader:
    engine = "SQLite"

    def __init__(self, path: Path) -> None:
        self.path = path

    def run_query(self, sql: str, max_rows: int = DEFAULT_MAX_ROWS,
                  time_limit_seconds: float = DEFAULT_TIME_LIMIT_SECONDS,
                  max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES) -> QueryResult:
        return run_query(self.path, sql, max_rows, time_limit_seconds, max_result_bytes)

    def table_names(self) -> list[str]:
        return table_names(self.path)


def collect(columns: list[str], rows: Iterable[Iterable[Any]], max_rows: int,
            max_result_bytes: int) -> QueryResult:
    """The rows read until the row cap or the byte cap; the rest is never fetched."""
    kept: list[tuple[Any, ...]] = []
    size = 0
    reason: str | None = None
    for row in rows:
        if len(kept) == max_rows:
            reason = f"more than {max_rows} rows"
            break
        values = tuple(row)
        size += sum(_value_bytes(value) for value in values) + 2 * len(columns)
        if size > max_result_bytes:
            reason = f"more than {max_result_bytes} bytes"
            break
        kept.append(values)
    return QueryResult(columns, kept, reason is not None, reason)


def run_query(path: Path, sql: str, max_rows: int = DEFAULT_MAX_ROWS,
              time_limit_seconds: float = DEFAULT_TIME_LIMIT_SECONDS,
              max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES) -> QueryResult:
    connection = read_only_connection(path)
    deadline = time.monotonic() + time_limit_seconds
    # A runaway query (a cross join over a million images) is stopped, not left to hold a thread.
    connection.set_progress_handler(lambda: int(time.monotonic() > deadline), 10_000)
    try:
        cursor = connection.execute(sql)
        columns = [item[0] for item in cursor.description or ()]
        return collect(columns, cursor, max_rows, max_result_bytes)
    except sqlite3.Error as error:
        message = str(error)
        if message == "interrupted":
            message = f"interrupted after {time_limit_seconds:g} s"
        raise QueryError(message) from error
    finally:
        connection.close()


def table_names(path: Path) -> list[str]:
    connection = read_only_connection(path)
    try:
        return [row[0] for row in connection.execute(
            "SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
    finally:
        connection.close()
