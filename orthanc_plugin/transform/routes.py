"""GET /rt-gateway/names/unmapped: ROI names and plan labels sent unchanged for want of a usable
match (no match, a z_ helper, a conflict, too long), most seen first, so a physicist knows which
synonyms to add to the site's table."""

from __future__ import annotations

from orthanc_plugin.api.router import Request, Response, Router, json_response
from orthanc_plugin.db_engine import StateDatabase
from orthanc_plugin.transform.store import unmapped_count, unmapped_names


def add_routes(router: Router, db: StateDatabase) -> None:
    def unmapped(request: Request) -> Response:
        offset = request.int_param("offset", 0, minimum=0, maximum=10_000_000)
        limit = request.int_param("limit", 50, minimum=1, maximum=1000)
        return json_response({"total": unmapped_count(db), "offset": offset,
                              "names": unmapped_names(db, limit, offset)})

    router.add("GET", "names/unmapped", unmapped)
