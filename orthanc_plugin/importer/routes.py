"""GET /rt-gateway/import/progress and POST /rt-gateway/import/scan (look at the folder now)."""

from __future__ import annotations

from orthanc_plugin.api.router import Request, Response, Router, json_response
from orthanc_plugin.importer.tables import ImportTables
from orthanc_plugin.importer.watcher import ImportWatcher


def add_routes(router: Router, tables: ImportTables, watcher: ImportWatcher) -> None:
    def progress(_: Request) -> Response:
        folder = watcher.settings.folder
        answer = {"folder": str(folder) if folder else None,
                  "quarantine": str(watcher.settings.quarantine),
                  "running": watcher.thread is not None, **tables.progress()}
        return json_response(answer)

    def scan(_: Request) -> Response:
        watcher.wakeup.set()
        return json_response({"scan": "requested"})

    router.add("GET", "import/progress", progress)
    router.add("POST", "import/scan", scan)
