"""The Host port over Orthanc's HTTP REST API on loopback: what every worker uses to reach Orthanc.

A socket wait releases nothing of Orthanc's (no GIL, no store lock), so a worker may wait on Orthanc
as long as it needs; the SDK inside the plugin could not (ARCHITECTURE.md).
"""

from __future__ import annotations

import base64
import http.client
import json
import ssl
import sys
import threading
import time
from typing import Any
from urllib.parse import urlsplit

from orthanc_plugin.ports import HostError
from orthanc_plugin.reception import ReceptionGate

CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 900.0


class HttpHost:
    """One keep-alive connection per thread, plain http.client: the intake makes a few calls per
    received instance, and a heavier client's per-call cost showed in the relay's CPU time."""

    def __init__(self, base_url: str, auth: tuple[str, str] | None, label: str,
                 gate: ReceptionGate | None = None) -> None:
        parts = urlsplit(base_url.rstrip("/"))
        self.base_url = base_url.rstrip("/")
        self._https = parts.scheme == "https"
        self._netloc = parts.netloc
        self._prefix = parts.path
        self._headers = {"X-Rt-Gateway-Worker": label, "Connection": "keep-alive"}
        if auth is not None:
            token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
            self._headers["Authorization"] = f"Basic {token}"
        self.label = label
        self._local = threading.local()
        self.metrics: dict[str, float] = {}
        # Reception first (reception.py): background threads' calls wait while instances arrive.
        self.gate = gate

    def _connection(self) -> http.client.HTTPConnection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            if self._https:
                connection = http.client.HTTPSConnection(
                    self._netloc, timeout=READ_TIMEOUT, context=ssl.create_default_context())
            else:
                connection = http.client.HTTPConnection(self._netloc, timeout=READ_TIMEOUT)
            self._local.connection = connection
        return connection

    def _request(self, method: str, uri: str, data: bytes | None = None) -> bytes:
        if self.gate is not None:
            self.gate.before_request()
        for attempt in (1, 2):
            connection = self._connection()
            try:
                connection.request(method, self._prefix + uri, body=data, headers=self._headers)
                response = connection.getresponse()
                body = response.read()
                break
            except (OSError, http.client.HTTPException) as error:
                # A keep-alive connection Orthanc closed meanwhile: one fresh try.
                connection.close()
                self._local.connection = None
                if attempt == 2:
                    raise HostError(f"{uri}: Orthanc unreachable: {error}",
                                    unreachable=True) from error
        if response.status >= 400:
            raise HostError(f"{uri}: HTTP {response.status} {_orthanc_error(body)}",
                            missing=response.status == 404)
        return body

    def get_json(self, uri: str) -> Any:
        return json.loads(self._request("GET", uri))

    def get_text(self, uri: str) -> str:
        return self._request("GET", uri).decode("utf-8", "replace")

    def get_bytes(self, uri: str) -> bytes:
        return self._request("GET", uri)

    def post_json(self, uri: str, body: Any) -> Any:
        answer = self._request("POST", uri, json.dumps(body).encode())
        return json.loads(answer) if answer.strip() else None

    def post_for_bytes(self, uri: str, body: Any) -> bytes:
        return self._request("POST", uri, json.dumps(body).encode())

    def post_bytes(self, uri: str, data: bytes) -> Any:
        answer = self._request("POST", uri, data)
        try:
            return json.loads(answer) if answer.strip() else None
        except ValueError:
            return answer

    def delete(self, uri: str) -> None:
        self._request("DELETE", uri)

    def put(self, uri: str, data: bytes = b"") -> None:
        self._request("PUT", uri, data)

    def set_metric(self, name: str, value: float) -> None:
        # The lead worker publishes metrics computed from the database (Gateway.metrics_snapshot);
        # the plugin copies them into Orthanc's registry. Kept here for the Host protocol.
        self.metrics[name] = value

    def log_info(self, message: str) -> None:
        self._log("I", message)

    def log_warning(self, message: str) -> None:
        self._log("W", message)

    def log_error(self, message: str) -> None:
        self._log("E", message)

    def _log(self, level: str, message: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        sys.stderr.write(f"{level} {stamp} RtGateway {self.label}: {message}\n")
        sys.stderr.flush()


def _orthanc_error(body: bytes) -> str:
    try:
        answer = json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace")[:300]
    if isinstance(answer, dict):
        return str(answer.get("OrthancError") or answer.get("Message") or answer)[:300]
    return str(answer)[:300]
