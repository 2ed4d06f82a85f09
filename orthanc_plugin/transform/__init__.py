"""Transforms applied to the copy a destination receives (names, tags, transfer syntax, site
hooks); the instance stored in Orthanc never changes. The forwarder makes the copies
(copy.py); this package's install adds what records and shows them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from orthanc_plugin.transform.routes import add_routes

if TYPE_CHECKING:
    from orthanc_plugin.context import CapabilityContext


def install(ctx: CapabilityContext) -> None:
    # Imported here: the forwarder imports this package's copy maker, and plans imports the
    # forwarder's model, so a module-level import of plans would go round in a circle.
    from orthanc_plugin.plans.routes import add_detail_provider
    from orthanc_plugin.transform.store import names_of

    add_routes(ctx.router, ctx.db)
    # The plan page shows each name its copies carried, before and after, per destination.
    add_detail_provider(ctx, lambda plan: {"names_sent": names_of(
        ctx.db, [member["instance_id"] for member in plan.get("objects") or []])})


__all__ = ["install"]
