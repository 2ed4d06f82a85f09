"""The import folder: DICOM files and ZIPs dropped in a folder go through the rules as IMPORT_FOLDER."""

from __future__ import annotations

from typing import TYPE_CHECKING

from orthanc_plugin.importer.model import SOURCE, read_settings
from orthanc_plugin.importer.routes import add_routes
from orthanc_plugin.importer.tables import ImportTables
from orthanc_plugin.importer.watcher import ImportWatcher

if TYPE_CHECKING:
    from orthanc_plugin.app import Gateway


def install(gateway: Gateway) -> None:
    settings = read_settings(gateway.config.section.get("Import") or {}, gateway.config.config_dir,
                             gateway.config.quarantine_folder / "import")
    tables = ImportTables(gateway.db)
    watcher = ImportWatcher(gateway.host, tables, gateway.recorder, settings,
                            gateway.host.log_error)
    gateway.intake.source_overrides.append(
        lambda instance_id: SOURCE if tables.is_imported(instance_id) else None)
    gateway.on_start.append(watcher.start)
    gateway.on_stop.append(watcher.stop)
    add_routes(gateway.router, tables, watcher)


__all__ = ["install"]
