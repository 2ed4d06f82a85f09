"""The user's read-only SQL over the index on PostgreSQL, with the limits the SQLite file has
(index/query.py). The server refuses, not string inspection:

- the connection logs in as the reader role, never the gateway's own user with SET ROLE: a
  session whose user is the owner could take the owner's role back inside a query
  (set_config('role', ...)). The role may use the index's schema and read its tables, nothing
  else (postgres_store.py grants it), so the gateway's tables (jobs, ...) are refused; the
  search_path is that schema, so `DICOMstudies` reads as in SQLite;
- the SQL runs as a server-side cursor (DECLARE ... CURSOR FOR): one query and nothing else (no
  SET, no second statement, no data-modifying WITH), its rows fetched as they are read, so the
  row and byte caps stop the server rather than fill the worker's memory;
- the transaction is READ ONLY and is rolled back, never committed: what PostgreSQL still lets
  a function do in a read-only transaction (lo_create) goes with it;
- the time limit is the server's statement_timeout, and the client cancels the query at the
  deadline too: a query can switch the server's timeout off for the fetches that follow
  (set_config('statement_timeout', '0', false)), not the client's.

Only worker processes import it (scripts/import_rules.py).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Mapping
from contextlib import suppress
from decimal import Decimal
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from orthanc_plugin.index.query import (
    DEFAULT_MAX_RESULT_BYTES,
    DEFAULT_MAX_ROWS,
    DEFAULT_TIME_LIMIT_SECONDS,
    QueryError,
    QueryResult,
    collect,
)

CURSOR = "index_query"
# Rows per FETCH: the caps are checked between fetches' rows, so a few at a time.
FETCH_ROWS = 100
CONNECT_TIMEOUT_SECONDS = 10
# What a query may begin with (for the message only: the server decides what runs).
QUERY_START = re.compile(r"\s*(\(|select\b|with\b|values\b|table\b)", re.I)


class PostgresIndexReader:
    engine = "PostgreSQL"

    def __init__(self, gateway_conninfo: str, role: str, password: str, schema: str,
                 names: Mapping[str, str],
                 unavailable: Callable[[], str | None] = lambda: None) -> None:
        """`names`: lower case -> as SQLite writes it (tables.index_names). `unavailable`: why the
        role cannot read the index yet (postgres_store.ReaderAccess), None once it can."""
        parts = conninfo_to_dict(gateway_conninfo)
        parts.pop("password", None)     # the gateway's password is not the reader's
        parts.update(user=role, application_name="rt-gateway index query")
        if password:
            parts["password"] = password
        self._base_options = str(parts.pop("options", "") or "")
        self.conninfo = make_conninfo("", **parts)
        self.role = role
        self.schema = schema
        self.names = dict(names)
        self._unavailable = unavailable

    def run_query(self, sql: str, max_rows: int = DEFAULT_MAX_ROWS,
                  time_limit_seconds: float = DEFAULT_TIME_LIMIT_SECONDS,
                  max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES) -> QueryResult:
        connection = self._connect(time_limit_seconds)
        timer = threading.Timer(time_limit_seconds, _cancel, (connection,))
        timer.daemon = True
        timer.start()
        try:
            cursor = connection.cursor(name=CURSOR)
            cursor.itersize = FETCH_ROWS
            cursor.execute(sql)
            columns = [self.names.get(column.name, column.name)
                       for column in cursor.description or ()]
            return collect(columns, (map(_plain, row) for row in cursor), max_rows,
                           max_result_bytes)
        except pg_errors.QueryCanceled as error:
            raise QueryError(f"interrupted after {time_limit_seconds:g} s") from error
        except psycopg.Error as error:
            raise QueryError(_message(error, sql)) from error
        finally:
            timer.cancel()
            # Never committed: closing rolls the transaction back.
            connection.close()

    def table_names(self) -> list[str]:
        """The tables the role may read in the index's schema, named and ordered as in SQLite."""
        connection = self._connect(DEFAULT_TIME_LIMIT_SECONDS)
        try:
            rows = connection.execute(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_schema = current_schema()").fetchall()
        except psycopg.Error as error:
            raise QueryError(_message(error, "")) from error
        finally:
            connection.close()
        return sorted(self.names.get(str(row[0]), str(row[0])) for row in rows)

    def _connect(self, time_limit_seconds: float) -> psycopg.Connection[Any]:
        problem = self._unavailable()
        if problem:
            raise QueryError(problem)
        milliseconds = max(1, round(time_limit_seconds * 1000))
        options = (f"{self._base_options} -c search_path={self.schema} "
                   f"-c default_transaction_read_only=on -c statement_timeout={milliseconds}")
        try:
            connection = psycopg.connect(self.conninfo, options=options.strip(),
                                         connect_timeout=CONNECT_TIMEOUT_SECONDS)
        except psycopg.Error as error:
            raise QueryError(f"cannot connect as the index reader {self.role}: "
                             f"{_primary(error)}") from error
        connection.read_only = True     # BEGIN READ ONLY, whatever the role's defaults say
        return connection


def _cancel(connection: psycopg.Connection[Any]) -> None:
    # The query may have ended (and the connection closed) as the deadline came.
    with suppress(psycopg.Error):
        connection.cancel_safe()


def _plain(value: Any) -> Any:
    """A value as SQLite would give it to the answer's JSON and CSV: a number, text or bytes
    (PostgreSQL's numeric, boolean, timestamp... are made one of them)."""
    if isinstance(value, bool):
        return int(value)
    if value is None or isinstance(value, int | float | str | bytes):
        return value
    if isinstance(value, Decimal):
        if value.is_finite() and value == value.to_integral_value():
            return int(value)
        return float(value)
    if isinstance(value, memoryview):
        return bytes(value)
    return str(value)


def _primary(error: psycopg.Error) -> str:
    return str(error.diag.message_primary or error).strip()


def _message(error: psycopg.Error, sql: str) -> str:
    primary = _primary(error)
    if isinstance(error, pg_errors.SyntaxError) and sql and not QUERY_START.match(sql):
        return f"only one query (SELECT, WITH, VALUES, TABLE) may run here: {primary}"
    return primary
