"""Forwarding's own route: what is in flight right now, for an operator after a restart."""

from __future__ import annotations

from orthanc_plugin.api.router import Request, Response, Router, json_response
from orthanc_plugin.db_engine import StateDatabase
from orthanc_plugin.forwarding import store

MAX_ROWS = 1000


def add_routes(router: Router, db: StateDatabase) -> None:
    def in_flight(_: Request) -> Response:
        rows = store.in_flight(db, MAX_ROWS)
        return json_response({"in_flight": rows,
                              "truncated": len(rows) == MAX_ROWS})

    router.add("GET", "forwarding/in-flight", in_flight)
