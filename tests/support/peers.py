"""pynetdicom receivers for the tests: count every C-STORE, refuse chosen instances, be slow,
answer C-FIND at IMAGE level for what they hold, go down and come back on the same port."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

from tests.support.orthanc import free_port


class CountingPeer:
    """Counts each C-STORE by SOP Instance UID (so a duplicate shows), optionally slowly."""

    def __init__(self, ae_title: str = "COUNTER", delay_seconds: float = 0.0,
                 answer_find: bool = True) -> None:
        self.ae_title = ae_title
        self.port = free_port()
        self.delay_seconds = delay_seconds
        self.answer_find = answer_find
        self.refuse: set[str] = set()
        # The association is aborted at this instance, once (it is not stored).
        self.abort_once = ""
        self.stores: Counter[str] = Counter()
        # When each store was answered (time.time()), in order: a destination's pace.
        self.stored_at: list[float] = []
        self.series_of: dict[str, tuple[str, str]] = {}
        self.finds = 0
        # Once this many distinct instances are stored, the next C-STORE waits (holding) until
        # `release` is set, then is stored: a sender killed meanwhile never hears the answer.
        self.hold_after = -1
        # The longest a held store waits for `release` (then it is stored anyway): a test whose
        # hold spans a whole slow batch raises it, so the hold ends by its release, not by time.
        self.hold_seconds = 120.0
        self.holding = threading.Event()
        self.release = threading.Event()
        self._lock = threading.Lock()
        self.server: Any = None
        self.start()

    def start(self) -> None:
        ae = AE(ae_title=self.ae_title)
        ae.supported_contexts = AllStoragePresentationContexts
        if self.answer_find:
            ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
        ae.maximum_associations = 20
        handlers = [(evt.EVT_C_STORE, self._store), (evt.EVT_C_FIND, self._find)]
        self.server = ae.start_server(("127.0.0.1", self.port), block=False,
                                      evt_handlers=handlers)

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None

    def _store(self, event: evt.Event) -> int:
        uid = str(event.request.AffectedSOPInstanceUID)
        if self.delay_seconds:
            time.sleep(self.delay_seconds)
        if uid in self.refuse:
            return 0xA700
        if 0 <= self.hold_after <= self.distinct() and not self.release.is_set():
            self.holding.set()
            self.release.wait(self.hold_seconds)
        if uid and uid == self.abort_once:
            self.abort_once = ""
            event.assoc.abort()
            return 0xA700  # never reaches the sender: the association is gone
        ds = event.dataset
        with self._lock:
            self.stores[uid] += 1
            self.stored_at.append(time.time())
            self.series_of[uid] = (str(ds.get("StudyInstanceUID", "")),
                                   str(ds.get("SeriesInstanceUID", "")))
        return 0x0000

    def _find(self, event: evt.Event) -> Iterator[tuple[int, Dataset | None]]:
        query = event.identifier
        with self._lock:
            self.finds += 1
            held = dict(self.series_of)
        wanted = query.get("SOPInstanceUID", "")
        wanted_uids = {str(v) for v in wanted} if isinstance(wanted, list | tuple) or (
            hasattr(wanted, "__iter__") and not isinstance(wanted, str)) else (
            {str(wanted)} if wanted else set(held))
        series = str(query.get("SeriesInstanceUID", "") or "")
        for uid in sorted(wanted_uids):
            if uid not in held or (series and held[uid][1] != series):
                continue
            answer = Dataset()
            answer.QueryRetrieveLevel = "IMAGE"
            answer.StudyInstanceUID, answer.SeriesInstanceUID = held[uid]
            answer.SOPInstanceUID = uid
            yield 0xFF00, answer
        yield 0x0000, None

    def stored(self) -> list[str]:
        with self._lock:
            return list(self.stores.elements())

    def distinct(self) -> int:
        with self._lock:
            return len(self.stores)

    def uids(self) -> set[str]:
        with self._lock:
            return set(self.stores)

    def total(self) -> int:
        with self._lock:
            return sum(self.stores.values())

    def duplicates(self) -> dict[str, int]:
        with self._lock:
            return {uid: n for uid, n in self.stores.items() if n > 1}

    def close(self) -> None:
        self.stop()
