"""Forwarding's own route: what is in flight right now, for an operator after a restart."""

from __future__ import annotations

from orthanc_plugin.api.router import Request, Response, Router, json_response
from orthanc_plugin.db import Database

MAX_ROWS = 1000


def add_routes(router: Router, db: Database) -> None:
    def in_flight(_: Request) -> Response:
        rows = db.query(
            "SELECT i.job_id, i.instance_id, i.in_flight_job, i.in_flight_pos, j.target, j.rule "
            "FROM job_items i JOIN jobs j ON j.id = i.job_id "
            "WHERE i.in_flight_job IS NOT NULL AND i.state='pending' ORDER BY i.job_id LIMIT ?",
            (MAX_ROWS,))
        return json_response({"in_flight": [dict(row) for row in rows],
                              "truncated": len(rows) == MAX_ROWS})

    router.add("GET", "forwarding/in-flight", in_flight)
