"""The lead worker's HTTP server on a Unix socket: the routes under /rt-gateway/, reached only
through the plugin's proxy (so behind Orthanc's authentication) or by Orthanc's own user."""

from __future__ import annotations

import os
import socketserver
import threading
import traceback
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from orthanc_plugin.api.router import Router

MAX_BODY_BYTES_DEFAULT = 64 << 20


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path: str, router: Router, log_error: Callable[[str], None],
                 max_body_bytes: int) -> None:
        # Set before the socket binds: a request can arrive as soon as it does.
        self.router = router
        self.log_error = log_error
        self.max_body_bytes = max_body_bytes
        super().__init__(path, _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def _handle(self) -> None:
        parts = urlsplit(self.path)
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        length = int(self.headers.get("Content-Length") or 0)
        if length > self.server.max_body_bytes:
            self._answer(413, b'{"error": "request body too large"}', "application/json")
            return
        body = self.rfile.read(length) if length else b""
        headers = {
            name[len("X-Original-"):].lower(): value
            for name, value in self.headers.items() if name.startswith("X-Original-")
        }
        try:
            response = self.server.router.dispatch(self.command, parts.path, query, body, headers)
        except Exception:
            self.server.log_error(f"REST {self.command} {parts.path}: {traceback.format_exc()}")
            self._answer(500, b'{"error": "internal error, see the Orthanc log"}',
                         "application/json")
            return
        self._answer(response.status, response.body, response.content_type, response.headers)

    def _answer(self, status: int, body: bytes, content_type: str,
                headers: Mapping[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = _handle

    def log_message(self, format: str, *args: object) -> None:
        pass  # Orthanc logs the request already


class ApiServer:
    def __init__(self, path: Path, router: Router, log_error: Callable[[str], None],
                 max_body_bytes: int = MAX_BODY_BYTES_DEFAULT) -> None:
        if path.exists() or path.is_symlink():
            path.unlink()
        self._server = _Server(str(path), router, log_error, max_body_bytes)
        os.chmod(path, 0o600)
        self._thread = threading.Thread(target=self._server.serve_forever, name="rtgw-api",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
