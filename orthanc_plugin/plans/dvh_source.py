"""From DICOM objects to DVH inputs: contours per ROI, the dose grid, the prescription. Pure."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from orthanc_plugin.plans.dvh import (
    DEFAULT_END_CAPS,
    DEFAULT_INNER_CONTOURS,
    DEFAULT_INTERPOLATION,
    Contour,
    DoseGrid,
    dvh,
)


class DvhInputError(ValueError):
    """The objects cannot give a DVH (say why), e.g. an oblique dose grid."""


def dose_grid(ds: Dataset) -> DoseGrid:
    orientation = [float(v) for v in ds.get("ImageOrientationPatient", [1, 0, 0, 0, 1, 0])]
    if not np.allclose(orientation, [1, 0, 0, 0, 1, 0], atol=1e-4):
        raise DvhInputError(f"dose grid orientation {orientation} is not axial (1,0,0,0,1,0)")
    x0, y0, z0 = (float(v) for v in ds.ImagePositionPatient)
    row_spacing, column_spacing = (float(v) for v in ds.PixelSpacing)
    scaling = float(ds.get("DoseGridScaling", 1.0))
    if not all(math.isfinite(v) for v in (x0, y0, z0)):
        raise DvhInputError(f"dose grid ImagePositionPatient {[x0, y0, z0]} is not finite")
    if not all(math.isfinite(v) and v > 0 for v in (row_spacing, column_spacing)):
        raise DvhInputError(f"dose grid PixelSpacing {[row_spacing, column_spacing]}: expected "
                            "two positive numbers")
    if not (math.isfinite(scaling) and scaling > 0):
        raise DvhInputError(f"DoseGridScaling {scaling:g}: expected a positive number")
    # float32: 24 bits of mantissa are 6e-8 of any dose (4 uGy at 70 Gy), and a total-body grid
    # of 16 million voxels is 65 MB instead of 130 (converted in place: no second copy at once).
    dose = np.array(ds.pixel_array, dtype=np.float32)
    dose *= np.float32(scaling)
    if dose.ndim == 2:
        dose = dose[None]
    offsets = np.asarray([float(v) for v in ds.get("GridFrameOffsetVector", [0.0])])
    if len(offsets) != len(dose):
        raise DvhInputError(f"GridFrameOffsetVector has {len(offsets)} offsets for "
                            f"{len(dose)} dose frames")
    if not np.isfinite(offsets).all() or len(np.unique(offsets)) != len(offsets):
        raise DvhInputError("GridFrameOffsetVector: expected distinct finite offsets")
    zs = z0 + offsets
    order = np.argsort(zs)
    if (order != np.arange(len(order))).any():   # reordering copies: only when needed
        zs, dose = zs[order], dose[order]
    return DoseGrid(
        xs=x0 + np.arange(dose.shape[2]) * column_spacing,
        ys=y0 + np.arange(dose.shape[1]) * row_spacing,
        zs=zs, dose=dose,
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


def roi_colours(ds: Dataset) -> dict[str, list[int]]:
    """Each structure's display colour as the planning system drew it (ROIDisplayColor, R\\G\\B
    0-255), so the DVH's curves match the structure set a physicist knows; none when absent or
    not three numbers in range."""
    names = {int(item.ROINumber): str(item.get("ROIName", "")) for item in
             ds.get("StructureSetROISequence", []) or []}
    colours: dict[str, list[int]] = {}
    for roi in ds.get("ROIContourSequence", []) or []:
        name = names.get(int(roi.get("ReferencedROINumber", -1)), "")
        try:
            rgb = [int(value) for value in roi.get("ROIDisplayColor", []) or []]
        except (TypeError, ValueError):
            continue
        if len(rgb) == 3 and all(0 <= value <= 255 for value in rgb):
            colours[name] = rgb
    return colours


def prescription(plan: Dataset | None) -> float | None:
    if plan is None:
        return None
    doses = [float(item.TargetPrescriptionDose) for item in plan.get("DoseReferenceSequence", []) or []
             if item.get("TargetPrescriptionDose") not in (None, "")]
    # A prescription that is not a positive number is no prescription (never a NaN in the JSON).
    doses = [dose for dose in doses if math.isfinite(dose) and dose > 0]
    return max(doses) if doses else None


def planning_system_dvhs(dose: Dataset, rtstruct: Dataset,
                         rx: float | None = None) -> dict[str, dict[str, Any]]:
    """The DVHs the planning system stored in the RTDOSE (DVHSequence), by ROI name, read by
    their DoseUnits, VolumeUnits and DVHType, their summary values checked against the curve."""
    names = {int(item.ROINumber): str(item.get("ROIName", "")) for item in
             rtstruct.get("StructureSetROISequence", []) or []}
    found: dict[str, dict[str, Any]] = {}
    for item in dose.get("DVHSequence", []) or []:
        refs = item.get("DVHReferencedROISequence", []) or []
        if not refs:
            continue
        name = names.get(int(refs[0].ReferencedROINumber), f"ROI {refs[0].ReferencedROINumber}")
        curve = planning_system_curve(item, rx)
        found[name] = {"type": str(item.get("DVHType", "")),
                       "dose_units": str(item.get("DoseUnits", "")),
                       "volume_units": str(item.get("DVHVolumeUnits", "")),
                       **summary_values(item, curve, rx), **curve}
    return found


# A stated value and the one read off the curve agree within this (relative) difference.
SUMMARY_TOLERANCE = 0.05


def summary_values(item: Dataset, curve: dict[str, Any], rx: float | None) -> dict[str, Any]:
    """Dmin/Dmean/Dmax as the planning system stated them, in Gy, and its volume in cc.

    Some planning systems write the summary as percent of the prescription while the sequence
    says GY. The stated maximum is compared with where the curve ends: when it only agrees read
    as percent of the prescription, the item's summary is read so; each value is then checked
    against the curve (within 5 % or one bin) and a disagreement is listed under `checks`."""
    to_gy = _to_gy(str(item.get("DoseUnits", "GY")), rx)
    stated = {key: _number(item, keyword) for key, keyword in
              (("Dmin", "DVHMinimumDose"), ("Dmean", "DVHMeanDose"), ("Dmax", "DVHMaximumDose"))}
    from_curve = {"Dmax": curve.get("curve_max_gy"), "Dmean": curve.get("curve_mean_gy")}
    bin_gy = float(curve.get("bin_gy") or 0.0)
    checks: list[str] = []
    factor = to_gy
    top, curve_top = stated["Dmax"], from_curve["Dmax"]
    if (factor is not None and top is not None and curve_top and rx
            and not _close(top * factor, curve_top, bin_gy)
            and _close(top / 100.0 * rx, curve_top, bin_gy)):
        factor = rx / 100.0
        checks.append(f"summary in percent of the prescription ({rx:g} Gy), not "
                      f"{item.get('DoseUnits', 'GY')}: Dmax {top:g} read as {top * factor:.3f} Gy")
    values: dict[str, float | None] = {}
    for key, raw in stated.items():
        if raw is None or factor is None:
            values[key] = None
            continue
        value = raw * factor
        reference = from_curve.get(key)
        if reference and not _close(value, reference, bin_gy):
            checks.append(f"{key} {value:.3f} Gy disagrees with the curve ({reference:.3f} Gy)")
        # Six significant digits: a fixed number of decimals would erase a small dose (0.0785 Gy).
        values[key] = float(f"{value:.6g}")
    volume_cc = curve.get("total_volume") if str(
        item.get("DVHVolumeUnits", "CM3")).upper() == "CM3" else None
    return {**values, "volume_cc": volume_cc, "checks": checks}


def _to_gy(units: str, rx: float | None) -> float | None:
    units = units.upper()
    if units == "CGY":
        return 0.01
    if units == "RELATIVE":
        return rx  # a fraction of the prescription; unknown without one
    return 1.0


# A curve binned coarsely cannot say a value better than a bin, but no coarser than this.
MAX_BIN_ALLOWANCE_GY = 0.25


def _close(value: float, reference: float, bin_gy: float = 0.0) -> bool:
    allowed = max(SUMMARY_TOLERANCE * abs(reference), min(bin_gy, MAX_BIN_ALLOWANCE_GY), 1e-6)
    return abs(value - reference) <= allowed


def planning_system_curve(item: Dataset, rx: float | None = None) -> dict[str, Any]:
    """The planning system's DVHData as a cumulative curve in Gy and % of volume, for plotting,
    with what the curve itself says: its total volume (in its VolumeUnits), its maximum and mean.

    DVHData holds (bin width, volume) pairs; a differential DVH is summed from the top dose down.
    """
    raw = [float(value) for value in (item.get("DVHData") or [])]
    to_gy = _to_gy(str(item.get("DoseUnits", "GY")), rx)
    scale = float(item.get("DVHDoseScaling", 1.0) or 1.0)
    # A curve with a value that is not a number, or no positive scaling, is not drawn.
    if (len(raw) < 2 or to_gy is None or not np.isfinite(raw).all()
            or not (math.isfinite(scale) and scale > 0)):
        return {}
    widths, volumes = np.array(raw[0::2]), np.array(raw[1::2])
    edges = np.concatenate([[0.0], np.cumsum(widths)[:-1]]) * scale * to_gy
    if str(item.get("DVHType", "CUMULATIVE")).upper() == "DIFFERENTIAL":
        volumes = np.cumsum(volumes[::-1])[::-1]
    total = float(volumes[0]) if volumes[0] > 0 else float(volumes.max() or 1.0)
    # Per bin: the volume between this edge and the next receives about the bin's middle dose.
    in_bin = np.clip(volumes - np.append(volumes[1:], 0.0), 0.0, None)
    middles = edges + widths * scale * to_gy / 2.0
    mean = float((in_bin * middles).sum() / in_bin.sum()) if in_bin.sum() > 0 else None
    reached = np.nonzero(volumes > 0)[0]
    top = float(edges[reached[-1]] + widths[reached[-1]] * scale * to_gy) if len(reached) else None
    return {"dose_gy": [round(float(d), 4) for d in edges],
            "volume_pct": [round(float(v) / total * 100.0, 3) for v in volumes],
            "total_volume": round(total, 4), "curve_max_gy": top, "curve_mean_gy": mean,
            "bin_gy": float(np.median(widths)) * scale * to_gy}


def _number(item: Dataset, keyword: str) -> float | None:
    raw = item.get(keyword)
    value = None if raw in (None, "") else float(raw)
    return value if value is not None and math.isfinite(value) else None


def plan_dose(doses: Sequence[Dataset]) -> tuple[Dataset, DoseGrid, str]:
    """One dose for the plan: its PLAN-summed RTDOSE when there is one, else the sum of its
    per-beam (or per-fraction) doses, which must share one grid and one unit. Returns the dose
    whose header speaks for the rest (units, stored DVHs), the grid, and how it was made."""
    if not doses:
        raise DvhInputError("no RTDOSE")
    whole = [ds for ds in doses if str(ds.get("DoseSummationType", "PLAN")).upper() == "PLAN"]
    if whole or len(doses) == 1:
        chosen = (whole or list(doses))[0]
        return chosen, dose_grid(chosen), f"{chosen.get('DoseSummationType', 'PLAN')} dose"
    grids = [dose_grid(ds) for ds in doses]
    first = grids[0]
    units = {str(ds.get("DoseUnits", "GY")).upper() for ds in doses}
    for grid in grids[1:]:
        if (grid.dose.shape != first.dose.shape or not np.allclose(grid.xs, first.xs)
                or not np.allclose(grid.ys, first.ys) or not np.allclose(grid.zs, first.zs)):
            raise DvhInputError(f"{len(doses)} per-beam doses on different grids: not summed")
    if len(units) > 1:
        raise DvhInputError(f"per-beam doses in different units ({', '.join(sorted(units))})")
    total = DoseGrid(first.xs, first.ys, first.zs, np.sum([g.dose for g in grids], axis=0))
    kinds = sorted({str(ds.get("DoseSummationType", "")) for ds in doses})
    return doses[0], total, f"sum of {len(doses)} {'/'.join(kinds)} doses"


# Below this volume the convention matters by percents (bench/dvh_truth.py: the default counts a
# 2.1 cc sphere 5 % short, a 0.27 cc one 16 %; slabs are unbiased): such a structure's volume is
# also given as slabs count it, so a physicist sees both readings where they part.
SMALL_STRUCTURE_CC = 5.0
SLABS = ("none", "half-slab")   # (interpolation, end caps)


def bundle_dvhs(rtstruct: Dataset, rtdose: Dataset | Sequence[Dataset], plan: Dataset | None,
                supersampling: int = 4, end_caps: str = DEFAULT_END_CAPS,
                interpolation: str = DEFAULT_INTERPOLATION,
                inner_contours: str = DEFAULT_INNER_CONTOURS) -> dict[str, Any]:
    doses = [rtdose] if isinstance(rtdose, Dataset) else list(rtdose)
    rtdose, grid, dose_source = plan_dose(doses)
    rx = prescription(plan)
    units = str(rtdose.get("DoseUnits", "GY")).upper()
    dose_units, conversion = "GY", None
    if units == "RELATIVE":
        if rx:
            # Relative dose as a fraction of the reference (1.0); a grid whose maximum is above
            # 10 was written in percent.
            factor = rx / 100.0 if float(grid.dose.max()) > 10.0 else rx
            grid = DoseGrid(grid.xs, grid.ys, grid.zs, grid.dose * factor)
            conversion = f"RELATIVE dose converted to Gy with the prescription ({rx:g} Gy)"
        else:
            dose_units = "RELATIVE"
            conversion = "RELATIVE dose and no prescription: values are relative, not Gy"
    elif units == "CGY":
        grid = DoseGrid(grid.xs, grid.ys, grid.zs, grid.dose * 0.01)
    computed = []
    not_computed = []
    colours = roi_colours(rtstruct)
    for name, contours in roi_contours(rtstruct).items():
        try:
            result = dvh(contours, grid, rx if dose_units == "GY" else None,
                         supersampling=supersampling, end_caps=end_caps,
                         interpolation=interpolation, inner_contours=inner_contours)
        except ValueError as error:
            # One broken structure is its own problem: the plan's other structures still count.
            not_computed.append({"roi": name, "reason": str(error)})
            continue
        if result is None:
            continue
        row: dict[str, Any] = {"roi": name, **result.as_json()}
        if name in colours:
            row["display_color"] = colours[name]
        if result.volume_cc < SMALL_STRUCTURE_CC and (interpolation, end_caps) != SLABS:
            # Few samples: cheap to count again the way that is unbiased against truth.
            with contextlib.suppress(ValueError):   # the structure's DVH stands without it
                slabs = dvh(contours, grid, None, supersampling=supersampling,
                            end_caps=SLABS[1], interpolation=SLABS[0],
                            inner_contours=inner_contours)
                if slabs is not None:
                    row["volume_cc_slabs"] = slabs.volume_cc
        computed.append(row)
    planning = planning_system_dvhs(rtdose, rtstruct, rx)
    return {
        "prescription_gy": rx,
        "dose_units": dose_units,
        "dose_conversion": conversion,
        "dose_source": dose_source,
        "end_caps": end_caps,
        "interpolation": interpolation,
        "inner_contours": inner_contours,
        "method": method_text(interpolation, end_caps, supersampling, inner_contours),
        "computed": computed,
        "not_computed": not_computed,
        "planning_system": planning,
        "comparison": comparison(computed, planning),
    }


def method_text(interpolation: str, end_caps: str, supersampling: int,
                inner_contours: str) -> str:
    """The conventions a DVH was computed with, in the words the plan page shows."""
    between_planes = ("shape interpolated between contour planes" if interpolation == "shape"
                      else "slabs between contour planes")
    inner = ("inner contours cut holes (even-odd rule)" if inner_contours == "hole"
             else "inner contours add to the structure")
    return (f"{between_planes} (end caps: {end_caps}), in-plane supersampling of the dose grid "
            f"up to {supersampling}x (per structure, see 'supersampling'), {inner}, "
            "trilinear dose interpolation")


def comparison(computed: list[dict[str, Any]],
               planning: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Per structure the planning system also reported: computed vs planning-system volume,
    Dmin, Dmean, Dmax, and computed minus planning system."""
    rows = []
    for ours in computed:
        theirs = planning.get(ours["roi"])
        if theirs is None:
            continue
        row: dict[str, Any] = {"roi": ours["roi"]}
        for key, mine in (("volume_cc", "volume_cc"), ("Dmin", "Dmin"), ("Dmean", "Dmean"),
                          ("Dmax", "Dmax")):
            a, b = ours.get(mine), theirs.get(key)
            row[key] = {"computed": a, "planning_system": b,
                        "difference": round(a - b, 4) if a is not None and b is not None else None}
        row["checks"] = theirs.get("checks", [])
        rows.append(row)
    return rows
