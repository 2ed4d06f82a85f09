"""Keeps the index in step with what Orthanc stores: an intake hook (Intake.when_quiet: it
waits while instances are arriving and catches up right after).

Instances go in once described (in the order received); deleted ones (the intake marks them
'gone' from Orthanc's change log) come out. The cursor lives in the ctx database.
"""

from __future__ import annotations

import hashlib
from io import BytesIO
from typing import TYPE_CHECKING

from pydicom import dcmread

from orthanc_plugin.index import entries_store
from orthanc_plugin.index.rt_metrics import REFERENCE_KINDS
from orthanc_plugin.index.store import IndexStore
from orthanc_plugin.ports import HostError

if TYPE_CHECKING:
    from orthanc_plugin.context import CapabilityContext

CURSOR_KEY = "index_cursor"
# Small batches: the follower runs in the intake thread and must hand it back quickly when
# instances start arriving again.
BATCH = 20
MAX_READ_FAILURES = 3


class IndexFollower:
    def __init__(self, ctx: CapabilityContext, store: IndexStore) -> None:
        self.ctx = ctx
        self.db = ctx.db
        self.store = store
        self._failures: dict[str, int] = {}

    def step(self) -> bool:
        busy = self._add_new()
        self._remove_gone()
        return busy

    def _add_new(self) -> bool:
        cursor = int(self.db.get_meta(CURSOR_KEY) or 0)
        rows = entries_store.received_after(self.db, cursor, BATCH)
        last = cursor
        for row in rows:
            if row.state == "new":
                break
            if self.ctx.gate.arriving():
                # A modality started sending: hand the intake thread back at once (reception.py);
                # Intake.when_quiet calls again once it is quiet.
                break
            if row.state == "ready":
                try:
                    sop = self.index_instance(row.instance_id, row.modality or "")
                except Exception as error:
                    failures = self._failures.get(row.instance_id, 0) + 1
                    self._failures[row.instance_id] = failures
                    if failures < MAX_READ_FAILURES:
                        break
                    self._failures.pop(row.instance_id, None)
                    self.ctx.recorder.event(
                        "index-failed", status="error", resource_id=row.instance_id,
                        patient_id=row.patient_id or "", study_uid=row.study_uid or "",
                        detail=f"not indexed: {type(error).__name__}: {error}")
                    sop = None
                if sop:
                    with self.db.transaction() as connection:
                        entries_store.note_indexed(connection, row.instance_id, sop)
            last = row.seq
        if last != cursor:
            self.db.set_meta(CURSOR_KEY, str(last))
        return len(rows) == BATCH and last == rows[-1].seq

    def index_instance(self, instance_id: str, modality: str) -> str | None:
        try:
            data = self.ctx.host.get_bytes(f"/instances/{instance_id}/file")
        except HostError as error:
            if error.missing:
                return None
            raise
        is_rt = modality.upper() in REFERENCE_KINDS
        # Only a dose needs its pixels (min/mean/max); images are indexed from their header.
        ds = dcmread(BytesIO(data), stop_before_pixels=modality.upper() != "RTDOSE", force=True)
        self.store.put(ds, instance_id, hashlib.sha256(data).hexdigest() if is_rt else None)
        return str(ds.get("SOPInstanceUID", "")) or None

    def _remove_gone(self) -> None:
        for entry in entries_store.gone_entries(self.db):
            self.store.remove(entry.sop_instance_uid)
            with self.db.transaction() as connection:
                entries_store.forget(connection, [entry.instance_id])
