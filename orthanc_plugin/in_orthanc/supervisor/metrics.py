"""Copies the lead worker's counters into Orthanc's Prometheus registry every few seconds.

The Python plugin 4.0 has no refresh-metrics callback, so a plugin thread does it. It reaches the
worker over the proxy's socket (no GIL held while waiting) and hands each value to `publish`,
which is orthanc.SetMetricsValue: that takes only the metrics registry's own short lock, which the
store path never holds while it waits for Python, so it cannot join the GIL/store-lock deadlock.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from orthanc_plugin.in_orthanc.supervisor.proxy import ApiProxy

PERIOD_SECONDS = 2.0


class MetricsCopier:
    def __init__(self, proxy: ApiProxy, publish: Callable[[str, float], None]) -> None:
        self.proxy = proxy
        self.publish = publish
        self._stopping = threading.Event()

    def start(self) -> None:
        threading.Thread(target=self._run, name="rtgw-metrics", daemon=True).start()

    def stop(self) -> None:
        self._stopping.set()

    def _run(self) -> None:
        while not self._stopping.wait(PERIOD_SECONDS):
            try:
                values = self.proxy.get_json("/rt-gateway/internal/metrics")
            except (OSError, ValueError):
                continue
            if isinstance(values, dict):
                for name, value in values.items():
                    self.publish(str(name), float(value))
