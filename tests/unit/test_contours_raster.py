"""The rasterizer against analytic pixel-centre truth, on every geometry the issue names."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from orthanc_plugin.contours.model import (
    ContourError,
    ContourLimits,
    SeriesGeometry,
    SliceGeometry,
    parse_structure_set,
    roi_selected,
)
from orthanc_plugin.contours.raster import rasterize_roi
from tests.support.contour_shapes import (
    Box,
    Ring,
    Sphere,
    dice,
    make_rtstruct,
    pixel_centres,
    plane_series,
    shape_polygons,
)
from tests.support.rtset import make_ct_series

SQRT_HALF = math.sqrt(0.5)


def ct(rows: int, columns: int, spacing: tuple[float, float], n_slices: int,
       thickness: float) -> list[Dataset]:
    row_spacing, column_spacing = spacing
    return make_ct_series(
        patient_id="SHAPES", patient_name="Shapes^Test", study_uid=generate_uid(),
        frame_of_reference_uid=generate_uid(), n_slices=n_slices, rows=rows, columns=columns,
        pixel_spacing=spacing, slice_thickness=thickness,
        origin=(-(columns - 1) * column_spacing / 2, -(rows - 1) * row_spacing / 2,
                -(n_slices - 1) * thickness / 2),
    )


def geometry_of(images: list[Dataset]) -> SeriesGeometry:
    return SeriesGeometry.of_slices(SliceGeometry.of_dataset(ds) for ds in images)


def rasterize(images: list[Dataset], polygons: list, name: str = "SHAPE") -> tuple:
    rtstruct = parse_structure_set(make_rtstruct(images, [(name, polygons)]))
    geometry = geometry_of(images)
    result = rasterize_roi(rtstruct.rois[0], geometry)
    return result, geometry


def assert_matches_truth(mask: np.ndarray, truth: np.ndarray) -> None:
    assert truth.sum() > 0
    assert mask.shape == truth.shape
    assert dice(mask, truth) >= 0.999
    assert abs(int(mask.sum()) - int(truth.sum())) <= 0.01 * truth.sum()


SERIES = {
    "512x512": dict(rows=512, columns=512, spacing=(1.0, 1.0), n_slices=40, thickness=1.0),
    "384x512 1.0/0.8": dict(rows=384, columns=512, spacing=(1.0, 0.8), n_slices=40,
                            thickness=1.25),
}

SHAPES = {
    "sphere": Sphere((12.3, -20.7, 0.4), 17.0),
    "sphere 5 mm": Sphere((-40.2, 30.55, 2.1), 5.0),
    "sphere 3 mm": Sphere((60.15, 10.35, -3.3), 3.0),
    "box": Box((-30.37, -12.61, -9.8), (21.44, 33.29, 11.3)),
}


@pytest.mark.parametrize("series", SERIES)
@pytest.mark.parametrize("shape", SHAPES)
def test_shapes_match_pixel_centre_truth(series: str, shape: str) -> None:
    images = ct(**SERIES[series])
    solid = SHAPES[shape]
    result, geometry = rasterize(images, shape_polygons(solid, images))
    truth = solid.inside(pixel_centres(geometry))
    assert_matches_truth(result.mask.full(), truth)
    assert result.unplaced == ()


@pytest.mark.parametrize("series", SERIES)
def test_ring_keeps_its_hole_whatever_the_contour_order(series: str) -> None:
    images = ct(**SERIES[series])
    ring = Ring((3.3, -7.9, 0.2), outer=40.0, inner=18.0, half_height=10.1)
    result, geometry = rasterize(images, shape_polygons(ring, images))
    truth = ring.inside(pixel_centres(geometry), geometry.normal)
    mask = result.mask.full()
    assert_matches_truth(mask, truth)
    k, j, i = (round(v) for v in geometry.patient_to_index(ring.centre))
    assert not mask[k, j, i]  # the centre of the hole is outside


ORIENTATIONS = {
    "coronal": ((1, 0, 0), (0, 0, -1)),
    "sagittal": ((0, 1, 0), (0, 0, -1)),
    "oblique": ((SQRT_HALF, SQRT_HALF, 0), (0, 0, -1)),
    "oblique twice": ((SQRT_HALF, 0.5, 0.5), (-SQRT_HALF, 0.5, 0.5)),
}


@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_sphere_on_any_orientation_with_anisotropic_pixels(orientation: str) -> None:
    row_direction, column_direction = ORIENTATIONS[orientation]
    images = plane_series(
        rows=120, columns=160, pixel_spacing=(1.0, 0.8), n_slices=50, slice_spacing=1.0,
        row_direction=row_direction, column_direction=column_direction, centre=(5.0, -3.0, 12.0),
    )
    for solid in (Sphere((9.1, -6.3, 14.7), 15.0), Sphere((0.3, 1.2, 8.8), 3.0)):
        result, geometry = rasterize(images, shape_polygons(solid, images))
        assert_matches_truth(result.mask.full(), solid.inside(pixel_centres(geometry)))


def test_contours_without_image_references_are_placed_by_position() -> None:
    images = ct(**SERIES["384x512 1.0/0.8"])
    solid = Sphere((0.4, 0.2, 0.1), 8.0)
    polygons = shape_polygons(solid, images, with_uids=False)
    # One contour names an image the series does not have: it is placed by position too.
    polygons[0] = (polygons[0][0], generate_uid())
    rtstruct = parse_structure_set(make_rtstruct(images, [("S", polygons)], reference_images=False))
    geometry = geometry_of(images)
    result = rasterize_roi(rtstruct.rois[0], geometry)
    assert_matches_truth(result.mask.full(), solid.inside(pixel_centres(geometry)))


def test_contours_that_fit_no_slice_are_reported() -> None:
    images = ct(rows=64, columns=64, spacing=(1.0, 1.0), n_slices=5, thickness=2.5)
    z_last = float(images[-1].ImagePositionPatient[2])
    square = np.array([[-5, -5, 0], [5, -5, 0], [5, 5, 0], [-5, 5, 0]], dtype=float)
    beyond = square + np.array([0, 0, z_last + 2.0])      # 2 mm past the last slice: more than 1.25 mm
    between = square + np.array([0, 0, z_last - 1.25 + 0.01])  # within half a spacing of the last slice
    tilted = square.copy()
    tilted[:, 2] = [-3.0, -3.0, 3.0, 3.0]           # not parallel to the axial planes
    result, _ = rasterize(images, [(beyond, None), (between, None), (tilted, None)])
    reasons = {item.contour_number: item.reason for item in result.unplaced}
    assert set(reasons) == {1, 3}
    assert "half a slice spacing" in reasons[1] and "2.00 mm" in reasons[1]
    assert "not parallel" in reasons[3]
    assert result.mask.voxels == 100  # only the contour within reach, on the last slice
    assert result.mask.offset[0] == len(images) - 1


def test_a_body_contour_on_300_slices_rasterizes_to_the_ellipse_it_draws() -> None:
    # Its speed is bench/contours.py's to measure (a ratio, medians): a timed assertion here
    # failed on a busy machine (1.09 s against 1.0) and proved nothing about the code.
    images = ct(rows=512, columns=512, spacing=(0.98, 0.98), n_slices=300, thickness=1.0)
    geometry = geometry_of(images)
    angles = 2 * math.pi * np.arange(1000) / 1000
    polygons = []
    for image in images:
        z = float(image.ImagePositionPatient[2])
        polygon = np.stack([210 * np.cos(angles), 150 * np.sin(angles), np.full(1000, z)], axis=1)
        polygons.append((polygon, str(image.SOPInstanceUID)))
    roi = parse_structure_set(make_rtstruct(images, [("BODY", polygons)])).rois[0]
    result = rasterize_roi(roi, geometry)
    centres = pixel_centres(SeriesGeometry.of_slices(geometry.slices[:1]))[0]
    plane = (centres[..., 0] / 210) ** 2 + (centres[..., 1] / 150) ** 2 < 1
    truth = np.broadcast_to(plane, geometry.shape)
    assert dice(result.mask.full(), truth) >= 0.999


def test_roi_selection_by_case_insensitive_globs() -> None:
    assert not roi_selected("Patient_Outline", ["patient_outline"], [])
    assert not roi_selected("External BODY", ["*body*"], [])
    assert roi_selected("PTV", ["*body*", "skull"], [])
    assert roi_selected("PTV_high", [], ["ptv*"]) and not roi_selected("CTV", [], ["ptv*"])
    assert not roi_selected("PTV_body", ["*body*"], ["ptv*"])  # ignore wins over keep


def test_geometry_errors_are_clear() -> None:
    images = ct(rows=16, columns=16, spacing=(1.0, 1.0), n_slices=2, thickness=2.0)
    del images[0].PixelSpacing
    with pytest.raises(ContourError, match="no usable plane geometry"):
        SliceGeometry.of_dataset(images[0])
    other = plane_series(rows=16, columns=16, pixel_spacing=(1, 1), n_slices=1, slice_spacing=1,
                         row_direction=(0, 1, 0), column_direction=(0, 0, -1))
    with pytest.raises(ContourError, match="differs in orientation"):
        SeriesGeometry.of_slices(SliceGeometry.of_dataset(ds) for ds in [images[1], other[0]])
    with pytest.raises(ContourError, match="not an RTSTRUCT"):
        parse_structure_set(images[1])


@pytest.mark.parametrize("bad", ["NaN", "inf", "-inf"])
def test_a_contour_point_that_is_not_finite_is_refused(bad: str) -> None:
    from pydicom import dcmread
    from pydicom.filebase import DicomBytesIO

    images = ct(rows=16, columns=16, spacing=(1.0, 1.0), n_slices=2, thickness=2.0)
    z = float(images[0].ImagePositionPatient[2])
    triangle = np.array([[2.0, 2.0, z], [10.0, 2.0, z], [10.0, 10.0, z]])
    rtstruct = make_rtstruct(images, [("S", [(triangle, None)])])
    item = rtstruct.ROIContourSequence[0].ContourSequence[0]
    points = list(item.ContourData)
    points[1] = bad
    item.ContourData = points
    with pytest.raises(ContourError, match="not a finite number"):
        parse_structure_set(rtstruct)
    # The same read from a file, as the overlay reads it (raw bytes, parsed in one numpy call).
    buffer = DicomBytesIO()
    rtstruct.save_as(buffer, enforce_file_format=True)
    with pytest.raises(ContourError, match="not a finite number"):
        parse_structure_set(dcmread(DicomBytesIO(buffer.getvalue())))


def test_limits_are_the_callers_and_two_can_be_used_side_by_side() -> None:
    # RtGateway.Contours limits are handed down from install(), never set on the module: a
    # structure set refused under tight limits still parses under the defaults.
    images = ct(rows=16, columns=16, spacing=(1.0, 1.0), n_slices=2, thickness=2.0)
    z = float(images[0].ImagePositionPatient[2])
    triangle = np.array([[2.0, 2.0, z], [10.0, 2.0, z], [10.0, 10.0, z]])
    rtstruct = make_rtstruct(images, [("S", [(triangle, None)])])
    tight = ContourLimits(max_points_per_contour=2)
    with pytest.raises(ContourError, match="more than the limit of 2"):
        parse_structure_set(rtstruct, tight)
    assert parse_structure_set(rtstruct).rois[0].name == "S"
    with pytest.raises(ContourError, match=r"more than 2 contour points"):
        parse_structure_set(rtstruct, ContourLimits(max_points_per_structure_set=2))
