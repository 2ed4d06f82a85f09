"""Plans as one unit: bundles from references, the plan-complete trigger, manual send."""

from __future__ import annotations

from typing import TYPE_CHECKING

from orthanc_plugin.config import SECTION, ConfigError
from orthanc_plugin.db import Database
from orthanc_plugin.plans import search
from orthanc_plugin.plans.dvh import (
    DEFAULT_END_CAPS,
    DEFAULT_INNER_CONTOURS,
    DEFAULT_INTERPOLATION,
    END_CAPS,
    INNER_CONTOURS,
    INTERPOLATIONS,
)
from orthanc_plugin.plans.routes import add_routes
from orthanc_plugin.plans.tables import create_worklist_index
from orthanc_plugin.plans.tracker import PlanTracker

if TYPE_CHECKING:
    from orthanc_plugin.context import CapabilityContext


def install(ctx: CapabilityContext) -> None:
    settings = ctx.config.section.get("Plans") or {}
    if not isinstance(settings, dict):
        raise ConfigError(f"{SECTION}.Plans: expected an object")
    expected = settings.get("ExpectedDoses", 1)
    if isinstance(expected, bool) or not isinstance(expected, int) or expected < 0:
        raise ConfigError(f"{SECTION}.Plans.ExpectedDoses: expected a whole number >= 0, got {expected!r}")
    if isinstance(ctx.db, Database):
        # SQLite's triggers fold the search text with this; on PostgreSQL the writer folds it
        # (plans/store.py fold_search_text).
        ctx.db.add_function(search.SQL_FUNCTION, 1, search.fold)
    create_worklist_index(ctx.db)
    end_caps = settings.get("DvhEndCaps", DEFAULT_END_CAPS)
    if end_caps not in END_CAPS:
        raise ConfigError(f"{SECTION}.Plans.DvhEndCaps: expected one of {', '.join(END_CAPS)}, "
                          f"got {end_caps!r}")
    interpolation = settings.get("DvhInterpolation", DEFAULT_INTERPOLATION)
    if interpolation not in INTERPOLATIONS:
        raise ConfigError(f"{SECTION}.Plans.DvhInterpolation: expected one of "
                          f"{', '.join(INTERPOLATIONS)}, got {interpolation!r}")
    inner = settings.get("DvhInnerContours", DEFAULT_INNER_CONTOURS)
    if inner not in INNER_CONTOURS:
        raise ConfigError(f"{SECTION}.Plans.DvhInnerContours: expected one of "
                          f"{', '.join(INNER_CONTOURS)}, got {inner!r}")
    tracker = PlanTracker(ctx, expected_doses=expected)
    ctx.hooks.after_describe.append(tracker.step)
    add_routes(ctx)


__all__ = ["install"]
