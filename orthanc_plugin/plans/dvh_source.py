"""From DICOM objects to DVH inputs: contours per ROI, the dose grid, the prescription. Pure."""

from __future__ import annotations

from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from orthanc_plugin.plans.dvh import Contour, DoseGrid, dvh


class DvhInputError(ValueError):
    """The objects cannot give a DVH (say why), e.g. an oblique dose grid."""


def dose_grid(ds: Dataset) -> DoseGrid:
    orientation = [float(v) for v in ds.get("ImageOrientationPatient", [1, 0, 0, 0, 1, 0])]
    if not np.allclose(orientation, [1, 0, 0, 0, 1, 0], atol=1e-4):
        raise DvhInputError(f"dose grid orientation {orientation} is not axial (1,0,0,0,1,0)")
    x0, y0, z0 = (float(v) for v in ds.ImagePositionPatient)
    row_spacing, column_spacing = (float(v) for v in ds.PixelSpacing)
    dose = np.asarray(ds.pixel_array, dtype=np.float64) * float(ds.get("DoseGridScaling", 1.0))
    if dose.ndim == 2:
        dose = dose[None]
    offsets = np.asarray([float(v) for v in ds.get("GridFrameOffsetVector", [0.0])])
    zs = z0 + offsets
    order = np.argsort(zs)
    return DoseGrid(
        xs=x0 + np.arange(dose.shape[2]) * column_spacing,
        ys=y0 + np.arange(dose.shape[1]) * row_spacing,
        zs=zs[order], dose=dose[order],
    )


def roi_contours(ds: Dataset) -> dict[str, list[Contour]]:
    names = {int(item.ROINumber): str(item.get("ROIName", "")) for item in
             ds.get("StructureSetROISequence", []) or []}
    contours: dict[str, list[Contour]] = {}
    for roi in ds.get("ROIContourSequence", []) or []:
        name = names.get(int(roi.get("ReferencedROINumber", -1)), "")
        planes = contours.setdefault(name, [])
        for item in roi.get("ContourSequence", []) or []:
            if str(item.get("ContourGeometricType", "CLOSED_PLANAR")) != "CLOSED_PLANAR":
                continue
            points = np.asarray([float(v) for v in item.ContourData]).reshape(-1, 3)
            planes.append(Contour(float(points[0, 2]), points[:, :2]))
    return contours


def prescription(plan: Dataset | None) -> float | None:
    if plan is None:
        return None
    doses = [float(item.TargetPrescriptionDose) for item in plan.get("DoseReferenceSequence", []) or []
             if item.get("TargetPrescriptionDose") not in (None, "")]
    return max(doses) if doses else None


def planning_system_dvhs(dose: Dataset, rtstruct: Dataset) -> dict[str, dict[str, Any]]:
    """The DVHs the planning system stored in the RTDOSE (DVHSequence), by ROI name."""
    names = {int(item.ROINumber): str(item.get("ROIName", "")) for item in
             rtstruct.get("StructureSetROISequence", []) or []}
    found: dict[str, dict[str, Any]] = {}
    for item in dose.get("DVHSequence", []) or []:
        refs = item.get("DVHReferencedROISequence", []) or []
        if not refs:
            continue
        name = names.get(int(refs[0].ReferencedROINumber), f"ROI {refs[0].ReferencedROINumber}")

        found[name] = {"Dmin": _number(item, "DVHMinimumDose"),
                       "Dmean": _number(item, "DVHMeanDose"),
                       "Dmax": _number(item, "DVHMaximumDose"), "type": str(item.get("DVHType", "")),
                       "dose_units": str(item.get("DoseUnits", "")),
                       **planning_system_curve(item)}
    return found


def planning_system_curve(item: Dataset) -> dict[str, list[float]]:
    """The planning system's DVHData as a cumulative curve in Gy and % of volume, for plotting.

    DVHData holds (bin width, volume) pairs; a differential DVH is summed from the top dose down.
    """
    raw = [float(value) for value in (item.get("DVHData") or [])]
    if len(raw) < 2:
        return {}
    widths, volumes = np.array(raw[0::2]), np.array(raw[1::2])
    scale = float(item.get("DVHDoseScaling", 1.0) or 1.0)
    to_gy = 0.01 if str(item.get("DoseUnits", "GY")).upper() == "CGY" else 1.0
    edges = np.concatenate([[0.0], np.cumsum(widths)[:-1]]) * scale * to_gy
    if str(item.get("DVHType", "CUMULATIVE")).upper() == "DIFFERENTIAL":
        volumes = np.cumsum(volumes[::-1])[::-1]
    total = float(volumes[0]) if volumes[0] > 0 else float(volumes.max() or 1.0)
    return {"dose_gy": [round(float(d), 4) for d in edges],
            "volume_pct": [round(float(v) / total * 100.0, 3) for v in volumes]}


def _number(item: Dataset, keyword: str) -> float | None:
    raw = item.get(keyword)
    return None if raw in (None, "") else float(raw)


def bundle_dvhs(rtstruct: Dataset, rtdose: Dataset, plan: Dataset | None,
                supersampling: int = 4) -> dict[str, Any]:
    grid = dose_grid(rtdose)
    rx = prescription(plan)
    computed = []
    for name, contours in roi_contours(rtstruct).items():
        result = dvh(contours, grid, rx, supersampling=supersampling)
        if result is not None:
            computed.append({"roi": name, **result.as_json()})
    return {
        "prescription_gy": rx,
        "method": f"slabs between contour planes, in-plane supersampling of the dose grid up to "
                  f"{supersampling}x (per structure, see 'supersampling'), even-odd rule for holes, "
                  "trilinear dose interpolation",
        "computed": computed,
        "planning_system": planning_system_dvhs(rtdose, rtstruct),
    }
