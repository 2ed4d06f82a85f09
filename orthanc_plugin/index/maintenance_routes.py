"""REST: POST /rt-gateway/index/rebuild (bounded batches) and /rt-gateway/index/series/{send,copy,delete}."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from orthanc_plugin.api.router import ApiError, Request, Response, json_response
from orthanc_plugin.index.rebuild import IndexRebuilder, parse_batch, parse_scope
from orthanc_plugin.index.safe_names import safe_name
from orthanc_plugin.index.selection import select_series
from orthanc_plugin.index.series_actions import SeriesActions

if TYPE_CHECKING:
    from orthanc_plugin.context import CapabilityContext


def add_maintenance_routes(ctx: CapabilityContext, rebuilder: IndexRebuilder, actions: SeriesActions) -> None:
    def body_of(request: Request) -> dict[str, Any]:
        body = request.json()
        if not isinstance(body, dict):
            raise ApiError(400, "body: expected a JSON object")
        return body

    def rebuild(request: Request) -> Response:
        body = body_of(request)
        scope = parse_scope(body.get("scope"))
        after, limit = parse_batch(body)
        return json_response(rebuilder.batch(scope, after, limit))

    def selected(body: dict[str, Any]) -> dict[str, Any]:
        uids = select_series(actions.store, body.get("select"))
        found, missing = actions.locate(uids)
        return {"found": found, "not_in_orthanc": missing}

    def send(request: Request) -> Response:
        body = body_of(request)
        targets = body.get("targets")
        if not (isinstance(targets, list) and targets and all(isinstance(t, str) for t in targets)):
            raise ApiError(400, 'targets: expected ["<modality name>", ...]')
        chosen = selected(body)
        return json_response({"jobs": actions.send(chosen["found"], targets),
                              "not_in_orthanc": chosen["not_in_orthanc"]})

    def copy(request: Request) -> Response:
        body = body_of(request)
        folder = body.get("folder")
        if not isinstance(folder, str) or not folder or safe_name(folder) != folder:
            raise ApiError(400, "folder: expected a plain folder name (letters, digits, . _ -)")
        chosen = selected(body)
        return json_response({"copied": actions.copy(chosen["found"], folder),
                              "not_in_orthanc": chosen["not_in_orthanc"]})

    def delete(request: Request) -> Response:
        chosen = selected(body_of(request))
        return json_response({"deleted": actions.delete(chosen["found"]),
                              "not_in_orthanc": chosen["not_in_orthanc"]})

    ctx.router.add("POST", "index/rebuild", rebuild)
    ctx.router.add("POST", "index/series/send", send)
    ctx.router.add("POST", "index/series/copy", copy)
    ctx.router.add("POST", "index/series/delete", delete)
