"""Forwards a request under /rt-gateway/ to the lead worker's HTTP server on a Unix socket.

Orthanc has already authenticated the request. The plugin's thread waits on a socket, which
releases the GIL, so Orthanc's callbacks run on while a slow route works in the worker.
"""

from __future__ import annotations

import base64
import binascii
import http.client
import json
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

# Headers a route may judge a request by (cross-site checks); credentials never leave Orthanc.
FORWARDED_HEADERS = ("content-type", "origin", "referer", "x-requested-with", "accept",
                     "sec-fetch-site", "host", "x-rt-gateway")


# Headers a route may set on its answer (the page's security policy); others stay in the worker.
ANSWER_HEADERS = ("content-security-policy", "x-content-type-options", "x-frame-options",
                  "referrer-policy", "cache-control")


def basic_auth_user(authorization: str) -> str:
    """The user name of an HTTP Basic authorization (Orthanc's own users), nothing else."""
    scheme, _, encoded = authorization.partition(" ")
    if scheme.lower() != "basic":
        return ""
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8", "replace")
    except (ValueError, binascii.Error):
        return ""
    user = decoded.partition(":")[0]
    return user if user.isprintable() and len(user) <= 64 else ""


@dataclass(frozen=True)
class ProxiedAnswer:
    status: int
    content_type: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("worker", timeout=timeout)
        self._path = str(path)

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


class ApiProxy:
    def __init__(self, api_socket: Path, timeout_seconds: float = 300.0,
                 max_body_bytes: int = 64 << 20) -> None:
        self.api_socket = api_socket
        self.timeout_seconds = timeout_seconds
        self.max_body_bytes = max_body_bytes

    def forward(
        self, method: str, uri: str, query: Mapping[str, str], body: bytes,
        headers: Mapping[str, str],
    ) -> ProxiedAnswer:
        if len(body) > self.max_body_bytes:
            # Answered here: the worker would refuse it too, after a copy through the socket.
            return ProxiedAnswer(413, "application/json", json.dumps(
                {"error": f"request body of {len(body)} bytes is over RtGateway.MaxRequestBodyMB "
                          f"({self.max_body_bytes >> 20})"}).encode())
        target = uri + ("?" + urlencode(dict(query)) if query else "")
        sent_headers = {"X-Forwarded-By": "rt-gateway-plugin"}
        for name, value in headers.items():
            if name.lower() in FORWARDED_HEADERS:
                sent_headers["X-Original-" + name.lower()] = value
            elif name.lower() == "authorization":
                user = basic_auth_user(value)
                if user:  # the audit names who cancelled; the password stays here
                    sent_headers["X-Original-x-rtgw-user"] = user
        connection = _UnixConnection(self.api_socket, self.timeout_seconds)
        try:
            connection.request(method, target, body=body or None, headers=sent_headers)
            response = connection.getresponse()
            answer_headers = tuple((name, value) for name, value in response.getheaders()
                                   if name.lower() in ANSWER_HEADERS)
            return ProxiedAnswer(response.status,
                                 response.getheader("Content-Type", "application/json"),
                                 response.read(), answer_headers)
        except (FileNotFoundError, ConnectionRefusedError):
            return _unavailable("the gateway's lead worker is (re)starting; try again shortly")
        except TimeoutError:
            return _unavailable(f"the gateway's worker did not answer within "
                                f"{self.timeout_seconds:.0f} s")
        except (OSError, http.client.HTTPException) as error:
            return _unavailable(f"the gateway's worker is unreachable: {error}")
        finally:
            connection.close()

    def get_json(self, uri: str) -> object:
        answer = self.forward("GET", uri, {}, b"", {})
        if answer.status != 200:
            raise OSError(f"{uri}: {answer.status}")
        return json.loads(answer.body)


def _unavailable(message: str) -> ProxiedAnswer:
    return ProxiedAnswer(503, "application/json", json.dumps({"error": message}).encode())
