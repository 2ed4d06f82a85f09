"""Refuses state-changing requests a page on another site could make with the user's credentials.

A browser that has logged in to Orthanc sends its Basic credentials with any request to it, also
from a form on another site. Such a form can only send text/plain, form-encoded or multipart
bodies and cannot add headers; a script on another site that adds a header needs a CORS preflight,
which Orthanc never grants. So a state-changing request must carry a header a form cannot set and,
with a body, a JSON content type; and where the browser says where the request comes from (Origin,
Referer, Sec-Fetch-Site), that must be this host.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit

# Either is accepted: jQuery (Orthanc Explorer's panel) sets X-Requested-With by itself.
REQUIRED_HEADERS = ("x-requested-with", "x-rt-gateway")
JSON_TYPES = ("application/json",)


def cross_site_refusal(headers: Mapping[str, str], has_body: bool,
                       other_body_types: tuple[str, ...] = (),
                       trusted_origins: frozenset[str] = frozenset()) -> tuple[int, str] | None:
    """(status, reason) when the request must be refused, None when it may go on.

    `trusted_origins` ("https://pacs.example.org") are the origins users reach the gateway by
    when a reverse proxy in front of Orthanc rewrites the Host header (RtGateway.TrustedOrigins)."""
    fetch_site = headers.get("sec-fetch-site", "").lower()
    if fetch_site in ("cross-site", "same-site"):
        return 403, f"cross-site request refused (Sec-Fetch-Site: {fetch_site})"
    host = headers.get("host", "").lower()
    for name in ("origin", "referer"):
        value = headers.get(name)
        if not value:
            continue
        source = urlsplit(value).netloc.lower() if value != "null" else "null"
        if _origin_of(value) in trusted_origins:
            break
        if not host or source != host:
            return 403, (f"cross-site request refused ({name.title()} {value[:80]!r} is not "
                     f"this host)")
        break  # Origin decides when present; Referer only when the browser sent no Origin
    if not any(headers.get(name) for name in REQUIRED_HEADERS):
        return 403, ("cross-site check: a request that changes something must carry the header "
                     "X-Requested-With (any value)")
    if has_body:
        content_type = headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type not in JSON_TYPES + other_body_types:
            accepted = ", ".join(JSON_TYPES + other_body_types)
            return 415, f"Content-Type {content_type or 'missing'}: expected {accepted}"
    return None


def _origin_of(value: str) -> str:
    parts = urlsplit(value.strip().lower())
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else value


def read_trusted_origins(raw: object) -> frozenset[str]:
    """RtGateway.TrustedOrigins: a list of "scheme://host[:port]"; ValueError names a bad one."""
    if raw is None:
        return frozenset()
    if not isinstance(raw, list) or not all(isinstance(item, str) for item in raw):
        raise ValueError("expected a list of origins such as \"https://pacs.example.org\"")
    origins = set()
    for item in raw:
        parts = urlsplit(item.strip().lower())
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
            raise ValueError(f"{item!r} is not an origin (scheme://host[:port], no path)")
        origins.add(f"{parts.scheme}://{parts.netloc}")
    return frozenset(origins)
