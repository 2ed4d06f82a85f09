"""A small method + path router for the routes under /rt-gateway/ (Orthanc authenticates first)."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from orthanc_plugin.api.cross_site import cross_site_refusal

PREFIX = "/rt-gateway/"
# SQLite's INTEGER range: a larger id can name nothing, and would raise OverflowError in a query.
MAX_ID = 2**63 - 1


@dataclass(frozen=True)
class Request:
    method: str
    path: str                       # after the prefix, e.g. "jobs/12/retry"
    query: Mapping[str, str]
    body: bytes
    params: Mapping[str, str]
    # The browser's headers that matter to a route (lower-case names), passed on by the plugin.
    headers: Mapping[str, str] = field(default_factory=dict)

    def json(self) -> Any:
        if not self.body.strip():
            return {}
        try:
            return json.loads(self.body)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ApiError(400, f"body: invalid JSON ({error})") from error

    def int_param(self, name: str, default: int, *, minimum: int = 0, maximum: int) -> int:
        """A whole-number query parameter; above `maximum` it is clamped, not refused."""
        text = self.query.get(name)
        if text is None or text == "":
            return default
        if not re.fullmatch(r"[+-]?\d{1,30}", text.strip()):
            raise ApiError(400, f"{name}: expected a whole number, got {text[:40]!r}")
        value = int(text)
        if value < minimum:
            raise ApiError(400, f"{name}: expected at least {minimum}, got {value}")
        return min(value, maximum)

    def float_param(self, name: str) -> float | None:
        text = self.query.get(name)
        if text is None or text == "":
            return None
        try:
            value = float(text)
        except ValueError:
            raise ApiError(400, f"{name}: expected a number, got {text[:40]!r}") from None
        if not math.isfinite(value):
            raise ApiError(400, f"{name}: expected a finite number, got {text[:40]!r}")
        return value

    def choice_param(self, name: str, choices: tuple[str, ...], default: str | None = None) -> str | None:
        text = self.query.get(name)
        if text is None or text == "":
            return default
        if text not in choices:
            raise ApiError(400, f"{name}: expected one of {', '.join(choices)}")
        return text

    def id_param(self, name: str = "id") -> int:
        value = int(self.params[name])
        if not 0 < value <= MAX_ID:
            raise ApiError(404, f"no {name} {self.params[name][:40]}")
        return value


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: Mapping[str, str] = field(default_factory=dict)


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def finite_only(value: Any, path: str, replaced: list[str]) -> Any:
    """JSON has no Infinity or NaN: such numbers (a DoseGridScaling of -1e308 times a pixel) become
    null, and their places are listed so a client can tell a null from a missing value."""
    if isinstance(value, float) and not math.isfinite(value):
        replaced.append(path or "$")
        return None
    if isinstance(value, dict):
        return {key: finite_only(item, f"{path}.{key}" if path else str(key), replaced)
                for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite_only(item, f"{path}[{index}]", replaced) for index, item in enumerate(value)]
    return value


def json_response(value: Any, status: int = 200) -> Response:
    try:
        text = json.dumps(value, indent=2, default=str, allow_nan=False)
    except ValueError:
        replaced: list[str] = []
        value = finite_only(value, "", replaced)
        if isinstance(value, dict):
            value["non_finite_as_null"] = {
                "reason": "numbers that are not finite (overflow or NaN) are given as null",
                "paths": replaced[:100]}
        text = json.dumps(value, indent=2, default=str, allow_nan=False)
    return Response(status, text.encode())


def csv_response(text: str) -> Response:
    return Response(200, text.encode(), "text/csv; charset=utf-8")


Handler = Callable[[Request], Response]


@dataclass(frozen=True)
class Route:
    method: str
    pattern: re.Pattern[str]
    handler: Handler
    # Content types a state-changing route takes besides JSON (index/query takes SQL as text).
    body_types: tuple[str, ...] = ()


class Router:
    def __init__(self, trusted_origins: frozenset[str] = frozenset()) -> None:
        self._routes: list[Route] = []
        self.trusted_origins = trusted_origins

    def add(self, method: str, pattern: str, handler: Handler,
            body_types: tuple[str, ...] = ()) -> None:
        self._routes.append(Route(method, re.compile(f"^{pattern}$"), handler, body_types))

    def routes(self) -> list[tuple[str, str]]:
        return [(route.method, route.pattern.pattern[1:-1]) for route in self._routes]

    def dispatch(
        self, method: str, uri: str, query: Mapping[str, str], body: bytes,
        headers: Mapping[str, str] | None = None,
    ) -> Response:
        path = uri[len(PREFIX):] if uri.startswith(PREFIX) else uri.lstrip("/")
        allowed: list[str] = []
        for route in self._routes:
            match = route.pattern.match(path)
            if not match:
                continue
            if route.method != method:
                allowed.append(route.method)
                continue
            request = Request(method, path, dict(query), body, match.groupdict(), dict(headers or {}))
            try:
                if method not in ("GET", "HEAD"):
                    refusal = cross_site_refusal(request.headers, bool(body.strip()),
                                                 route.body_types, self.trusted_origins)
                    if refusal is not None:
                        raise ApiError(*refusal)
                return route.handler(request)
            except ApiError as error:
                return json_response({"error": error.message}, error.status)
        if allowed:
            return json_response(
                {"error": f"method {method} not allowed", "allowed": allowed}, 405
            )
        return json_response({"error": f"no route {PREFIX}{path}"}, 404)
