"""The gateway page (/rt-gateway/ui/) and the Orthanc Explorer extension: static files, no build step."""

from __future__ import annotations

from typing import TYPE_CHECKING

from orthanc_plugin.web.routes import add_routes, explorer_extension

if TYPE_CHECKING:
    from orthanc_plugin.app import Gateway


def install(gateway: Gateway) -> None:
    add_routes(gateway.router)
    gateway.explorer_extension = explorer_extension()


__all__ = ["install"]
