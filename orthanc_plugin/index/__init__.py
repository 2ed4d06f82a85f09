"""Conquest-compatible SQL index of what Orthanc stores, with RT metrics; read-only queries."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from orthanc_plugin.config import SECTION, ConfigError, resolve_path
from orthanc_plugin.index.follower import IndexFollower
from orthanc_plugin.index.index_database import open_index_store
from orthanc_plugin.index.maintenance_routes import add_maintenance_routes
from orthanc_plugin.index.model import DEFAULT_LAYOUT, DicomSqlError, Layout, parse_dicom_sql
from orthanc_plugin.index.plan_details import max_dose_by_plan, plan_metrics, plan_summaries
from orthanc_plugin.index.rebuild import IndexRebuilder
from orthanc_plugin.index.routes import add_routes
from orthanc_plugin.index.series_actions import SeriesActions
from orthanc_plugin.plans.routes import (
    add_detail_provider,
    add_max_dose_provider,
    add_summary_provider,
)

if TYPE_CHECKING:
    from orthanc_plugin.context import CapabilityContext


def install(ctx: CapabilityContext) -> None:
    settings = ctx.config.section.get("Index") or {}
    if not isinstance(settings, dict):
        raise ConfigError(f"{SECTION}.Index: expected an object")
    if settings.get("Enabled", True) is False:
        return
    base = ctx.config.config_dir
    store = open_index_store(ctx.config, ctx.db, settings, _layout(settings, base))
    follower = IndexFollower(ctx, store)
    ctx.hooks.when_quiet.append(follower.step)
    add_routes(ctx, store)
    copy_root = resolve_path(base, str(settings.get("CopyRoot", ctx.config.database.parent / "copies")))
    add_maintenance_routes(ctx, IndexRebuilder(ctx, store, follower),
                           SeriesActions(ctx, store, copy_root))
    add_detail_provider(ctx, lambda plan: plan_metrics(store, plan))
    add_max_dose_provider(ctx, lambda plans: max_dose_by_plan(store, plans))
    add_summary_provider(ctx, lambda plan_ids: plan_summaries(store, list(plan_ids)))


def _layout(settings: dict[str, Any], base: Path) -> Layout:
    """A Conquest-format dicom.sql (RtGateway.Index.DicomSql) adds or replaces columns."""
    if not settings.get("DicomSql"):
        return DEFAULT_LAYOUT
    path = resolve_path(base, str(settings["DicomSql"]))
    try:
        return parse_dicom_sql(path.read_text(encoding="utf-8", errors="replace"))
    except (OSError, DicomSqlError) as error:
        raise ConfigError(f"{SECTION}.Index.DicomSql: {path}: {error}") from error


__all__ = ["install"]
