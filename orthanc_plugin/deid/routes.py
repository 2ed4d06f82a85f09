"""GET /rt-gateway/deid/mappings?patient=<original or pseudonym>: re-link a de-identified study.

Behind Orthanc's authentication like every /rt-gateway/ route; nothing else exposes the mapping.
"""

from __future__ import annotations

from orthanc_plugin.api.router import ApiError, Request, Response, Router, json_response
from orthanc_plugin.db_engine import StateDatabase
from orthanc_plugin.deid.tables import mapping_for


def add_routes(router: Router, db: StateDatabase) -> None:
    def get_mapping(request: Request) -> Response:
        patient = request.query.get("patient", "").strip()
        if not patient:
            raise ApiError(400, "patient: expected ?patient=<original PatientID or pseudonym>")
        mapping = mapping_for(db, patient)
        if mapping is None:
            raise ApiError(404, "no de-identification mapping for this patient")
        return json_response(mapping)

    router.add("GET", "deid/mappings", get_mapping)
