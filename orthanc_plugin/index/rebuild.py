"""Rebuild the index from what Orthanc stores, one bounded batch per request.

A large archive is never rebuilt inside one HTTP call: each call indexes at most `limit`
instances and answers `next`, the offset the caller sends back as `after` until `done`.
Scope "all" empties the index on its first batch (after == 0); "missing" and a patient keep
what is there ("missing" skips instances whose SOP Instance UID is already indexed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from orthanc_plugin.api.router import ApiError
from orthanc_plugin.index import entries_store
from orthanc_plugin.index.follower import IndexFollower
from orthanc_plugin.index.store import IndexStore

if TYPE_CHECKING:
    from orthanc_plugin.context import CapabilityContext

DEFAULT_BATCH = 200
MAX_BATCH = 2000
SCOPE_HELP = 'scope: expected "all", "missing" or {"patient": "<PatientID>"}'


@dataclass(frozen=True)
class RebuildScope:
    kind: str            # "all", "missing" or "patient"
    patient_id: str = ""

    def describe(self) -> str:
        return f"patient {self.patient_id}" if self.kind == "patient" else self.kind


def parse_scope(value: Any) -> RebuildScope:
    if value in ("all", "missing"):
        return RebuildScope(value)
    if isinstance(value, dict) and set(value) == {"patient"} and isinstance(value["patient"], str) \
            and value["patient"]:
        return RebuildScope("patient", value["patient"])
    raise ApiError(400, SCOPE_HELP)


def parse_batch(body: dict[str, Any]) -> tuple[int, int]:
    after, limit = body.get("after", 0), body.get("limit", DEFAULT_BATCH)
    if isinstance(after, bool) or not isinstance(after, int) or after < 0:
        raise ApiError(400, "after: expected the whole number `next` of the previous answer")
    if isinstance(limit, bool) or not isinstance(limit, int) or not 0 < limit <= MAX_BATCH:
        raise ApiError(400, f"limit: expected a whole number from 1 to {MAX_BATCH}")
    return after, limit


class IndexRebuilder:
    def __init__(self, ctx: CapabilityContext, store: IndexStore, follower: IndexFollower) -> None:
        self.ctx = ctx
        self.store = store
        self.follower = follower

    def batch(self, scope: RebuildScope, after: int, limit: int) -> dict[str, Any]:
        if scope.kind == "all" and after == 0:
            self.store.clear()
            with self.ctx.db.transaction() as connection:
                entries_store.forget_all(connection)
        page, total = self._page(scope, after, limit)
        counts = {"examined": len(page), "indexed": 0, "already_indexed": 0, "gone": 0, "failed": 0}
        modalities: dict[str, str] = {}
        for instance in page:
            sop = str(instance.get("MainDicomTags", {}).get("SOPInstanceUID", ""))
            if scope.kind == "missing" and sop and self.store.has_image(sop):
                counts["already_indexed"] += 1
                continue
            counts[self._index_one(instance, modalities)] += 1
        done = after + len(page) >= total if total is not None else len(page) < limit
        answer = {"scope": scope.describe(), "after": after, "next": None if done else after + len(page),
                  "done": done, "total": total, **counts}
        self.ctx.recorder.event(
            "index-rebuild", status="done" if done else "batch", patient_id=scope.patient_id,
            detail=", ".join(f"{key} {value}" for key, value in answer.items() if key != "scope")
            + f" ({scope.describe()})")
        return answer

    def _index_one(self, instance: dict[str, Any], modalities: dict[str, str]) -> str:
        instance_id = instance["ID"]
        series_id = str(instance.get("ParentSeries", ""))
        try:
            if series_id not in modalities:
                series = self.ctx.host.get_json(f"/series/{series_id}")
                modalities[series_id] = str(series.get("MainDicomTags", {}).get("Modality", ""))
            sop = self.follower.index_instance(instance_id, modalities[series_id])
        except Exception as error:
            self.ctx.recorder.event(
                "index-failed", status="error", resource_id=instance_id,
                detail=f"rebuild: not indexed: {type(error).__name__}: {error}")
            return "failed"
        if not sop:
            return "gone"
        with self.ctx.db.transaction() as connection:
            entries_store.note_indexed(connection, instance_id, sop)
        return "indexed"

    def _page(self, scope: RebuildScope, after: int, limit: int) -> tuple[list[dict[str, Any]], int | None]:
        host = self.ctx.host
        if scope.kind != "patient":
            page = host.get_json(f"/instances?expand&since={after}&limit={limit}")
            return list(page), None
        # Orthanc's find treats * and ? as wildcards: keep only the exact PatientID.
        patients = host.post_json("/tools/find", {"Level": "Patient", "Expand": True,
                                                  "Query": {"PatientID": scope.patient_id}})
        instances: list[dict[str, Any]] = []
        for patient in patients:
            if patient.get("MainDicomTags", {}).get("PatientID") == scope.patient_id:
                instances.extend(host.get_json(f"/patients/{patient['ID']}/instances"))
        return instances[after:after + limit], len(instances)
