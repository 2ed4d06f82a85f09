"""Export: matched instances written as files into a folder (the DRAW RTSTRUCT export)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from orthanc_plugin.export.action import ExportExecutor
from orthanc_plugin.export.routes import add_routes
from orthanc_plugin.export.rule import JOB_ACTION, ExportAction, plan_export_job

if TYPE_CHECKING:
    from orthanc_plugin.context import CapabilityContext


def install(ctx: CapabilityContext) -> None:
    ctx.registry.add_planner(ExportAction, plan_export_job)
    ctx.registry.add_executor(JOB_ACTION, ExportExecutor(
        ctx.jobs, ctx.config.config_dir))
    add_routes(ctx.router, ctx.db)


__all__ = ["install"]
