"""GET /rt-gateway/import/progress (with what was skipped, by reason) and POST
/rt-gateway/import/scan (look at the folder now)."""

from __future__ import annotations

from orthanc_plugin.api.router import Request, Response, Router, json_response
from orthanc_plugin.importer.tables import ImportTables
from orthanc_plugin.importer.watcher import ImportWatcher


def add_routes(router: Router, tables: ImportTables, watcher: ImportWatcher) -> None:
    def progress(_: Request) -> Response:
        settings = watcher.settings
        folder = settings.folder
        answer = {"folder": str(folder) if folder else None,
                  "quarantine": str(settings.quarantine),
                  "running": watcher.thread is not None, **tables.progress(),
                  "filters": {"include": list(settings.include), "exclude": list(settings.exclude),
                              "recursive": settings.recursive,
                              "minimum_age_seconds": settings.minimum_age_seconds},
                  # Files left in the folder by reason: last complete walk, and since start.
                  "skipped": watcher.skips.snapshot()}
        return json_response(answer)

    def scan(_: Request) -> Response:
        watcher.wakeup.set()
        return json_response({"scan": "requested"})

    router.add("GET", "import/progress", progress)
    router.add("POST", "import/scan", scan)
