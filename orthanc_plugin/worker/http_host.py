"""The Host port over Orthanc's HTTP REST API on loopback: what every worker uses to reach Orthanc.

A socket wait releases nothing of Orthanc's (no GIL, no store lock), so a worker may wait on Orthanc
as long as it needs; the SDK inside the plugin could not (ARCHITECTURE.md).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any

import requests

from orthanc_plugin.ports import HostError

CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 900.0


class HttpHost:
    def __init__(self, base_url: str, auth: tuple[str, str] | None, label: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.auth = auth
        self.label = label
        self._local = threading.local()
        self.metrics: dict[str, float] = {}

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.auth = self.auth
            session.headers["X-Rt-Gateway-Worker"] = self.label
            self._local.session = session
        return session

    def _request(self, method: str, uri: str, data: bytes | None = None) -> bytes:
        try:
            response = self._session().request(
                method, self.base_url + uri, data=data, timeout=(CONNECT_TIMEOUT, READ_TIMEOUT))
        except requests.RequestException as error:
            raise HostError(f"{uri}: Orthanc unreachable: {error}") from error
        if response.status_code >= 400:
            raise HostError(f"{uri}: HTTP {response.status_code} {_orthanc_error(response)}",
                            missing=response.status_code == 404)
        return response.content

    def get_json(self, uri: str) -> Any:
        return json.loads(self._request("GET", uri))

    def get_text(self, uri: str) -> str:
        return self._request("GET", uri).decode("utf-8", "replace")

    def get_bytes(self, uri: str) -> bytes:
        return self._request("GET", uri)

    def post_json(self, uri: str, body: Any) -> Any:
        answer = self._request("POST", uri, json.dumps(body).encode())
        return json.loads(answer) if answer.strip() else None

    def post_bytes(self, uri: str, data: bytes) -> Any:
        answer = self._request("POST", uri, data)
        try:
            return json.loads(answer) if answer.strip() else None
        except ValueError:
            return answer

    def delete(self, uri: str) -> None:
        self._request("DELETE", uri)

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


def _orthanc_error(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    if isinstance(body, dict):
        return str(body.get("OrthancError") or body.get("Message") or body)[:300]
    return str(body)[:300]
