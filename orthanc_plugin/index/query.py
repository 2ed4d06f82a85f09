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


class QueryError(ValueError):
    """SQLite refused or aborted the query; the message is SQLite's."""


@dataclass(frozen=True)
class QueryResult:
    columns: list[str]
    rows: list[tuple[Any, ...]]
    truncated: bool

    def as_json(self) -> dict[str, Any]:
        return {"columns": self.columns, "rows": [dict(zip(self.columns, row, strict=True))
                                                  for row in self.rows],
                "count": len(self.rows), "truncated": self.truncated}

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
    # No ATTACH: a query reads the index, not other SQLite files on the disk.
    connection.set_authorizer(_deny_attach)
    return connection


def _deny_attach(action: int, *_: Any) -> int:
    denied = (sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH)
    return sqlite3.SQLITE_DENY if action in denied else sqlite3.SQLITE_OK


def run_query(path: Path, sql: str, max_rows: int = DEFAULT_MAX_ROWS,
              time_limit_seconds: float = DEFAULT_TIME_LIMIT_SECONDS) -> QueryResult:
    connection = read_only_connection(path)
    deadline = time.monotonic() + time_limit_seconds
    # A runaway query (a cross join over a million images) is stopped, not left to hold a thread.
    connection.set_progress_handler(lambda: int(time.monotonic() > deadline), 10_000)
    try:
        cursor = connection.execute(sql)
        columns = [item[0] for item in cursor.description or ()]
        rows = cursor.fetchmany(max_rows + 1)
    except sqlite3.Error as error:
        message = str(error)
        if message == "interrupted":
            message = f"interrupted after {time_limit_seconds:g} s"
        raise QueryError(message) from error
    finally:
        connection.close()
    return QueryResult(columns, [tuple(row) for row in rows[:max_rows]], len(rows) > max_rows)


def table_names(path: Path) -> list[str]:
    connection = read_only_connection(path)
    try:
        return [row[0] for row in connection.execute(
            "SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
    finally:
        connection.close()
