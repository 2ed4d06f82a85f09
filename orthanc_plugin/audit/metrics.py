"""Counters mirrored to Orthanc's Prometheus endpoint (/tools/metrics-prometheus)."""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Callable

_UNSAFE = re.compile(r"[^a-zA-Z0-9_:]")


def metric_name(name: str) -> str:
    return _UNSAFE.sub("_", name)


class Metrics:
    def __init__(self, publish: Callable[[str, float], None]) -> None:
        self._publish = publish
        self._values: dict[str, float] = {}
        self._lock = threading.Lock()

    def count(self, name: str, amount: float = 1) -> None:
        key = metric_name(name)
        with self._lock:
            self._values[key] = self._values.get(key, 0) + amount
            value = self._values[key]
        self._safe_publish(key, value)

    def gauge(self, name: str, value: float) -> None:
        key = metric_name(name)
        with self._lock:
            self._values[key] = value
        self._safe_publish(key, value)

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            return dict(self._values)

    def _safe_publish(self, key: str, value: float) -> None:
        with contextlib.suppress(Exception):
            self._publish(key, value)
