"""The derived overlay series: overlay group as the standard says, references, planes, selection."""

from __future__ import annotations

from io import BytesIO

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import RTStructureSetStorage, generate_uid

from orthanc_plugin.contours.model import ContourError, SeriesGeometry, SliceGeometry
from orthanc_plugin.contours.overlay import (
    OverlayOptions,
    build_overlay_series,
    pack_overlay,
)
from orthanc_plugin.contours.planes import Plane
from tests.support.contour_shapes import Box, Sphere, make_rtstruct, pixel_centres, shape_polygons
from tests.support.rtset import make_ct_series

ROWS, COLUMNS, SPACING, THICKNESS, SLICES = 48, 64, (1.0, 0.8), 2.5, 12
MARKER = 3000


def round_trip(ds: Dataset) -> Dataset:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return dcmread(BytesIO(buffer.getvalue()))


@pytest.fixture(scope="module")
def scene() -> dict:
    ct = make_ct_series(
        patient_id="OVL", patient_name="Overlay^Test", study_uid=generate_uid(),
        frame_of_reference_uid=generate_uid(), n_slices=SLICES, rows=ROWS, columns=COLUMNS,
        pixel_spacing=SPACING, slice_thickness=THICKNESS, origin=(-25.2, -23.5, -13.75),
    )
    # A marker pixel at a known patient point, off-centre in every direction.
    k, j, i = 7, 30, 17
    pixels = np.frombuffer(ct[k].PixelData, dtype="<i2").reshape(ROWS, COLUMNS).copy()
    pixels[j, i] = MARKER
    ct[k].PixelData = pixels.tobytes()
    geometry = SeriesGeometry.of_slices(SliceGeometry.of_dataset(ds) for ds in ct)
    point = pixel_centres(geometry)[k, j, i]
    ptv = Sphere(tuple(point), 3.0)
    body = Box((-20.3, -15.2, -12.0), (18.7, 16.1, 13.0))
    rtstruct = make_rtstruct(ct, [("PTV", shape_polygons(ptv, ct)),
                                  ("Patient_Outline", shape_polygons(body, ct))])
    return {"ct": ct, "rtstruct": rtstruct, "point": point, "ptv": ptv, "geometry": geometry,
            "body": body}


def test_overlay_bits_are_packed_least_significant_bit_first_to_even_length() -> None:
    mask = np.zeros((3, 3), dtype=bool)
    mask[0, 0] = mask[1, 0] = mask[2, 2] = True  # bits 0, 3 and 8
    assert pack_overlay(mask) == bytes([0b00001001, 0b00000001])
    assert len(pack_overlay(np.ones((3, 7), dtype=bool))) == 4  # 21 bits: 3 bytes, padded


def test_axial_overlay_reads_back_equal_and_the_ignored_roi_is_absent(scene: dict) -> None:
    build = build_overlay_series(scene["ct"], scene["rtstruct"],
                                 OverlayOptions(ignore=("patient_outline",)))
    assert build.rois == ["PTV"] and build.ignored == ["Patient_Outline"]
    (series,) = build.series
    assert len(series.datasets) == SLICES
    truth = scene["ptv"].inside(pixel_centres(scene["geometry"]))
    read = [round_trip(ds) for ds in series.datasets]
    for k, ds in enumerate(read):
        # Repeating-group attributes are read by tag: pydicom has no keywords for them.
        assert ds[0x60000010].value == ROWS and ds[0x60000011].value == COLUMNS
        assert ds[0x60000040].value == "G" and list(ds[0x60000050].value) == [1, 1]
        assert ds[0x60000100].value == 1 and ds[0x60000102].value == 0
        assert len(ds[0x60003000].value) % 2 == 0
        assert np.array_equal(ds.overlay_array(0x6000).astype(bool), truth[k])
        assert 0x60020010 not in ds  # merged: one group only
    assert sum(int(ds.overlay_array(0x6000).sum()) for ds in read) == build.voxels["PTV"] > 0


def test_derived_series_references_its_sources_and_keeps_study_and_frame(scene: dict) -> None:
    ct, rtstruct = scene["ct"], scene["rtstruct"]
    build = build_overlay_series(ct, rtstruct, OverlayOptions(series_description="Contours RT"))
    datasets = build.series[0].datasets
    series_uids = {ds.SeriesInstanceUID for ds in datasets}
    assert len(series_uids) == 1 and series_uids.isdisjoint({ct[0].SeriesInstanceUID})
    assert {ds.SOPInstanceUID for ds in datasets}.isdisjoint({ds.SOPInstanceUID for ds in ct})
    for source, ds in zip(ct, datasets, strict=True):
        ds = round_trip(ds)
        assert ds.StudyInstanceUID == source.StudyInstanceUID
        assert ds.FrameOfReferenceUID == source.FrameOfReferenceUID
        assert list(ds.ImageType) == ["DERIVED", "SECONDARY", "AXIAL"]
        assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
        reference = ds.ReferencedInstanceSequence[0]
        assert reference.ReferencedSOPClassUID == RTStructureSetStorage
        assert reference.ReferencedSOPInstanceUID == rtstruct.SOPInstanceUID
        assert ds.ImagePositionPatient == source.ImagePositionPatient
        assert ds.PixelSpacing == source.PixelSpacing and ds.PixelData == source.PixelData
        assert ds.SeriesDescription == "Contours RT axial"
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    again = build_overlay_series(ct, rtstruct, OverlayOptions(series_description="Contours RT"))
    assert [ds.SOPInstanceUID for ds in again.series[0].datasets] == [
        ds.SOPInstanceUID for ds in datasets
    ]


@pytest.mark.parametrize("plane", [Plane.CORONAL, Plane.SAGITTAL, Plane.AXIAL])
def test_a_known_patient_point_lands_on_the_right_pixel(scene: dict, plane: Plane) -> None:
    build = build_overlay_series(
        scene["ct"], scene["rtstruct"], OverlayOptions(ignore=("patient_outline",), planes=(plane,))
    )
    datasets = [round_trip(ds) for ds in build.series[0].datasets]
    expected = {Plane.AXIAL: SLICES, Plane.CORONAL: ROWS, Plane.SAGITTAL: COLUMNS}[plane]
    assert len(datasets) == expected
    point = scene["point"]
    hits = []
    for ds in datasets:
        position = np.array([float(v) for v in ds.ImagePositionPatient])
        orientation = np.array([float(v) for v in ds.ImageOrientationPatient])
        row_spacing, column_spacing = (float(v) for v in ds.PixelSpacing)
        normal = np.cross(orientation[:3], orientation[3:])
        if abs((point - position) @ normal) > float(ds.SliceThickness) / 2:
            continue
        column = (point - position) @ orientation[:3] / column_spacing
        row = (point - position) @ orientation[3:] / row_spacing
        hits.append((ds, round(float(row)), round(float(column))))
        assert abs(row - round(row)) < 1e-3 and abs(column - round(column)) < 1e-3
    assert len(hits) == 1
    ds, row, column = hits[0]
    assert ds.pixel_array[row, column] == MARKER
    overlay = ds.overlay_array(0x6000)
    assert overlay[row, column] == 1
    rows, columns = np.nonzero(overlay)
    assert abs(rows.mean() - row) < 0.5 and abs(columns.mean() - column) < 0.5
    if plane is not Plane.AXIAL:
        assert list(ds.ImageType)[2] == "REFORMATTED"
        # Patients' feet at the bottom: rows run towards -z.
        assert [float(v) for v in ds.ImageOrientationPatient][3:] == [0, 0, -1]
        assert len(ds.SourceImageSequence) == SLICES


def test_one_overlay_group_per_roi(scene: dict) -> None:
    build = build_overlay_series(scene["ct"], scene["rtstruct"], OverlayOptions(per_roi=True))
    ds = round_trip(build.series[0].datasets[6])
    assert ds[0x60001500].value == "PTV" and ds[0x60021500].value == "Patient_Outline"
    assert ds.overlay_array(0x6002).sum() > ds.overlay_array(0x6000).sum() > 0


def test_keep_selects_and_outline_is_burned_in(scene: dict) -> None:
    build = build_overlay_series(
        scene["ct"], scene["rtstruct"], OverlayOptions(keep=("PTV",), burn_in_outline=True)
    )
    assert build.rois == ["PTV"]
    ds = round_trip(build.series[0].datasets[7])
    overlay = ds.overlay_array(0x6000).astype(bool)
    burned = ds.pixel_array == 32767
    assert burned.any() and np.all(overlay[burned]) and ds.BurnedInAnnotation == "YES"
    assert burned.sum() < overlay.sum()  # the outline, not the whole area


def test_too_many_rois_for_one_group_each(scene: dict) -> None:
    ct = scene["ct"]
    square = [(np.array([[-5, -5, 0], [5, -5, 0], [5, 5, 0], [-5, 5, 0]], dtype=float), None)]
    rtstruct = make_rtstruct(ct, [(f"R{n}", square) for n in range(17)])
    with pytest.raises(ContourError, match="at most 16"):
        build_overlay_series(ct, rtstruct, OverlayOptions(per_roi=True))


def test_the_build_pauses_between_rois_and_between_derived_images(scene: dict) -> None:
    """Where the worker holds while a modality sends (reception.py): once per ROI rasterized and
    once per derived image of every plane, so CPU work yields as often as its REST calls do."""
    pauses: list[int] = []
    options = OverlayOptions(planes=(Plane.AXIAL,))
    build = build_overlay_series(scene["ct"], scene["rtstruct"], options,
                                 pause=lambda: pauses.append(1))
    images = sum(len(series.datasets) for series in build.series)
    assert len(pauses) == len(build.rois) + images


def test_a_reformat_also_pauses_between_source_slices_it_decodes(scene: dict) -> None:
    """A coronal plane needs the CT's pixels as one volume: decoding it is the longest stretch
    of CPU in the build, so it holds once per source slice too, before the slice is decoded."""
    events: list[str] = []

    class Watched(type(scene["ct"][0])):  # type: ignore[misc]
        @property
        def pixel_array(self) -> np.ndarray:
            events.append("decode")
            return super().pixel_array

    sources = []
    for ds in scene["ct"]:
        watched = Watched(ds)
        watched.file_meta = ds.file_meta
        sources.append(watched)
    build = build_overlay_series(sources, scene["rtstruct"],
                                 OverlayOptions(planes=(Plane.CORONAL,)),
                                 pause=lambda: events.append("pause"))
    assert events.count("pause") == len(build.rois) + len(sources) + len(build.series[0].datasets)
    # Each slice of the volume is decoded right after a pause: no two in one stretch.
    decodes = [at for at, event in enumerate(events) if event == "decode"][:len(sources)]
    assert len(decodes) == len(sources)
    assert all(events[at - 1] == "pause" for at in decodes)
