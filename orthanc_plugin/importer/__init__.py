"""The import folder: DICOM files and ZIPs dropped in a folder go through the rules as IMPORT_FOLDER."""

from __future__ import annotations

from typing import TYPE_CHECKING

from orthanc_plugin.importer.model import SOURCE, read_settings
from orthanc_plugin.importer.routes import add_routes
from orthanc_plugin.importer.tables import ImportTables
from orthanc_plugin.importer.watcher import ImportWatcher

if TYPE_CHECKING:
    from orthanc_plugin.context import CapabilityContext


def install(ctx: CapabilityContext) -> None:
    settings = read_settings(ctx.config.section.get("Import") or {}, ctx.config.config_dir,
                             ctx.config.quarantine_folder / "import")
    tables = ImportTables(ctx.db)
    watcher = ImportWatcher(ctx.host, tables, ctx.recorder, settings,
                            ctx.host.log_error)
    ctx.hooks.source_overrides.append(
        lambda instance_id: SOURCE if tables.is_imported(instance_id) else None)
    ctx.hooks.on_start.append(watcher.start)
    ctx.hooks.on_stop.append(watcher.stop)
    add_routes(ctx.router, tables, watcher)


__all__ = ["install"]
