"""pynetdicom C-STORE receivers for the tests: count every C-STORE, refuse chosen instances, be slow."""

from __future__ import annotations

import threading
import time
from collections import Counter

from pynetdicom import AE, AllStoragePresentationContexts, evt

from tests.support.orthanc import free_port


class CountingPeer:
    """Counts each C-STORE by SOP Instance UID (so a duplicate shows), optionally slowly."""

    def __init__(self, ae_title: str = "COUNTER", delay_seconds: float = 0.0) -> None:
        self.ae_title = ae_title
        self.port = free_port()
        self.delay_seconds = delay_seconds
        self.refuse: set[str] = set()
        self.stores: Counter[str] = Counter()
        self._lock = threading.Lock()
        ae = AE(ae_title=ae_title)
        ae.supported_contexts = AllStoragePresentationContexts
        ae.maximum_associations = 20
        self.server = ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)]
        )

    def _store(self, event: evt.Event) -> int:
        uid = str(event.request.AffectedSOPInstanceUID)
        if self.delay_seconds:
            time.sleep(self.delay_seconds)
        if uid in self.refuse:
            return 0xA700
        with self._lock:
            self.stores[uid] += 1
        return 0x0000

    def distinct(self) -> int:
        with self._lock:
            return len(self.stores)

    def duplicates(self) -> dict[str, int]:
        with self._lock:
            return {uid: n for uid, n in self.stores.items() if n > 1}

    def close(self) -> None:
        self.server.shutdown()
