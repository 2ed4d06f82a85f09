"""Finds in Orthanc the image series an RTSTRUCT was drawn on, and what of it is still missing."""

from __future__ import annotations

from dataclasses import dataclass, field
from io import BytesIO

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from orthanc_plugin.contours.model import (
    DEFAULT_LIMITS,
    ContourError,
    ContourLimits,
    StructureSet,
    parse_structure_set,
)
from orthanc_plugin.ports import Host, HostError

IMAGE_MODALITIES = ("CT", "MR", "PT")
FRAME_OF_REFERENCE_TAG = "0020-0052"


@dataclass
class ImageSearch:
    """The Orthanc instances of the referenced series, and the referenced images not yet there."""

    series_id: str | None
    instance_ids: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    waiting_for: str = ""   # why the images are not complete yet, for the audit

    @property
    def complete(self) -> bool:
        return self.series_id is not None and not self.waiting_for


def read_rtstruct(host: Host, instance_id: str, limits: ContourLimits = DEFAULT_LIMITS
                  ) -> tuple[Dataset, StructureSet]:
    dataset = read_instance(host, instance_id)
    return dataset, parse_structure_set(dataset, limits)


def read_instance(host: Host, instance_id: str, *, pixels: bool = True) -> Dataset:
    data = host.get_bytes(f"/instances/{instance_id}/file")
    try:
        return dcmread(BytesIO(data), stop_before_pixels=not pixels)
    except (InvalidDicomError, EOFError, ValueError, KeyError) as error:
        raise ContourError(f"instance {instance_id} cannot be read as DICOM: {error}") from error


def find_images(host: Host, structure_set: StructureSet, rtstruct_id: str) -> ImageSearch:
    series_id = _referenced_series(host, structure_set) or _series_by_frame(
        host, structure_set, rtstruct_id
    )
    if series_id is None:
        wanted = ", ".join(structure_set.referenced_series_uids) or (
            f"an image series in frame of reference {structure_set.frame_of_reference_uid}"
        )
        return ImageSearch(None, waiting_for=f"series {wanted} is not in Orthanc")
    series = host.get_json(f"/series/{series_id}")
    instances = host.get_json(f"/series/{series_id}/instances")
    present = {item["MainDicomTags"].get("SOPInstanceUID", ""): item["ID"] for item in instances}
    search = ImageSearch(series_id, instance_ids=list(present.values()))
    if structure_set.referenced_image_uids:
        search.missing = [uid for uid in structure_set.referenced_image_uids if uid not in present]
        if search.missing:
            search.waiting_for = (
                f"{len(search.missing)} of {len(structure_set.referenced_image_uids)} referenced "
                f"image(s) of series {series['MainDicomTags'].get('SeriesInstanceUID', '')} are "
                f"not in Orthanc, e.g. {search.missing[0]}"
            )
    elif not series.get("IsStable", True):
        # Nothing says how many images to expect: wait until Orthanc has the series at rest.
        search.waiting_for = "the image series is still arriving (not stable yet)"
    return search


def _referenced_series(host: Host, structure_set: StructureSet) -> str | None:
    for uid in structure_set.referenced_series_uids:
        found = host.post_json(
            "/tools/find", {"Level": "Series", "Query": {"SeriesInstanceUID": uid}}
        )
        if found:
            return str(found[0])
    return None


def _series_by_frame(host: Host, structure_set: StructureSet, rtstruct_id: str) -> str | None:
    """An RTSTRUCT that names no series: the study's image series in its frame of reference."""
    if structure_set.referenced_series_uids or not structure_set.frame_of_reference_uid:
        return None
    try:
        study = host.get_json(f"/instances/{rtstruct_id}/study")
        candidates = host.get_json(f"/studies/{study['ID']}/series")
    except HostError:
        return None
    for series in candidates:
        if series.get("MainDicomTags", {}).get("Modality") not in IMAGE_MODALITIES:
            continue
        first = (series.get("Instances") or [None])[0]
        if first is None:
            continue
        try:
            frame = host.get_text(f"/instances/{first}/content/{FRAME_OF_REFERENCE_TAG}")
        except HostError:
            continue
        if frame.rstrip("\x00 ") == structure_set.frame_of_reference_uid:
            return str(series["ID"])
    return None
