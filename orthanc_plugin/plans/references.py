"""Which SOP Instance UIDs an RT object names, read from a pydicom dataset. Pure."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydicom.dataset import Dataset

from orthanc_plugin.plans.model import RtObject

# Top-level attributes that hold the references: a parser can stop at these and skip the rest.
REFERENCE_KEYWORDS = (
    "SOPInstanceUID", "Modality", "RTPlanLabel",
    "ReferencedStructureSetSequence", "ReferencedFrameOfReferenceSequence",
    "ROIContourSequence", "ReferencedRTPlanSequence", "DoseSummationType",
    "FractionGroupSequence",
)


def _items(ds: Any, keyword: str) -> Iterable[Dataset]:
    value = getattr(ds, keyword, None) if ds is not None else None
    return value or ()


def _uids(items: Iterable[Dataset]) -> list[str]:
    return [str(item.ReferencedSOPInstanceUID) for item in items
            if getattr(item, "ReferencedSOPInstanceUID", None)]


def structure_set_images(ds: Dataset) -> list[str]:
    """Images named by the frame-of-reference tree and by each contour, first-seen order.

    Some planning systems fill only one of the two places; the union is what the structure set
    was drawn on.
    """
    uids: list[str] = []
    for frame in _items(ds, "ReferencedFrameOfReferenceSequence"):
        for study in _items(frame, "RTReferencedStudySequence"):
            for series in _items(study, "RTReferencedSeriesSequence"):
                uids += _uids(_items(series, "ContourImageSequence"))
    for roi in _items(ds, "ROIContourSequence"):
        for contour in _items(roi, "ContourSequence"):
            uids += _uids(_items(contour, "ContourImageSequence"))
    return list(dict.fromkeys(uids))


def references_of(ds: Dataset) -> tuple[str, ...]:
    modality = str(getattr(ds, "Modality", "")).upper()
    if modality == "RTPLAN":
        return tuple(_uids(_items(ds, "ReferencedStructureSetSequence")))
    if modality == "RTSTRUCT":
        return tuple(structure_set_images(ds))
    if modality == "RTDOSE":
        return tuple(_uids(_items(ds, "ReferencedRTPlanSequence")))
    return ()


def rt_object(ds: Dataset) -> RtObject:
    return RtObject(
        sop_instance_uid=str(ds.SOPInstanceUID),
        modality=str(getattr(ds, "Modality", "")).upper(),
        references=references_of(ds),
        plan_label=str(getattr(ds, "RTPlanLabel", "") or ""),
        dose_summation=str(getattr(ds, "DoseSummationType", "") or ""),
        # Distinct beams over the fraction groups (a boost group reuses the main group's).
        beam_count=len({str(beam.get("ReferencedBeamNumber", ""))
                        for group in _items(ds, "FractionGroupSequence")
                        for beam in _items(group, "ReferencedBeamSequence")}),
    )
