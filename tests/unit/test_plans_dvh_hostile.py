"""Broken or hostile dose grids and structure sets: a clear reason, never a silent wrong DVH, a
NaN in the JSON, or a worker out of memory; one broken structure does not cost the others."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from orthanc_plugin.plans.dvh import Contour, DoseGrid, dvh
from orthanc_plugin.plans.dvh_source import DvhInputError, bundle_dvhs, dose_grid
from tests.support.rtset import RtSet, make_rt_set


@pytest.fixture(scope="module")
def rtset() -> RtSet:
    return make_rt_set("HOSTILE", n_slices=12, rows=64, columns=64)


def with_dose(rtset: RtSet, change: Callable[[Dataset], None]) -> dict[str, object]:
    dose = copy.deepcopy(rtset.rtdose)
    assert dose is not None
    change(dose)
    return bundle_dvhs(rtset.rtstruct, dose, rtset.rtplan)


@pytest.mark.parametrize(("keyword", "value", "reason"), [
    ("DoseGridScaling", "NaN", "DoseGridScaling nan: expected a positive number"),
    ("DoseGridScaling", "1e999", "DoseGridScaling inf: expected a positive number"),
    ("DoseGridScaling", "-0.001", "DoseGridScaling -0.001: expected a positive number"),
    ("PixelSpacing", [0, 0], "PixelSpacing [0.0, 0.0]: expected two positive numbers"),
    ("PixelSpacing", [-2.5, 2.5], "PixelSpacing [-2.5, 2.5]: expected two positive numbers"),
    ("GridFrameOffsetVector", [0, 2.5], "has 2 offsets for 12 dose frames"),
    ("GridFrameOffsetVector", ["NaN"] * 12, "expected distinct finite offsets"),
    ("GridFrameOffsetVector", [0] * 12, "expected distinct finite offsets"),
    ("ImagePositionPatient", ["NaN", 0, 0], "is not finite"),
])
def test_a_broken_dose_grid_is_refused_with_its_reason(rtset: RtSet, keyword: str,
                                                       value: object, reason: str) -> None:
    with pytest.raises(DvhInputError, match=reason.replace("[", r"\[").replace("]", r"\]")):
        with_dose(rtset, lambda dose: setattr(dose, keyword, value))


@pytest.mark.parametrize("bad", ["NaN", "inf", "1e300", "20000"])
def test_a_broken_contour_costs_only_its_structure(rtset: RtSet, bad: str) -> None:
    structure = copy.deepcopy(rtset.rtstruct)
    names = {int(item.ROINumber): str(item.ROIName)
             for item in structure.StructureSetROISequence}
    broken = structure.ROIContourSequence[1]
    item = broken.ContourSequence[0]
    points = list(item.ContourData)
    points[0] = bad
    item.ContourData = points
    result = bundle_dvhs(structure, rtset.rtdose, rtset.rtplan)
    victim = names[int(broken.ReferencedROINumber)]
    assert [row["roi"] for row in result["not_computed"]] == [victim]
    assert "not finite or beyond ±10000 mm" in result["not_computed"][0]["reason"]
    assert {row["roi"] for row in result["computed"]} == set(names.values()) - {victim}
    json.dumps(result, allow_nan=False)


def test_a_structure_too_wide_to_sample_is_refused_not_allocated() -> None:
    # A sliver from corner to corner of a 19.8 m square: tiny area, a box of 62.8 million cells of
    # a 2.5 mm grid on one plane. Sampled, its mask alone would take gigabytes.
    xs = np.arange(-50.0, 50.01, 2.5)
    grid = DoseGrid(xs, xs.copy(), np.array([0.0, 2.5]), np.ones((2, len(xs), len(xs))))
    sliver = np.array([[-9900.0, -9900.0], [9900.0, 9899.0], [9900.0, 9900.0]])
    with pytest.raises(ValueError, match=r"one plane spans 6.28e\+07 dose-grid cells"):
        dvh([Contour(0.0, sliver)], grid)


def test_a_structure_with_too_many_samples_is_refused() -> None:
    xs = np.arange(-50.0, 50.01, 0.5)
    grid = DoseGrid(xs, xs.copy(), np.arange(0.0, 100.1, 0.5), np.ones((201, len(xs), len(xs))))
    square = np.array([[-2000.0, -2000.0], [2000.0, -2000.0], [2000.0, 2000.0], [-2000.0, 2000.0]])
    # 4 m x 4 m on 2 planes of a 0.5 mm grid: 1.3e8 samples even without supersampling.
    with pytest.raises(ValueError, match="samples even at the dose grid's own resolution"):
        dvh([Contour(0.0, square), Contour(0.5, square)], grid, interpolation="none")


def test_planning_system_values_that_are_not_numbers_stay_out_of_the_json(rtset: RtSet) -> None:
    def add_broken_dvh(dose: Dataset) -> None:
        item, ref = Dataset(), Dataset()
        ref.ReferencedROINumber = int(rtset.rtstruct.StructureSetROISequence[0].ROINumber)
        item.DVHReferencedROISequence = [ref]
        item.DVHType, item.DoseUnits, item.DVHVolumeUnits = "CUMULATIVE", "GY", "CM3"
        item.DVHDoseScaling = "NaN"
        item.DVHData = [0.1, 10.0, 0.1, "NaN"]
        item.DVHMinimumDose, item.DVHMaximumDose, item.DVHMeanDose = "NaN", "inf", 1.0
        dose.DVHSequence = [item]

    result = with_dose(rtset, add_broken_dvh)
    text = json.dumps(result, allow_nan=False)
    assert "NaN" not in text and "Infinity" not in text
    planning = next(iter(result["planning_system"].values()))   # type: ignore[attr-defined]
    assert planning["Dmin"] is None and planning["Dmax"] is None and planning["Dmean"] == 1.0
    assert "dose_gy" not in planning


def test_a_prescription_that_is_not_a_number_is_no_prescription(rtset: RtSet) -> None:
    from orthanc_plugin.index.rt_metrics import plan as plan_metrics

    plan = copy.deepcopy(rtset.rtplan)
    assert plan is not None
    for item in plan.DoseReferenceSequence:
        item.TargetPrescriptionDose = "NaN"
    result = bundle_dvhs(rtset.rtstruct, rtset.rtdose, plan)
    assert result["prescription_gy"] is None
    json.dumps(result, allow_nan=False)
    summary, _beams = plan_metrics(plan)
    json.dumps(summary, allow_nan=False)


def test_dose_grid_is_float32_in_z_order_whatever_the_frame_order() -> None:
    # Frames written head first (offsets descending): reordered by z, each frame kept whole.
    ds = Dataset()
    ds.Rows, ds.Columns, ds.NumberOfFrames = 2, 3, 3
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 32, 32, 31, 0
    ds.ImagePositionPatient, ds.PixelSpacing = [0, 0, 10], [2.5, 2.5]
    ds.GridFrameOffsetVector, ds.DoseGridScaling = [0, -2.5, -5.0], 0.001
    frames = np.stack([np.full((2, 3), value, dtype="<u4") for value in (70000, 1000, 20000)])
    ds.PixelData = frames.tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    grid = dose_grid(ds)
    assert grid.dose.dtype == np.float32
    assert list(grid.zs) == [5.0, 7.5, 10.0]
    assert [float(frame[0, 0]) for frame in grid.dose] == pytest.approx([20.0, 1.0, 70.0])
