"""bench/dvh_truth: the computed DVH against analytic truth, beside dicompyler-core's get_dvh.

bench/dvh_conventions compares with one planning system on one real export; this one compares
with what is exactly known. Phantoms: spheres of 0.27 to 113 cc (small structures are where slab
conventions err most), an ellipsoid, a cylinder with flat ends, and a spherical shell (an inner
contour as a hole, drawn the other way round as planning systems do). Each is contoured as a
planning system does, one polygon per CT plane 2.5 mm apart (a vertex every 0.7 mm of
perimeter), at several positions between two planes, in a dose that is linear in x, y and z:
trilinear interpolation of the dose grid is then exact, so the truth is analytic (volume; Dmean =
the dose at the centroid; Dmax = the dose at the solid's point furthest along the gradient).

Both tools read the same DICOM files (written here: RTSTRUCT and RTDOSE). dicompyler-core runs in
its own venv (bench/dvh_conventions.py makes it). Prints JSON: per phantom the mean signed and
mean absolute error over the positions for each tool and each end-cap convention of the gateway,
and on how many (phantom, position) cases the gateway's default is closer to the truth.
"""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from bench.dvh_conventions import DICOMPYLER_SCRIPT, dicompyler_python
from orthanc_plugin.plans.dvh import (
    DEFAULT_END_CAPS,
    DEFAULT_INTERPOLATION,
    END_CAPS,
    INTERPOLATIONS,
    dvh,
)
from orthanc_plugin.plans.dvh_source import dose_grid, roi_contours

PLANE_GAP_MM = 2.5
DOSE_SPACING_MM = 2.5
VERTEX_SPACING_MM = 0.7
# Centre of each phantom between two CT planes, as a fraction of the gap, and moved in-plane by
# the same fraction of a dose voxel: the answers over these positions give the bias and spread.
POSITIONS = (0.0, 0.2, 0.4, 0.6, 0.8)
DOSE_AT_CENTRE_GY = 50.0
GRADIENT_GY_PER_MM = np.array([0.4, 0.25, 0.3])
HALF_EXTENT_MM = 50.0
KEYS = ("volume_cc", "Dmean", "Dmax")

# A plane's loops: (semi-axis x, semi-axis y, is_hole) at height dz from the centre.
Loops = Callable[[float], list[tuple[float, float, bool]]]


@dataclass(frozen=True)
class Phantom:
    name: str
    loops: Loops
    volume_mm3: float
    reach_mm: Callable[[np.ndarray], float]   # max over the solid of gradient . (p - centre)


def _cap(radius: float, dz: float) -> float:
    return math.sqrt(radius * radius - dz * dz) if abs(dz) < radius else 0.0


def sphere(radius: float) -> Phantom:
    return Phantom(f"sphere r={radius:g} mm", lambda dz: [(_cap(radius, dz),) * 2 + (False,)],
                   4 / 3 * math.pi * radius**3, lambda g: float(np.linalg.norm(g)) * radius)


def ellipsoid(a: float, b: float, c: float) -> Phantom:
    def loops(dz: float) -> list[tuple[float, float, bool]]:
        scale = _cap(1.0, dz / c)
        return [(a * scale, b * scale, False)]
    return Phantom(f"ellipsoid {a:g}x{b:g}x{c:g} mm", loops, 4 / 3 * math.pi * a * b * c,
                   lambda g: math.sqrt((a * g[0]) ** 2 + (b * g[1]) ** 2 + (c * g[2]) ** 2))


def cylinder(radius: float, height: float) -> Phantom:
    return Phantom(f"cylinder r={radius:g} h={height:g} mm",
                   lambda dz: [(radius, radius, False)] if abs(dz) <= height / 2 else [],
                   math.pi * radius**2 * height,
                   lambda g: radius * math.hypot(g[0], g[1]) + abs(g[2]) * height / 2)


def shell(outer: float, inner: float) -> Phantom:
    def loops(dz: float) -> list[tuple[float, float, bool]]:
        found = [(_cap(outer, dz), _cap(outer, dz), False)]
        if abs(dz) < inner:
            found.append((_cap(inner, dz), _cap(inner, dz), True))
        return found
    return Phantom(f"shell r={outer:g}/{inner:g} mm", loops,
                   4 / 3 * math.pi * (outer**3 - inner**3),
                   lambda g: float(np.linalg.norm(g)) * outer)


PHANTOMS = (sphere(4), sphere(8), sphere(15), sphere(30), ellipsoid(25, 15, 10),
            cylinder(12, 30), shell(20, 12))


def polygon(cx: float, cy: float, ax: float, ay: float, z: float, hole: bool) -> list[float]:
    count = max(16, math.ceil(2 * math.pi * max(ax, ay) / VERTEX_SPACING_MM))
    angles = np.linspace(0.0, 2 * math.pi, count, endpoint=False)
    if hole:
        angles = angles[::-1]
    points = np.column_stack([cx + ax * np.cos(angles), cy + ay * np.sin(angles),
                              np.full(count, z)])
    return [round(float(v), 4) for v in points.ravel()]


def _new(modality: str, sop_class: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = UID(sop_class), ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID, ds.PatientName = modality, "PHANTOM", "Phantom^Truth"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.FrameOfReferenceUID = UID("1.2.826.0.1.3680043.10.543.1")
    return ds


def structure_set(cases: list[tuple[str, Phantom, np.ndarray]]) -> Dataset:
    ds = _new("RTSTRUCT", "1.2.840.10008.5.1.4.1.1.481.3")
    ds.StructureSetLabel = "TRUTH"
    rois, contours = [], []
    for number, (name, phantom, centre) in enumerate(cases, start=1):
        roi = Dataset()
        roi.ROINumber, roi.ROIName = number, name
        roi.ReferencedFrameOfReferenceUID = ds.FrameOfReferenceUID
        rois.append(roi)
        items = []
        for k in range(-40, 41):
            z = k * PLANE_GAP_MM
            for ax, ay, hole in phantom.loops(z - centre[2]):
                if ax <= 0.05 or ay <= 0.05:
                    continue
                item = Dataset()
                item.ContourGeometricType = "CLOSED_PLANAR"
                item.ContourData = polygon(centre[0], centre[1], ax, ay, z, hole)
                item.NumberOfContourPoints = len(item.ContourData) // 3
                items.append(item)
        contour = Dataset()
        contour.ReferencedROINumber = number
        contour.ContourSequence = items
        contours.append(contour)
    ds.StructureSetROISequence, ds.ROIContourSequence = rois, contours
    return ds


def linear_dose(point: np.ndarray) -> float:
    return DOSE_AT_CENTRE_GY + float(GRADIENT_GY_PER_MM @ point)


def dose_file() -> Dataset:
    ds = _new("RTDOSE", "1.2.840.10008.5.1.4.1.1.481.2")
    # Dose frames half a CT gap off the contour planes, as is usual: nothing lines up by luck.
    axis = np.arange(-HALF_EXTENT_MM, HALF_EXTENT_MM + 1e-9, DOSE_SPACING_MM)
    zs = axis + PLANE_GAP_MM / 2
    z, y, x = np.meshgrid(zs, axis, axis, indexing="ij")
    dose = DOSE_AT_CENTRE_GY + (GRADIENT_GY_PER_MM[0] * x + GRADIENT_GY_PER_MM[1] * y
                                + GRADIENT_GY_PER_MM[2] * z)
    scaling = 1e-5
    ds.Rows, ds.Columns, ds.NumberOfFrames = len(axis), len(axis), len(zs)
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 32, 32, 31, 0
    ds.ImagePositionPatient = [float(axis[0]), float(axis[0]), float(zs[0])]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [DOSE_SPACING_MM, DOSE_SPACING_MM]
    ds.GridFrameOffsetVector = [float(v - zs[0]) for v in zs]
    ds.FrameIncrementPointer = (0x3004, 0x000C)
    ds.DoseUnits, ds.DoseType, ds.DoseSummationType = "GY", "PHYSICAL", "PLAN"
    ds.DoseGridScaling = scaling
    ds.PixelData = np.round(dose / scaling).astype("<u4").tobytes()
    return ds


def cases() -> list[tuple[str, Phantom, np.ndarray]]:
    found = []
    for phantom in PHANTOMS:
        for fraction in POSITIONS:
            centre = np.array([fraction * DOSE_SPACING_MM * 0.37,
                               fraction * DOSE_SPACING_MM * 0.61, fraction * PLANE_GAP_MM])
            found.append((f"{phantom.name} @{fraction:g}", phantom, centre))
    return found


def truth(phantom: Phantom, centre: np.ndarray) -> dict[str, float]:
    return {"volume_cc": phantom.volume_mm3 / 1000.0, "Dmean": linear_dose(centre),
            "Dmax": linear_dose(centre) + phantom.reach_mm(GRADIENT_GY_PER_MM)}


def error_pct(value: float | None, reference: float) -> float | None:
    return None if value is None else (value - reference) / reference * 100.0


def main() -> None:
    all_cases = cases()
    folder = Path(tempfile.mkdtemp(prefix="dvh-truth-"))
    structure_set(all_cases).save_as(folder / "rtss.dcm", write_like_original=False)
    dose_file().save_as(folder / "rtdose.dcm", write_like_original=False)
    contours = roi_contours(dcmread(folder / "rtss.dcm"))
    grid = dose_grid(dcmread(folder / "rtdose.dcm"))
    names = [name for name, _, _ in all_cases]
    conventions = [f"{interp}/{caps}" for interp in INTERPOLATIONS for caps in END_CAPS]
    default_convention = f"{DEFAULT_INTERPOLATION}/{DEFAULT_END_CAPS}"
    ours: dict[str, dict[str, dict[str, float]]] = {convention: {} for convention in conventions}
    seconds: dict[str, float] = {}
    for convention in conventions:
        interp, caps = convention.split("/")
        started = time.perf_counter()
        for name in names:
            result = dvh(contours[name], grid, None, end_caps=caps, interpolation=interp)
            if result is not None:
                ours[convention][name] = {"volume_cc": result.volume_cc, "Dmean": result.d_mean,
                                          "Dmax": result.d_max}
        seconds[f"gateway {convention}"] = time.perf_counter() - started
    started = time.perf_counter()
    done = subprocess.run([str(dicompyler_python()), "-c", DICOMPYLER_SCRIPT, str(folder),
                           json.dumps(names)], capture_output=True, text=True, check=True)
    seconds["dicompyler-core"] = time.perf_counter() - started
    theirs = json.loads(done.stdout)

    tools = {f"gateway {convention}": ours[convention] for convention in conventions}
    tools["dicompyler-core"] = theirs
    default = f"gateway {default_convention}"
    errors: dict[str, dict[str, dict[str, list[float]]]] = {}
    closer = {key: {"closer": 0, "equal": 0, "further": 0} for key in KEYS}
    for name, phantom, centre in all_cases:
        expected = truth(phantom, centre)
        per_tool = errors.setdefault(phantom.name, {})
        for tool, answers in tools.items():
            for key in KEYS:
                value = error_pct(answers.get(name, {}).get(key), expected[key])
                if value is not None:
                    per_tool.setdefault(tool, {}).setdefault(key, []).append(value)
        for key in KEYS:
            mine = error_pct(ours[default_convention].get(name, {}).get(key), expected[key])
            other = error_pct(theirs.get(name, {}).get(key), expected[key])
            if mine is None or other is None:
                continue
            verdict = ("equal" if abs(abs(mine) - abs(other)) < 1e-3 else
                       "closer" if abs(mine) < abs(other) else "further")
            closer[key][verdict] += 1
    rows = []
    for phantom in PHANTOMS:
        row: dict[str, object] = {"phantom": phantom.name,
                                  "volume_cc": round(phantom.volume_mm3 / 1000.0, 3)}
        for tool, by_key in errors[phantom.name].items():
            row[tool] = {key: {"mean_error_pct": round(statistics.fmean(values), 3),
                               "mean_abs_error_pct": round(statistics.fmean(map(abs, values)), 3)}
                         for key, values in by_key.items()}
        rows.append(row)
    mean_abs = {tool: {key: round(statistics.fmean(
        abs(v) for row in errors.values() for v in row.get(tool, {}).get(key, [])), 3)
        for key in KEYS} for tool in tools}
    max_abs = {tool: {key: round(max(
        abs(v) for row in errors.values() for v in row.get(tool, {}).get(key, [])), 3)
        for key in KEYS} for tool in tools}
    report = {
        "bench": "dvh_truth",
        "cases": f"{len(PHANTOMS)} phantoms x {len(POSITIONS)} positions between CT planes",
        "plane_gap_mm": PLANE_GAP_MM, "dose_spacing_mm": DOSE_SPACING_MM,
        "default": default,
        "phantoms": rows,
        "mean_abs_error_pct_over_all_cases": mean_abs,
        "max_abs_error_pct_over_all_cases": max_abs,
        "default_vs_dicompyler_core": closer,
        "seconds": {key: round(value, 2) for key, value in seconds.items()},
    }
    print(json.dumps(report, indent=2))   # `make bench` keeps it in bench/results/


if __name__ == "__main__":
    main()
