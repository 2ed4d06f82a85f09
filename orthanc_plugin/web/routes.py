"""Serves the static page files; the names are fixed, so no path from a request reaches the disk."""

from __future__ import annotations

from pathlib import Path

from orthanc_plugin.api.router import ApiError, Request, Response, Router

STATIC = Path(__file__).resolve().parent / "static"
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}
# The page loads only its own files and talks only to this Orthanc; no inline script, no framing.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'none'; frame-ancestors 'self'; base-uri 'none'"),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "SAMEORIGIN",
    "Referrer-Policy": "same-origin",
}
PAGE_FILES = {path.name: path for path in STATIC.iterdir() if path.suffix in CONTENT_TYPES}


def add_routes(router: Router) -> None:
    def serve(request: Request) -> Response:
        name = request.params.get("file") or "index.html"
        path = PAGE_FILES.get(name)
        if path is None:
            raise ApiError(404, f"no page file {name!r}")
        return Response(200, path.read_bytes(), CONTENT_TYPES[path.suffix], PAGE_HEADERS)

    router.add("GET", "ui/?", serve)
    router.add("GET", r"ui/(?P<file>[A-Za-z0-9_.-]+)", serve)
