"""Read-only SQL over the index file. SQLite itself refuses writes: the connection is opened with
mode=ro and query_only, so no string inspection decides what is a write."""

from __future__ import annotations

import csv
import io
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    """SQLite refused or aborted the query; the message is SQLite's."""


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
        rows: list[tuple[Any, ...]] = []
        size = 0
        reason: str | None = None
        for row in cursor:
            if len(rows) == max_rows:
                reason = f"more than {max_rows} rows"
                break
            size += sum(_value_bytes(value) for value in row) + 2 * len(columns)
            if size > max_result_bytes:
                reason = f"more than {max_result_bytes} bytes"
                break
            rows.append(tuple(row))
    except sqlite3.Error as error:
        message = str(error)
        if message == "interrupted":
            message = f"interrupted after {time_limit_seconds:g} s"
        raise QueryError(message) from error
    finally:
        connection.close()
    return QueryResult(columns, rows, reason is not None, reason)


def table_names(path: Path) -> list[str]:
    connection = read_only_connection(path)
    try:
        return [row[0] for row in connection.execute(
            "SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
    finally:
        connection.close()
