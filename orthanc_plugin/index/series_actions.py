"""Send, copy to a folder, or delete the selected series; each action leaves audit events.

Send queues durable "forward" jobs (the forwarding executor sends them); copy writes
<CopyRoot>/<folder>/<PatientID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm with safe names;
delete removes the series from Orthanc and its rows from the index.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orthanc_plugin.api.router import ApiError
from orthanc_plugin.forwarding.rule import JOB_ACTION
from orthanc_plugin.index import entries_store
from orthanc_plugin.index.safe_names import inside, safe_name
from orthanc_plugin.index.store import IndexStore
from orthanc_plugin.jobs.queue import JobSpec
from orthanc_plugin.ports import HostError

if TYPE_CHECKING:
    from orthanc_plugin.context import CapabilityContext

TRIGGER = "manual"


@dataclass(frozen=True)
class StoredSeries:
    uid: str
    orthanc_id: str
    patient_id: str
    study_uid: str
    instances: list[dict[str, Any]]    # Orthanc's expanded instances, in instance-number order


class SeriesActions:
    def __init__(self, ctx: CapabilityContext, store: IndexStore, copy_root: Path) -> None:
        self.ctx = ctx
        self.store = store
        self.copy_root = copy_root

    def locate(self, uids: Sequence[str]) -> tuple[list[StoredSeries], list[str]]:
        """The series Orthanc stores, and the UIDs it does not."""
        host = self.ctx.host
        found, missing = [], []
        for uid in uids:
            matches = [item for item in host.post_json(
                "/tools/find", {"Level": "Series", "Query": {"SeriesInstanceUID": uid}})]
            if not matches:
                missing.append(uid)
                continue
            orthanc_id = str(matches[0])
            study = host.get_json(f"/studies/{host.get_json(f'/series/{orthanc_id}')['ParentStudy']}")
            instances = host.get_json(f"/series/{orthanc_id}/instances")
            instances.sort(key=lambda item: (_number(item), item["ID"]))
            found.append(StoredSeries(
                uid, orthanc_id, str(study.get("PatientMainDicomTags", {}).get("PatientID", "")),
                str(study.get("MainDicomTags", {}).get("StudyInstanceUID", "")), instances))
        return found, missing

    def send(self, series: list[StoredSeries], targets: Sequence[str]) -> list[dict[str, Any]]:
        known = self.ctx.known_targets()
        unknown = [target for target in targets if target not in known]
        if unknown:
            raise ApiError(400, f"targets: unknown {', '.join(unknown)} "
                                f"(known: {', '.join(sorted(known)) or 'none'})")
        # Each request is its own "rule": pressing Send again sends again.
        request = f"series-send {uuid.uuid4().hex[:12]}"
        answer = []
        with self.ctx.db.transaction() as connection:
            for item in series:
                for target in targets:
                    spec = JobSpec(rule=request, action=JOB_ACTION, trigger=TRIGGER, level="series",
                                   resource_id=item.orthanc_id, target=target,
                                   patient_id=item.patient_id, study_uid=item.study_uid)
                    job_id, count = self.ctx.queue.enqueue(
                        connection, spec, [instance["ID"] for instance in item.instances])
                    self.ctx.recorder.event(
                        "index-series-send", status="queued" if job_id else "nothing-to-send",
                        rule=request, target=target, job_id=job_id, resource_id=item.uid,
                        patient_id=item.patient_id, study_uid=item.study_uid,
                        detail=f"{count} instance(s)", connection=connection)
                    answer.append({"id": job_id, "series": item.uid, "target": target,
                                   "instances": count})
        self.ctx.wake_workers()
        return answer

    def copy(self, series: list[StoredSeries], folder: str) -> list[dict[str, Any]]:
        answer = []
        for item in series:
            destination = inside(self.copy_root, folder, item.patient_id, item.uid)
            destination.mkdir(parents=True, exist_ok=True)
            written, size = 0, 0
            for instance in item.instances:
                sop = str(instance.get("MainDicomTags", {}).get("SOPInstanceUID") or instance["ID"])
                try:
                    data = self.ctx.host.get_bytes(f"/instances/{instance['ID']}/file")
                except HostError as error:
                    if error.missing:
                        continue   # deleted meanwhile
                    raise
                # A UID ends in digits: the suffix is added, not substituted for its last part.
                path = destination / f"{safe_name(sop)}.dcm"
                partial = path.with_name(path.name + ".partial")
                partial.write_bytes(data)
                partial.replace(path)
                written += 1
                size += len(data)
            self.ctx.recorder.event(
                "index-series-copy", status="copied", resource_id=item.uid,
                patient_id=item.patient_id, study_uid=item.study_uid,
                detail=f"{written} file(s), {size} bytes to {destination}")
            answer.append({"series": item.uid, "folder": str(destination), "files": written,
                           "bytes": size})
        return answer

    def delete(self, series: list[StoredSeries]) -> list[dict[str, Any]]:
        answer = []
        for item in series:
            try:
                self.ctx.host.delete(f"/series/{item.orthanc_id}")
            except HostError as error:
                if not error.missing:
                    raise
            sops = [str(instance.get("MainDicomTags", {}).get("SOPInstanceUID", ""))
                    for instance in item.instances]
            for sop in filter(None, sops):
                self.store.remove(sop)
            ids = [instance["ID"] for instance in item.instances]
            with self.ctx.db.transaction() as connection:
                entries_store.forget(connection, ids)
            self.ctx.recorder.event(
                "index-series-delete", status="deleted", resource_id=item.uid,
                patient_id=item.patient_id, study_uid=item.study_uid,
                detail=f"{len(ids)} instance(s) deleted from Orthanc and the index")
            answer.append({"series": item.uid, "instances": len(ids)})
        return answer


def _number(instance: dict[str, Any]) -> int:
    try:
        return int(instance.get("MainDicomTags", {}).get("InstanceNumber", 0))
    except (TypeError, ValueError):
        return 0
