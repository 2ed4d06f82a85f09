"""bench/contours: the gateway's rasterizer against rt-utils, and the overlay series. Prints JSON.

A 300-slice 512x512 CT (0.98 mm pixels, 2 mm slices) with a body contour and 10 structures
(spheres of 3 to 30 mm radius, a tube with a hole, boxes with edges between pixel centres),
in the same run:
- gateway: parse the RTSTRUCT and rasterize every ROI (orthanc_plugin.contours);
- rt-utils 1.2.7: get_roi_mask_by_name for every ROI, from a freshly loaded RTStruct;
- per ROI: Dice and volume error of each against the analytic pixel-centre truth;
- overlay: time to build the axial overlay series (body ignored), to encode it, and to store it
  in a real Orthanc (POST /instances), when Orthanc is installed.
Times are the median of --rounds rounds; the ratio is what to read on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from io import BytesIO
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from pydicom import dcmread
from pydicom.uid import generate_uid

from orthanc_plugin.contours.model import SeriesGeometry, SliceGeometry, parse_structure_set
from orthanc_plugin.contours.overlay import OverlayOptions, build_overlay_series
from orthanc_plugin.contours.raster import rasterize_roi
from tests.support.contour_shapes import (
    Box,
    Ring,
    Sphere,
    dice,
    make_rtstruct,
    pixel_centres,
    shape_polygons,
)
from tests.support.rtset import make_ct_series, write_datasets

SLICES, SIZE, SPACING, THICKNESS = 300, 512, 0.98, 2.0


class EllipticCylinder:
    """The body: an elliptic cylinder along z over every slice."""

    def __init__(self, a: float, b: float) -> None:
        self.a, self.b = a, b

    def polygons(self, plane: SliceGeometry) -> list[np.ndarray]:
        n = 1600  # 0.8 mm chords; ContourData must stay under 64 KiB
        angles = 2 * np.pi * np.arange(n) / n
        z = np.full(n, plane.position[2])
        return [np.stack([self.a * np.cos(angles), self.b * np.sin(angles), z], axis=1)]

    def inside(self, points: np.ndarray) -> np.ndarray:
        return (points[..., 0] / self.a) ** 2 + (points[..., 1] / self.b) ** 2 < 1


def structures() -> dict[str, Any]:
    return {
        "BODY": EllipticCylinder(220.0, 160.0),
        "sphere_3mm": Sphere((40.3, -20.2, -100.7), 3.0),
        "sphere_5mm": Sphere((-60.4, 30.1, -50.2), 5.0),
        "sphere_8mm": Sphere((70.2, 50.3, 0.5), 8.0),
        "sphere_12mm": Sphere((-80.1, -40.4, 60.3), 12.0),
        "sphere_20mm": Sphere((10.2, 60.2, 120.1), 20.0),
        "PTV_30mm": Sphere((0.3, -0.4, 0.2), 30.0),
        "ring": Ring((-100.2, 70.1, -150.3), outer=25.0, inner=12.0, half_height=30.0),
        "box_large": Box((-150.37, -90.61, 180.3), (-60.44, -20.29, 240.7)),
        "box_small": Box((100.33, -10.71, -240.9), (112.41, 3.63, -226.1)),
        "box_thin": Box((120.25, 40.55, 40.1), (160.45, 42.35, 90.9)),
    }


def truths_of(shapes: dict[str, Any], geometry: SeriesGeometry) -> dict[str, np.ndarray]:
    """Pixel-centre truth of every shape, one slice at a time to keep memory small."""
    truths = {name: np.zeros(geometry.shape, dtype=bool) for name in shapes}
    for k in range(geometry.shape[0]):
        centres = pixel_centres(SeriesGeometry.of_slices([geometry.slices[k]]))[0]
        for name, shape in shapes.items():
            if isinstance(shape, Ring):
                truths[name][k] = shape.inside(centres, geometry.normal)
            else:
                truths[name][k] = shape.inside(centres)
    return truths


def score(mask: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    voxels = int(truth.sum())
    return {
        "dice": round(dice(mask, truth), 5),
        "volume_error_percent": round(100.0 * (int(mask.sum()) - voxels) / voxels, 3),
    }


def median_time(function: Any, rounds: int) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(rounds):
        started = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-store", action="store_true", help="skip the Orthanc store step")
    arguments = parser.parse_args()
    warnings.filterwarnings("ignore")
    from rt_utils import RTStructBuilder

    folder = Path(tempfile.mkdtemp(prefix="bench-contours-"))
    try:
        ct = make_ct_series(
            patient_id="BENCH-CONTOURS", patient_name="Bench^Contours", study_uid=generate_uid(),
            frame_of_reference_uid=generate_uid(), n_slices=SLICES, rows=SIZE, columns=SIZE,
            pixel_spacing=(SPACING, SPACING), slice_thickness=THICKNESS,
            origin=(-(SIZE - 1) * SPACING / 2, -(SIZE - 1) * SPACING / 2,
                    -(SLICES - 1) * THICKNESS / 2),
        )
        shapes = structures()
        rtstruct = make_rtstruct(ct, [(name, shape_polygons(shape, ct))
                                      for name, shape in shapes.items()])
        ct_folder = folder / "ct"
        write_datasets(ct, ct_folder)
        rtstruct_path = folder / "rtstruct.dcm"
        rtstruct.save_as(rtstruct_path, enforce_file_format=True)
        geometry = SeriesGeometry.of_slices(SliceGeometry.of_dataset(ds) for ds in ct)
        truths = truths_of(shapes, geometry)

        def gateway_all() -> dict[str, Any]:
            structure_set = parse_structure_set(dcmread(rtstruct_path))
            return {roi.name: rasterize_roi(roi, geometry).mask for roi in structure_set.rois}

        def gateway_body() -> Any:
            body = parse_structure_set(dcmread(rtstruct_path)).rois[0]
            return rasterize_roi(body, geometry)

        gateway_seconds, gateway_masks = median_time(gateway_all, arguments.rounds)
        body_seconds, _ = median_time(gateway_body, arguments.rounds)

        def rt_utils_all() -> dict[str, np.ndarray]:
            rt = RTStructBuilder.create_from(dicom_series_path=str(ct_folder),
                                             rt_struct_path=str(rtstruct_path))
            started = time.perf_counter()
            masks = {name: rt.get_roi_mask_by_name(name) for name in shapes}
            rt_utils_all.mask_seconds = time.perf_counter() - started  # type: ignore[attr-defined]
            return masks

        rt_times = []
        rt_masks: dict[str, np.ndarray] = {}
        for _ in range(arguments.rounds):
            rt_masks = rt_utils_all()
            rt_times.append(rt_utils_all.mask_seconds)  # type: ignore[attr-defined]
        rt_seconds = statistics.median(rt_times)

        per_roi = {}
        for name, truth in truths.items():
            # rt-utils returns (Columns, Rows, slices) indexed [row, column, slice]; square here.
            theirs = np.moveaxis(rt_masks[name], 2, 0)
            per_roi[name] = {
                "truth_voxels": int(truth.sum()),
                "gateway": score(gateway_masks[name].full(), truth),
                "rt_utils": score(theirs, truth),
            }

        started = time.perf_counter()
        build = build_overlay_series(ct, rtstruct, OverlayOptions(ignore=("body",)))
        build_seconds = time.perf_counter() - started
        started = time.perf_counter()
        encoded = []
        for ds in build.series[0].datasets:
            buffer = BytesIO()
            ds.save_as(buffer, enforce_file_format=True)
            encoded.append(buffer.getvalue())
        encode_seconds = time.perf_counter() - started
        store = None if arguments.no_store else store_in_orthanc(folder / "orthanc", encoded)

        result = {
            "series": {"slices": SLICES, "rows": SIZE, "columns": SIZE,
                       "pixel_spacing_mm": SPACING, "slice_spacing_mm": THICKNESS,
                       "rois": len(shapes)},
            "rounds": arguments.rounds,
            "rasterize_all_rois_seconds": {
                "gateway_parse_and_rasterize": round(gateway_seconds, 3),
                "rt_utils_get_roi_mask_by_name": round(rt_seconds, 3),
                "speedup": round(rt_seconds / gateway_seconds, 1),
            },
            "gateway_body_contour_seconds": round(body_seconds, 3),
            "per_roi": per_roi,
            "axial_overlay_series": {
                "instances": len(encoded),
                "build_seconds": round(build_seconds, 2),
                "encode_seconds": round(encode_seconds, 2),
                "megabytes": round(sum(map(len, encoded)) / 1e6, 1),
                "store": store,
            },
        }
        print(json.dumps(result, indent=2))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def store_in_orthanc(folder: Path, encoded: list[bytes]) -> dict[str, Any] | None:
    """POST /instances of every encoded instance into a plain Orthanc, over HTTP."""
    if shutil.which("Orthanc") is None:
        return None
    from tests.support.orthanc import OrthancProcess

    orthanc = OrthancProcess(folder, "BENCHSTORE")
    orthanc.start()
    try:
        started = time.perf_counter()
        for data in encoded:
            orthanc.post("/instances", data).raise_for_status()
        seconds = time.perf_counter() - started
        return {"seconds": round(seconds, 2), "stored": orthanc.instance_count(),
                "note": "over HTTP from outside; the plugin stores in-process"}
    finally:
        orthanc.stop()


if __name__ == "__main__":
    main()
