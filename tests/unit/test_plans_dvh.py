"""DVH against analytic cases: a box in a linear dose ramp, a ring (hole), a uniform cylinder."""

from __future__ import annotations

import math

import numpy as np
import pytest

from orthanc_plugin.plans.dvh import Contour, DoseGrid, dvh


def ramp_grid(a: float = 10.0, b: float = 0.5) -> DoseGrid:
    xs = np.arange(-50.0, 50.01, 2.5)
    ys = np.arange(-50.0, 50.01, 2.5)
    zs = np.arange(-20.0, 20.01, 2.5)
    dose = np.broadcast_to(a + b * xs[None, None, :], (len(zs), len(ys), len(xs))).copy()
    return DoseGrid(xs, ys, zs, dose)


def box(x0: float, x1: float, y0: float, y1: float, z: float) -> Contour:
    return Contour(z, np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]]))


def test_box_in_a_linear_ramp_matches_the_analytic_dvh() -> None:
    # D(x) = 10 + 0.5 x over x in [-20, 20]: uniform in [0, 20] Gy across the volume.
    planes = [-5.0, -2.5, 0.0, 2.5, 5.0]
    # Half-slab end caps: each of the 5 planes stands for a whole 2.5 mm slab.
    result = dvh([box(-20, 20, -10, 10, z) for z in planes], ramp_grid(), prescription_gy=15.0,
                 end_caps="half-slab")
    assert result is not None
    assert result.volume_cc == pytest.approx(40 * 20 * 2.5 * 5 / 1000, rel=1e-6)
    assert result.d_mean == pytest.approx(10.0, abs=0.01)
    # Samples sit at sub-voxel centres, half a sample (0.3125 mm -> 0.16 Gy) inside the edges.
    half_sample_gy = 0.5 * 2.5 / 4 / 2
    assert result.d_min == pytest.approx(0.0 + half_sample_gy, abs=1e-6)
    # Dmax is the highest dose-grid value inside, as planning systems report it: the voxel centre
    # on the box's edge (x = 20 mm, 20 Gy) counts, where the samples stop half a sample short.
    assert result.d_max == pytest.approx(20.0, abs=1e-6)
    assert result.d95 == pytest.approx(1.0, abs=0.2)      # 5 % of 20 Gy
    assert result.d2 == pytest.approx(19.6, abs=0.2)      # 98 % of 20 Gy
    assert result.v_prescription_pct == pytest.approx(25.0, abs=0.5)  # D >= 15 Gy: x >= 10


def test_inner_contour_is_a_hole_under_the_even_odd_rule() -> None:
    grid = ramp_grid(a=5.0, b=0.0)
    outer = [box(-20, 20, -20, 20, z) for z in (0.0, 2.5)]
    inner = [box(-10, 10, -10, 10, z) for z in (0.0, 2.5)]
    result = dvh(outer + inner, grid, end_caps="half-slab")
    assert result is not None
    assert result.volume_cc == pytest.approx((40 * 40 - 20 * 20) * 2.5 * 2 / 1000, rel=1e-6)
    assert result.d_min == result.d_max == pytest.approx(5.0)


def test_cylinder_volume_converges_with_supersampling() -> None:
    grid = ramp_grid(a=2.0, b=0.0)
    angles = np.linspace(0, 2 * math.pi, 256, endpoint=False)
    circle = np.stack([15 * np.cos(angles), 15 * np.sin(angles)], axis=1)
    planes = [Contour(z, circle) for z in np.arange(-10.0, 10.01, 2.5)]
    exact = math.pi * 15**2 * 2.5 * len(planes) / 1000
    coarse = dvh(planes, grid, supersampling=1, end_caps="half-slab")
    fine = dvh(planes, grid, supersampling=8, end_caps="half-slab")
    assert coarse is not None and fine is not None
    assert abs(fine.volume_cc - exact) < abs(coarse.volume_cc - exact) + 1e-9
    assert fine.volume_cc == pytest.approx(exact, rel=0.005)
    assert fine.d_mean == pytest.approx(2.0)


def test_sample_budget_counts_the_structure_not_its_bounding_box() -> None:
    # A thin L (a crescent, a vessel along two sides): its bounding box is 7.8x its area. The
    # budget below allows the full factor for the L's own area, not for its box.
    grid = ramp_grid(a=3.0, b=0.0)
    ell = np.array([[-30.0, -30.0], [30.0, -30.0], [30.0, 30.0], [26.0, 30.0], [26.0, -26.0],
                    [-30.0, -26.0]])
    planes = [Contour(z, ell) for z in (-2.5, 0.0, 2.5)]
    area_mm2 = 60 * 4 + 4 * 56
    area_samples = 3 * area_mm2 / 2.5**2 * 16
    result = dvh(planes, grid, end_caps="half-slab", interpolation="none",
                 max_samples=int(area_samples * 1.5))
    assert result is not None
    assert result.supersampling == 4
    assert result.volume_cc == pytest.approx(area_mm2 * 2.5 * 3 / 1000, rel=0.1)


def test_outside_the_dose_grid_counts_as_zero_dose() -> None:
    result = dvh([box(40, 60, -5, 5, 0.0)], ramp_grid(a=10.0, b=0.0), prescription_gy=10.0)
    assert result is not None
    assert result.d_min == 0.0 and result.d_max == pytest.approx(10.0)
    assert result.v_prescription_pct == pytest.approx(50.0, abs=7.0)


def test_no_contour_no_dvh() -> None:
    assert dvh([], ramp_grid()) is None


def test_synthetic_plan_dvh_from_dicom_objects() -> None:
    from pydicom.dataset import Dataset

    from orthanc_plugin.plans.dvh_source import bundle_dvhs
    from tests.support.rtset import make_rt_set

    rtset = make_rt_set("DVH", n_slices=12, rows=64, columns=64)
    assert rtset.rtdose is not None
    dose = rtset.rtdose.copy()
    # A planning-system DVH for the PTV, stored next to the computed one.
    item = Dataset()
    ref = Dataset()
    ref.ReferencedROINumber = 2
    item.DVHReferencedROISequence = [ref]
    item.DVHType, item.DoseUnits = "CUMULATIVE", "GY"
    item.DVHMinimumDose, item.DVHMaximumDose, item.DVHMeanDose = 59.0, 61.8, 61.5
    dose.DVHSequence = [item]
    result = bundle_dvhs(rtset.rtstruct, dose, rtset.rtplan)
    by_roi = {row["roi"]: row for row in result["computed"]}
    assert set(by_roi) == {"BODY", "PTV", "Rectum"}
    ptv = by_roi["PTV"]
    # PTV: a 64-gon of radius 6.4 mm on slices 3..8 (2.5 mm apart), flat 61.8 Gy inside.
    radius, sides, slices = 0.10 * 63, 64, 6
    area = sides / 2 * radius**2 * math.sin(2 * math.pi / sides)
    # Identical contours interpolate to themselves; the default end caps reach a quarter of a
    # slice beyond the outermost planes: 5 gaps and 2 quarter slices.
    assert ptv["volume_cc"] == pytest.approx(area * 2.5 * (slices - 1 + 0.5) / 1000, rel=0.03)
    assert result["interpolation"] == "shape" and result["end_caps"] == "quarter-slab"
    assert ptv["Dmax"] == pytest.approx(61.8, abs=1e-3)
    assert ptv["D2"] == pytest.approx(61.8, abs=1e-3)
    assert 58.0 < ptv["D95"] <= 61.8 and 55.0 < ptv["Dmin"] <= ptv["D95"]
    assert ptv["V_prescription_pct"] > 90.0
    assert by_roi["Rectum"]["Dmean"] < ptv["Dmean"]
    assert result["prescription_gy"] == 60.0
    assert result["planning_system"] == {"PTV": {
        "Dmin": 59.0, "Dmean": 61.5, "Dmax": 61.8, "type": "CUMULATIVE", "dose_units": "GY",
        "volume_units": "", "volume_cc": None, "checks": []}}
    compared = result["comparison"][0]
    assert compared["roi"] == "PTV" and compared["Dmax"]["planning_system"] == 61.8
    assert compared["Dmax"]["difference"] == pytest.approx(ptv["Dmax"] - 61.8, abs=1e-4)


def test_end_caps_none_stops_at_the_outermost_planes_and_follows_uneven_spacing() -> None:
    from orthanc_plugin.plans.dvh import slab_thicknesses

    assert slab_thicknesses([0.0, 2.5, 5.0], 2.5, "none") == [1.25, 2.5, 1.25]
    assert slab_thicknesses([0.0, 2.5, 5.0], 2.5, "half-slab") == [2.5, 2.5, 2.5]
    assert slab_thicknesses([0.0, 3.0, 5.0], 2.5, "none") == [1.5, 2.5, 1.0]
    assert slab_thicknesses([7.0], 2.5, "none") == [2.5]
    planes = [box(-20, 20, -10, 10, z) for z in (0.0, 2.5, 5.0, 7.5, 10.0)]
    result = dvh(planes, ramp_grid(), end_caps="none", interpolation="none")
    assert result is not None and result.volume_cc == pytest.approx(40 * 20 * 10.0 / 1000, rel=1e-6)
    with pytest.raises(ValueError, match="end_caps"):
        dvh(planes, ramp_grid(), end_caps="round")
    with pytest.raises(ValueError, match="interpolation"):
        dvh(planes, ramp_grid(), interpolation="spline")


def test_shape_interpolation_between_planes() -> None:
    planes = [box(-20, 20, -10, 10, z) for z in (0.0, 2.5, 5.0, 7.5, 10.0)]
    # The same shape on every plane interpolates to itself: the planes' span, plus the caps.
    for caps, extra in (("none", 0.0), ("quarter-slab", 0.5 * 2.5), ("half-slab", 2.5)):
        result = dvh(planes, ramp_grid(), end_caps=caps, interpolation="shape")
        assert result is not None
        assert result.volume_cc == pytest.approx(40 * 20 * (10.0 + extra) / 1000, rel=1e-6)
    # A thin structure moving sideways from plane to plane (a scar drawn slice by slice): the
    # shapes in between are the blend of the two, not either one, so it is smaller than slabs.
    moving = [box(0, 5, -10, 10, 0.0), box(3.75, 8.75, -10, 10, 3.0),
              box(7.5, 12.5, -10, 10, 6.0)]
    slabs = dvh(moving, ramp_grid(), end_caps="none", interpolation="none")
    shaped = dvh(moving, ramp_grid(), end_caps="none", interpolation="shape")
    assert slabs is not None and shaped is not None
    assert slabs.volume_cc == pytest.approx(5 * 20 * 6.0 / 1000, rel=1e-6)
    assert 0.5 * slabs.volume_cc < shaped.volume_cc < 0.95 * slabs.volume_cc
    # Two parts of one ROI far apart (two lesions) are not bridged.
    apart = [box(-5, 5, -5, 5, z) for z in (0.0, 2.5, 40.0, 42.5)]
    result = dvh(apart, ramp_grid(), end_caps="none", interpolation="shape")
    assert result is not None and result.volume_cc == pytest.approx(2 * 10 * 10 * 2.5 / 1000,
                                                                    rel=1e-6)


def test_inner_contours_cut_holes_or_add() -> None:
    outer, inner = box(-20, 20, -20, 20, 0.0), box(-10, 10, -10, 10, 0.0)
    holed = dvh([outer, inner], ramp_grid(), default_thickness_mm=2.5)
    added = dvh([outer, inner], ramp_grid(), default_thickness_mm=2.5, inner_contours="add")
    assert holed is not None and added is not None
    assert holed.volume_cc == pytest.approx((40 * 40 - 20 * 20) * 2.5 / 1000, rel=1e-6)
    assert added.volume_cc == pytest.approx(40 * 40 * 2.5 / 1000, rel=1e-6)
    with pytest.raises(ValueError, match="inner_contours"):
        dvh([outer, inner], ramp_grid(), inner_contours="xor")


def test_bundle_names_the_conventions_it_computed_with() -> None:
    from orthanc_plugin.plans.dvh_source import bundle_dvhs
    from tests.support.rtset import make_rt_set

    rtset = make_rt_set("DVH", n_slices=6, rows=32, columns=32)
    assert rtset.rtdose is not None
    holes = bundle_dvhs(rtset.rtstruct, rtset.rtdose, rtset.rtplan)
    added = bundle_dvhs(rtset.rtstruct, rtset.rtdose, rtset.rtplan, end_caps="half-slab",
                        interpolation="none", inner_contours="add")
    assert "(end caps: quarter-slab)" in holes["method"]
    assert "inner contours cut holes (even-odd rule)" in holes["method"]
    assert holes["method"].startswith("shape interpolated")
    assert added["method"].startswith("slabs between contour planes (end caps: half-slab)")
    assert "inner contours add to the structure" in added["method"]
    assert "even-odd" not in added["method"]


def test_a_small_structure_also_gets_its_slab_volume() -> None:
    from orthanc_plugin.plans.dvh_source import SMALL_STRUCTURE_CC, bundle_dvhs
    from tests.support.rtset import make_rt_set

    rtset = make_rt_set("DVH", n_slices=12, rows=64, columns=64)
    assert rtset.rtdose is not None
    result = bundle_dvhs(rtset.rtstruct, rtset.rtdose, rtset.rtplan)
    by_roi = {row["roi"]: row for row in result["computed"]}
    ptv, body = by_roi["PTV"], by_roi["BODY"]
    assert ptv["volume_cc"] < SMALL_STRUCTURE_CC < body["volume_cc"]
    # The PTV: the same 64-gon on 6 planes 2.5 mm apart. Slabs: 6 whole slabs; the default:
    # 5 gaps and two quarter slabs.
    radius, sides = 0.10 * 63, 64
    area = sides / 2 * radius**2 * math.sin(2 * math.pi / sides)
    assert ptv["volume_cc_slabs"] == pytest.approx(area * 2.5 * 6 / 1000, rel=0.03)
    assert ptv["volume_cc_slabs"] > ptv["volume_cc"]
    assert "volume_cc_slabs" not in body
    slabs = bundle_dvhs(rtset.rtstruct, rtset.rtdose, rtset.rtplan, end_caps="half-slab",
                        interpolation="none")
    assert all("volume_cc_slabs" not in row for row in slabs["computed"])
    assert {row["roi"]: row for row in slabs["computed"]}["PTV"]["volume_cc"] == pytest.approx(
        ptv["volume_cc_slabs"])


def test_structures_keep_the_planning_systems_display_colours() -> None:
    from pydicom.dataset import Dataset

    from orthanc_plugin.plans.dvh_source import roi_colours

    structure_set = Dataset()
    rois, contours = [], []
    for number, name, colour in ((1, "BODY", [0, 255, 0]), (2, "PTV", [255, 0, 0]),
                                 (3, "Odd", [300, 0, 0]), (4, "None", None)):
        roi = Dataset()
        roi.ROINumber, roi.ROIName = number, name
        rois.append(roi)
        contour = Dataset()
        contour.ReferencedROINumber = number
        if colour is not None:
            contour.ROIDisplayColor = colour
        contours.append(contour)
    structure_set.StructureSetROISequence = rois
    structure_set.ROIContourSequence = contours
    assert roi_colours(structure_set) == {"BODY": [0, 255, 0], "PTV": [255, 0, 0]}
