"""REST routes of the harvest: define and start, list, progress, pause/resume/cancel/refresh, inventory."""

from __future__ import annotations

from typing import TYPE_CHECKING

from orthanc_plugin.api.router import ApiError, Request, Response, Router, csv_response, json_response
from orthanc_plugin.harvest.model import HarvestError, parse_definition

if TYPE_CHECKING:
    from orthanc_plugin.context import CapabilityContext
    from orthanc_plugin.harvest.action import HarvestRunner


def add_routes(router: Router, ctx: CapabilityContext, runner: HarvestRunner) -> None:
    def harvest_or_404(request: Request) -> int:
        harvest_id = int(request.params["id"])
        if runner.store.harvest(harvest_id) is None:
            raise ApiError(404, f"no harvest {harvest_id}")
        return harvest_id

    def create(request: Request) -> Response:
        try:
            definition = parse_definition(request.json(), ctx.known_targets())
        except HarvestError as error:
            return json_response({"error": str(error), "path": error.path, "reason": error.reason}, 400)
        harvest_id = runner.create(definition)
        harvest = runner.store.harvest(harvest_id)
        assert harvest is not None
        return json_response(runner.status(harvest))

    def list_all(_: Request) -> Response:
        return json_response([runner.status(h) for h in runner.store.harvests()])

    def show(request: Request) -> Response:
        harvest = runner.store.harvest(harvest_or_404(request))
        assert harvest is not None
        return json_response(runner.status(harvest))

    def command(request: Request) -> Response:
        harvest_id = harvest_or_404(request)
        verb = request.params["verb"]
        changed = {"pause": runner.pause, "resume": runner.resume, "cancel": runner.cancel,
                   "refresh": runner.refresh}[verb](harvest_id)
        if not changed:
            found = runner.store.harvest(harvest_id)
            assert found is not None
            state = found.state
            raise ApiError(409, f"harvest {harvest_id} is {state}: cannot {verb}")
        harvest = runner.store.harvest(harvest_id)
        assert harvest is not None
        return json_response(runner.status(harvest))

    def inventory(request: Request) -> Response:
        return csv_response(runner.inventory(harvest_or_404(request)))

    def requests(request: Request) -> Response:
        return json_response(runner.store.requests(harvest_or_404(request)))

    router.add("POST", "harvests", create)
    router.add("GET", "harvests", list_all)
    router.add("GET", r"harvests/(?P<id>\d+)", show)
    router.add("POST", r"harvests/(?P<id>\d+)/(?P<verb>pause|resume|cancel|refresh)", command)
    router.add("GET", r"harvests/(?P<id>\d+)/inventory\.csv", inventory)
    router.add("GET", r"harvests/(?P<id>\d+)/requests", requests)
