"""REST: POST /rt-gateway/index/query, GET /rt-gateway/index/tables/{name}.csv."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from orthanc_plugin.api.router import ApiError, Request, Response, csv_response, json_response
from orthanc_plugin.index.query import DEFAULT_MAX_ROWS, QueryError
from orthanc_plugin.index.store import IndexStore

if TYPE_CHECKING:
    from orthanc_plugin.context import CapabilityContext

MAX_ROWS_CAP = 1_000_000
TABLE_DUMP_MAX_BYTES = 512 * 1024 * 1024


def add_routes(ctx: CapabilityContext, store: IndexStore) -> None:
    def query(request: Request) -> Response:
        """Body {"sql": ..., "format": "json"|"csv", "max_rows": n}, or the SQL text itself."""
        try:
            body = json.loads(request.body) if request.body.strip() else {}
        except ValueError:
            body = {"sql": request.body.decode("utf-8", "replace")}
        if not isinstance(body, dict) or not isinstance(body.get("sql"), str) or not body["sql"].strip():
            raise ApiError(400, "body: expected {\"sql\": \"select ...\"} or the SQL text")
        output = str(body.get("format") or request.query.get("format") or "json")
        if output not in ("json", "csv"):
            raise ApiError(400, "format: expected json or csv")
        max_rows = body.get("max_rows", DEFAULT_MAX_ROWS)
        if isinstance(max_rows, bool) or not isinstance(max_rows, int) or not 0 < max_rows <= MAX_ROWS_CAP:
            raise ApiError(400, f"max_rows: expected a whole number from 1 to {MAX_ROWS_CAP}")
        try:
            result = store.reader.run_query(body["sql"], max_rows)
        except QueryError as error:
            raise ApiError(400, f"query refused by {store.reader.engine}: {error}") from error
        return csv_response(result.as_csv()) if output == "csv" else json_response(result.as_json())

    def tables() -> list[str]:
        try:
            return store.reader.table_names()
        except QueryError as error:     # PostgreSQL: the reader role cannot connect (yet)
            raise ApiError(503, f"the index cannot be read: {error}") from error

    def dump_table(request: Request) -> Response:
        name = request.params["name"]
        known = {table.lower(): table for table in tables()}
        table = known.get(name.lower())
        if table is None:
            raise ApiError(404, f"no table {name!r} (tables: {', '.join(sorted(known.values()))})")
        try:
            result = store.dump_table(table, MAX_ROWS_CAP, TABLE_DUMP_MAX_BYTES)
        except QueryError as error:
            raise ApiError(503, f"the index cannot be read: {error}") from error
        return csv_response(result.as_csv())

    def list_tables(_: Request) -> Response:
        return json_response(tables())

    ctx.router.add("POST", "index/query", query, body_types=("text/plain", "application/sql"))
    ctx.router.add("GET", "index/tables", list_tables)
    ctx.router.add("GET", r"index/tables/(?P<name>[A-Za-z0-9_]+)\.csv", dump_table)
