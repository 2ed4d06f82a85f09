"""GET /rt-gateway/export/transfers[?patient=&sop=&destination=&rule=&format=csv]: the FileTransfer table."""

from __future__ import annotations

from orthanc_plugin.api.router import ApiError, Request, Response, Router, csv_response, json_response
from orthanc_plugin.audit.queries import to_csv
from orthanc_plugin.db_engine import StateDatabase
from orthanc_plugin.export.tables import transfers


def add_routes(router: Router, db: StateDatabase) -> None:
    def get_transfers(request: Request) -> Response:
        limit = request.int_param("limit", 1000, minimum=1, maximum=100_000)
        output = request.choice_param("format", ("json", "csv"))
        try:
            rows = transfers(db, dict(request.query), limit)
        except KeyError as error:
            raise ApiError(400, str(error.args[0])) from None
        if output == "csv":
            return csv_response(to_csv(rows))
        return json_response(rows)

    router.add("GET", "export/transfers", get_transfers)
