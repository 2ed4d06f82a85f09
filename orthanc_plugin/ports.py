"""What the gateway needs from Orthanc, as a protocol, so everything but host.py runs without it."""

from __future__ import annotations

from typing import Any, Protocol


class HostError(Exception):
    """A call into Orthanc failed; `missing` is true when the resource does not exist,
    `unreachable` when Orthanc did not answer at all (so the same call may work later)."""

    def __init__(self, message: str, *, missing: bool = False, unreachable: bool = False) -> None:
        super().__init__(message)
        self.missing = missing
        self.unreachable = unreachable


class Host(Protocol):
    def get_json(self, uri: str) -> Any: ...

    def get_text(self, uri: str) -> str: ...

    def post_json(self, uri: str, body: Any) -> Any: ...

    def get_bytes(self, uri: str) -> bytes: ...

    def post_bytes(self, uri: str, data: bytes) -> Any: ...

    def post_for_bytes(self, uri: str, body: Any) -> bytes:
        """A JSON request whose answer is a file (e.g. /instances/{id}/modify)."""
        ...

    def delete(self, uri: str) -> None: ...

    def put(self, uri: str, data: bytes = b"") -> None: ...

    def set_metric(self, name: str, value: float) -> None: ...

    def log_info(self, message: str) -> None: ...

    def log_warning(self, message: str) -> None: ...

    def log_error(self, message: str) -> None: ...
