"""A small method + path router for the routes under /rt-gateway/ (Orthanc authenticates first)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

PREFIX = "/rt-gateway/"


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
        except json.JSONDecodeError as error:
            raise ApiError(400, f"body: invalid JSON ({error})") from error


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def json_response(value: Any, status: int = 200) -> Response:
    return Response(status, json.dumps(value, indent=2, default=str).encode())


def csv_response(text: str) -> Response:
    return Response(200, text.encode(), "text/csv; charset=utf-8")


Handler = Callable[[Request], Response]


class Router:
    def __init__(self) -> None:
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = []

    def add(self, method: str, pattern: str, handler: Handler) -> None:
        self._routes.append((method, re.compile(f"^{pattern}$"), handler))

    def dispatch(
        self, method: str, uri: str, query: Mapping[str, str], body: bytes,
        headers: Mapping[str, str] | None = None,
    ) -> Response:
        path = uri[len(PREFIX):] if uri.startswith(PREFIX) else uri.lstrip("/")
        allowed: list[str] = []
        for route_method, pattern, handler in self._routes:
            match = pattern.match(path)
            if not match:
                continue
            if route_method != method:
                allowed.append(route_method)
                continue
            request = Request(method, path, dict(query), body, match.groupdict(), dict(headers or {}))
            try:
                return handler(request)
            except ApiError as error:
                return json_response({"error": error.message}, error.status)
        if allowed:
            return json_response(
                {"error": f"method {method} not allowed", "allowed": allowed}, 405
            )
        return json_response({"error": f"no route {PREFIX}{path}"}, 404)
