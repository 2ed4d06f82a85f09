"""Export: matched instances written as files into a folder (the DRAW RTSTRUCT export)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from orthanc_plugin.export.action import ExportExecutor
from orthanc_plugin.export.routes import add_routes
from orthanc_plugin.export.rule import JOB_ACTION, ExportAction, plan_export_job

if TYPE_CHECKING:
    from orthanc_plugin.app import Gateway


def install(gateway: Gateway) -> None:
    gateway.registry.add_planner(ExportAction, plan_export_job)
    gateway.registry.add_executor(JOB_ACTION, ExportExecutor(
        gateway.job_context, gateway.config.config_dir))
    add_routes(gateway.router, gateway.db)


__all__ = ["install"]
