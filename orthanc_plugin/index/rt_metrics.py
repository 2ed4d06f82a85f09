"""RT columns of the index, read from a pydicom dataset: ROIs, plan and beams, dose grid. Pure."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from orthanc_plugin.plans.references import references_of


def _float(value: Any) -> float | None:
    try:
        number = None if value in (None, "") else float(value)
    except (TypeError, ValueError):
        return None
    return number if number is not None and math.isfinite(number) else None


def _int(value: Any) -> int | None:
    number = _float(value)
    return None if number is None else int(number)


def structure_set(ds: Dataset) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    contours = {int(item.get("ReferencedROINumber", -1)): len(item.get("ContourSequence", []) or [])
                for item in ds.get("ROIContourSequence", []) or []}
    kinds = {int(item.get("ReferencedROINumber", -1)): str(item.get("RTROIInterpretedType", ""))
             for item in ds.get("RTROIObservationsSequence", []) or []}
    rois: list[dict[str, Any]] = []
    for item in ds.get("StructureSetROISequence", []) or []:
        number = int(item.get("ROINumber", -1))
        rois.append({"ROINumber": number, "ROIName": str(item.get("ROIName", "")),
                     "ROIType": kinds.get(number, ""), "ContourCount": contours.get(number, 0)})
    summary = {
        "StructureSetLabel": str(ds.get("StructureSetLabel", "")),
        "ROICount": len(rois),
        "ROINames": "\\".join(roi["ROIName"] for roi in rois),
    }
    return summary, rois


def plan(ds: Dataset) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    meterset: dict[int, float | None] = {}
    fractions = None
    groups = ds.get("FractionGroupSequence", []) or []
    if groups:
        fractions = _int(groups[0].get("NumberOfFractionsPlanned"))
        for item in groups[0].get("ReferencedBeamSequence", []) or []:
            meterset[int(item.get("ReferencedBeamNumber", -1))] = _float(item.get("BeamMeterset"))
    prescriptions = [_float(item.get("TargetPrescriptionDose"))
                     for item in ds.get("DoseReferenceSequence", []) or []]
    prescribed = [value for value in prescriptions if value is not None]
    beams: list[dict[str, Any]] = []
    for beam in ds.get("BeamSequence", []) or []:
        number = int(beam.get("BeamNumber", -1))
        points = beam.get("ControlPointSequence", []) or []
        first = points[0] if points else Dataset()
        beams.append({
            "BeamNumber": number, "BeamName": str(beam.get("BeamName", "")),
            "BeamType": str(beam.get("BeamType", "")),
            "RadiationType": str(beam.get("RadiationType", "")),
            "Energy": _float(first.get("NominalBeamEnergy")),
            "GantryStart": _float(first.get("GantryAngle")),
            "MU": meterset.get(number),
        })
    units = [beam["MU"] for beam in beams if beam["MU"] is not None]
    summary = {
        "PlanLabel": str(ds.get("RTPlanLabel", "")), "PlanName": str(ds.get("RTPlanName", "")),
        "PlanDate": str(ds.get("RTPlanDate", "")), "PlanIntent": str(ds.get("PlanIntent", "")),
        "Fractions": fractions,
        "PrescriptionGy": max(prescribed) if prescribed else None,
        "BeamCount": len(beams),
        "TotalMU": round(sum(units), 4) if units else None,
    }
    return summary, beams


def dose(ds: Dataset) -> dict[str, Any]:
    offsets = [float(v) for v in ds.get("GridFrameOffsetVector", []) or []]
    spacing = [float(v) for v in ds.get("PixelSpacing", [0, 0])]
    values: dict[str, Any] = {"DoseMinGy": None, "DoseMeanGy": None, "DoseMaxGy": None}
    # A RELATIVE dose has no Gy: its values are never stored (nor filtered) as Gy.
    if "PixelData" in ds and str(ds.get("DoseUnits", "")).upper() != "RELATIVE":
        grid = np.asarray(ds.pixel_array, dtype=np.float64) * float(ds.get("DoseGridScaling", 1.0))
        # A DoseGridScaling that is not a number gives no dose values rather than NaN in the index.
        values = {key: _finite(value) for key, value in (
            ("DoseMinGy", float(grid.min())), ("DoseMeanGy", float(grid.mean())),
            ("DoseMaxGy", float(grid.max())))}
    return {
        "Rows": _int(ds.get("Rows")), "Columns": _int(ds.get("Columns")),
        "Frames": _int(ds.get("NumberOfFrames", 1)),
        "SpacingRow": _finite(spacing[0]) if spacing else None,
        "SpacingCol": _finite(spacing[1]) if len(spacing) > 1 else None,
        "SpacingZ": _finite(abs(offsets[1] - offsets[0])) if len(offsets) > 1 else None,
        "Units": str(ds.get("DoseUnits", "")), "DoseType": str(ds.get("DoseType", "")),
        "Summation": str(ds.get("DoseSummationType", "")),
        **values,
    }


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


REFERENCE_KINDS = {"RTPLAN": "structure-set", "RTSTRUCT": "image", "RTDOSE": "plan"}


def references(ds: Dataset) -> list[tuple[str, str]]:
    """(kind, referenced SOP Instance UID): dose -> plan, plan -> structure set, structure set
    -> images."""
    kind = REFERENCE_KINDS.get(str(ds.get("Modality", "")).upper())
    return [(kind, uid) for uid in references_of(ds)] if kind else []
