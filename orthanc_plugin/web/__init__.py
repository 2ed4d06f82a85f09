"""The gateway page (/rt-gateway/ui/) and the Orthanc Explorer extension: static files, no build step.

The extension is registered by the plugin itself (host.py reads web/static/explorer.js at load).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from orthanc_plugin.web.routes import add_routes

if TYPE_CHECKING:
    from orthanc_plugin.context import CapabilityContext


def install(ctx: CapabilityContext) -> None:
    add_routes(ctx.router)


__all__ = ["install"]
