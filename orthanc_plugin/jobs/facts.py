"""Builds rule facts from the received table, reading extra DICOM tags from Orthanc only on demand."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

from pydicom.datadict import tag_for_keyword

from orthanc_plugin.jobs.intake_store import Received
from orthanc_plugin.ports import Host, HostError
from orthanc_plugin.rules import InstanceFacts

SOURCE_BY_ORIGIN = {
    "DicomProtocol": "DICOM",
    "RestApi": "REST",
    "Plugins": "GATEWAY",
    "Lua": "REST",
}


class LazyTags(Mapping[str, str]):
    """A tag mapping that asks Orthanc for one tag when a rule names it, and remembers it.

    Study- and series-level main tags come from Orthanc's index without reading the file.
    """

    def __init__(self, host: Host, instance_id: str, indexed: Mapping[str, str]) -> None:
        self._host = host
        self._instance_id = instance_id
        self._values: dict[str, str | None] = dict(indexed)

    def __getitem__(self, keyword: str) -> str:
        if keyword not in self._values:
            self._values[keyword] = self._fetch(keyword)
        value = self._values[keyword]
        if value is None:
            raise KeyError(keyword)
        return value

    def _fetch(self, keyword: str) -> str | None:
        tag = tag_for_keyword(keyword)
        if tag is None:
            return None
        group, element = tag >> 16, tag & 0xFFFF
        try:
            text = self._host.get_text(
                f"/instances/{self._instance_id}/content/{group:04x}-{element:04x}"
            )
        except HostError:
            return None
        return text.rstrip("\x00 ").strip()

    def __iter__(self) -> Iterator[str]:
        # Listing every tag would read the whole file: rules only ask for what they name.
        return iter(k for k, v in self._values.items() if v is not None)

    def __len__(self) -> int:
        return sum(1 for v in self._values.values() if v is not None)


class FactsBuilder:
    def __init__(self, host: Host) -> None:
        self.host = host
        self._study_tags: dict[str, dict[str, str]] = {}

    def study_tags(self, study_id: str) -> dict[str, str]:
        cached = self._study_tags.get(study_id)
        if cached is not None:
            return cached
        tags: dict[str, str] = {}
        try:
            study = self.host.get_json(f"/studies/{study_id}")
            tags.update(study.get("PatientMainDicomTags", {}))
            tags.update(study.get("MainDicomTags", {}))
        except HostError:
            pass
        if len(self._study_tags) > 1000:
            self._study_tags.clear()
        self._study_tags[study_id] = tags
        return tags

    def forget_study(self, study_id: str) -> None:
        self._study_tags.pop(study_id, None)

    def build(
        self, rows: Sequence[Received], plan_labels: tuple[str, ...]
    ) -> list[InstanceFacts]:
        """The facts of described received rows (the columns they read are named: Received)."""
        facts = []
        for row in rows:
            indexed = dict(self.study_tags(row.study_id or ""))
            indexed.update(
                {
                    "Modality": row.modality or "",
                    "SOPClassUID": row.sop_class_uid or "",
                    "SeriesInstanceUID": row.series_uid or "",
                    "SOPInstanceUID": row.sop_instance_uid or "",
                }
            )
            if row.plan_label:
                indexed["RTPlanLabel"] = row.plan_label
            facts.append(
                InstanceFacts(
                    instance_id=row.instance_id,
                    calling_aet=row.calling_aet or "",
                    called_aet=row.called_aet or "",
                    remote_ip=row.remote_ip or "",
                    source=row.source or "DICOM",
                    modality=row.modality or "",
                    sop_class_uid=row.sop_class_uid or "",
                    study_plan_labels=plan_labels,
                    tags=LazyTags(self.host, row.instance_id, indexed),
                )
            )
        return facts
