"""Orthanc labels (Orthanc >= 1.12) on the studies the gateway acted on, so Orthanc Explorer 2
users can filter by what happened: `rtgw-sent-<TARGET>`, `rtgw-parked`, `rtgw-deid-copy`,
`rtgw-held`,
`rtgw-awaiting-approval`.

Feature-detected, never assumed: labels are used only when Orthanc's /system says `HasLabels`
(1.12 with a database back-end that supports them). On 1.10 nothing is asked and nothing changes.
A label that cannot be set is logged once; it never fails the work it describes.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Callable

from orthanc_plugin.ports import Host, HostError

PREFIX = "rtgw-"
SENT = PREFIX + "sent-"
PARKED = PREFIX + "parked"
DEID_COPY = PREFIX + "deid-copy"
HELD = PREFIX + "held"
AWAITING_APPROVAL = PREFIX + "awaiting-approval"
# Orthanc accepts labels of letters, digits, "_" and "-" (at most 64 characters).
_NOT_ALLOWED = re.compile(r"[^A-Za-z0-9_-]")
MAX_LABEL = 64


def label_for_target(target: str) -> str:
    return (SENT + _NOT_ALLOWED.sub("_", target))[:MAX_LABEL]


def orthanc_study_id(patient_id: str, study_uid: str) -> str:
    """Orthanc's study identifier: SHA-1 of PatientID|StudyInstanceUID in five groups of eight."""
    digest = hashlib.sha1(f"{patient_id}|{study_uid}".encode(), usedforsecurity=False).hexdigest()
    return "-".join(digest[i : i + 8] for i in range(0, 40, 8))


class StudyLabels:
    def __init__(self, host: Host, log: Callable[[str], None]) -> None:
        self.host = host
        self.log = log
        self._lock = threading.Lock()
        self._supported: bool | None = None
        self._done: set[tuple[str, str]] = set()
        self._warned = False

    @property
    def supported(self) -> bool:
        with self._lock:
            if self._supported is None:
                try:
                    system = self.host.get_json("/system")
                except HostError:
                    return False  # asked again next time
                self._supported = bool(isinstance(system, dict) and system.get("HasLabels"))
            return self._supported

    def add(self, study_id: str, label: str) -> bool:
        return self._change("PUT", study_id, label)

    def remove(self, study_id: str, label: str) -> bool:
        return self._change("DELETE", study_id, label)

    def _change(self, method: str, study_id: str, label: str) -> bool:
        if not study_id or not self.supported:
            return False
        key = (study_id, label)
        with self._lock:
            if method == "PUT" and key in self._done:
                return True
        try:
            if method == "PUT":
                self.host.put(f"/studies/{study_id}/labels/{label}")
            else:
                self.host.delete(f"/studies/{study_id}/labels/{label}")
        except HostError as error:
            if not error.missing and not self._warned:
                self._warned = True
                self.log(f"labels: cannot {method} {label} on study {study_id}: {error} "
                         "(further label failures are not logged)")
            return False
        with self._lock:
            if method == "PUT":
                self._done.add(key)
            else:
                self._done.discard(key)
        return True
