"""GET /rt-gateway/names/unmapped: ROI names and plan labels sent unchanged for want of a usable
match (no match, a z_ helper, a conflict, too long), most seen first, so a physicist knows which
synonyms to add to the site's table."""

from __future__ import annotations

from orthanc_plugin.api.router import Request, Response, Router, json_response
from orthanc_plugin.db import Database


def add_routes(router: Router, db: Database) -> None:
    def unmapped(request: Request) -> Response:
        offset = request.int_param("offset", 0, minimum=0, maximum=10_000_000)
        limit = request.int_param("limit", 50, minimum=1, maximum=1000)
        total = db.query("SELECT COUNT(DISTINCT before) AS n FROM copy_names WHERE after IS NULL")
        rows = db.query(
            "SELECT before AS name, MAX(status) AS status, COUNT(*) AS copies,"
            " COUNT(DISTINCT rule) AS rules, MAX(at) AS last_seen FROM copy_names"
            " WHERE after IS NULL GROUP BY before ORDER BY copies DESC, name LIMIT ? OFFSET ?",
            (limit, offset))
        return json_response({"total": total[0]["n"], "offset": offset,
                              "names": [dict(row) for row in rows]})

    router.add("GET", "names/unmapped", unmapped)
