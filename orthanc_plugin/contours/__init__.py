"""Contours: exact RTSTRUCT rasterization and derived image series with the masks in the overlay plane."""

from __future__ import annotations

from typing import TYPE_CHECKING

from orthanc_plugin.config import SECTION, ConfigError
from orthanc_plugin.contours.action import DEFAULT_WAIT_POLL_SECONDS, OverlayExecutor
from orthanc_plugin.contours.model import ContourLimits
from orthanc_plugin.contours.routes import add_routes
from orthanc_plugin.contours.rule import JOB_ACTION, OverlayAction, plan_overlay

if TYPE_CHECKING:
    from orthanc_plugin.context import CapabilityContext


def install(ctx: CapabilityContext) -> None:
    settings = ctx.config.section.get("Contours") or {}
    if not isinstance(settings, dict):
        raise ConfigError(f"{SECTION}.Contours: expected an object")
    poll = settings.get("WaitPollSeconds", DEFAULT_WAIT_POLL_SECONDS)
    if isinstance(poll, bool) or not isinstance(poll, int | float) or poll <= 0:
        raise ConfigError(f"{SECTION}.Contours.WaitPollSeconds: expected a number > 0, got {poll!r}")
    limits = ContourLimits(
        max_points_per_contour=_whole(settings, "MaxPointsPerContour", 50_000),
        max_points_per_structure_set=_whole(settings, "MaxPointsPerStructureSet", 5_000_000),
    )
    ctx.registry.add_planner(OverlayAction, plan_overlay)
    ctx.registry.add_executor(JOB_ACTION, OverlayExecutor(ctx.jobs, float(poll), limits,
                                                          ctx.gate.before_request))
    add_routes(ctx.router, ctx.host, limits)


def _whole(settings: dict[str, object], key: str, default: int) -> int:
    value = settings.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{SECTION}.Contours.{key}: expected a whole number >= 1, got {value!r}")
    return value


__all__ = ["install"]
