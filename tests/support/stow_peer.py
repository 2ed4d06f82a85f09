"""A DICOMweb receiver for tests: STOW-RS (POST /studies, multipart/related) and QIDO-RS of a
series' instances, counting every instance it stores. It can refuse chosen SOP Instance UIDs
(FailedSOPSequence with a FailureReason) and hold its answer to a request, after storing it, so a
test can kill the sender between the store and the answer."""

from __future__ import annotations

import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import BytesIO
from typing import Any

from pydicom import dcmread

from tests.support.orthanc import free_port

OUT_OF_RESOURCES = 0xA700


class StowPeer:
    def __init__(self) -> None:
        self.port = free_port()
        self.stores: Counter[str] = Counter()
        self.series: dict[tuple[str, str], set[str]] = {}
        self.refuse: set[str] = set()
        self.requests = 0
        self.hold_request = 0          # hold the answer to this request number (1 = the first)
        self.holding = threading.Event()
        self.release = threading.Event()
        self._lock = threading.Lock()
        peer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                return

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with peer._lock:
                    peer.requests += 1
                    number = peer.requests
                    busy = 0 < peer.hold_request < number and not peer.release.is_set()
                if busy:
                    # Busy while it holds an answer: later requests store nothing, so what it
                    # holds at a kill is exactly the requests up to the held one.
                    self._send(503, {})
                    return
                answer = peer._store(self.headers.get("Content-Type", ""), body)
                if number == peer.hold_request:
                    peer.holding.set()
                    peer.release.wait(120)
                self._send(200 if not answer["00081198"]["Value"] else 202, answer)

            def do_GET(self) -> None:
                parts = self.path.split("?")[0].strip("/").split("/")
                if len(parts) == 5 and parts[0] == "studies" and parts[2] == "series":
                    with peer._lock:
                        held = sorted(peer.series.get((parts[1], parts[3]), set()))
                    self._send(200, [{"00080018": {"vr": "UI", "Value": [uid]}} for uid in held])
                    return
                self._send(404, {})

            def _send(self, status: int, document: Any) -> None:
                data = json.dumps(document).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/dicom+json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _store(self, content_type: str, body: bytes) -> dict[str, Any]:
        stored, failed = [], []
        for data in _parts(content_type, body):
            ds = dcmread(BytesIO(data), stop_before_pixels=True)
            uid = str(ds.SOPInstanceUID)
            item = {"00081150": {"vr": "UI", "Value": [str(ds.SOPClassUID)]},
                    "00081155": {"vr": "UI", "Value": [uid]}}
            if uid in self.refuse:
                failed.append({**item, "00081197": {"vr": "US", "Value": [OUT_OF_RESOURCES]}})
                continue
            with self._lock:
                self.stores[uid] += 1
                key = (str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID))
                self.series.setdefault(key, set()).add(uid)
            stored.append(item)
        return {"00081199": {"vr": "SQ", "Value": stored},
                "00081198": {"vr": "SQ", "Value": failed}}

    def total(self) -> int:
        with self._lock:
            return sum(self.stores.values())

    def distinct(self) -> int:
        with self._lock:
            return len(self.stores)

    def duplicates(self) -> dict[str, int]:
        with self._lock:
            return {uid: count for uid, count in self.stores.items() if count > 1}

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def _parts(content_type: str, body: bytes) -> list[bytes]:
    """The bodies of a multipart/related request, split on its boundary as RFC 2046 writes it."""
    boundary = content_type.split("boundary=")[1].split(";")[0].strip().strip('"').encode()
    parts = []
    for chunk in body.split(b"--" + boundary)[1:]:
        if chunk.startswith(b"--"):
            break
        _, _, content = chunk.partition(b"\r\n\r\n")
        parts.append(content[:-2] if content.endswith(b"\r\n") else content)
    return parts
