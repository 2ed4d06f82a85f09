"""Analytic shapes for the contour tests: contours drawn on image planes, and their pixel truth.

A shape gives, for one image plane, the closed polygons it cuts there (in patient mm) and, for any
patient-space points, whether they are inside. The truth of a series is the set of pixel centres
inside; an exact rasterizer reproduces it up to the polygon's chords, which are kept far below a
pixel by drawing circles with many points.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.uid import CTImageStorage, RTStructureSetStorage, generate_uid

from orthanc_plugin.contours.model import SeriesGeometry, SliceGeometry
from tests.support.rtset import _ds, _file_meta

CONTOUR_DATA = 0x30060050
# Chords of at most this many mm between circle points (and never fewer than MIN_POINTS).
CHORD_MM = 0.5
MIN_POINTS = 256


def _circle(centre: np.ndarray, radius: float, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    n = max(MIN_POINTS, math.ceil(2 * math.pi * radius / CHORD_MM))
    angles = 2 * math.pi * np.arange(n) / n
    return centre + radius * (np.cos(angles)[:, None] * u + np.sin(angles)[:, None] * v)


@dataclass(frozen=True)
class Sphere:
    centre: tuple[float, float, float]
    radius: float

    def polygons(self, plane: SliceGeometry) -> list[np.ndarray]:
        centre = np.asarray(self.centre)
        normal = plane.normal
        distance = float((centre - plane.position) @ normal)
        if abs(distance) >= self.radius:
            return []
        in_plane = centre - distance * normal
        radius = math.sqrt(self.radius**2 - distance**2)
        return [_circle(in_plane, radius, plane.row_direction, plane.column_direction)]

    def inside(self, points: np.ndarray) -> np.ndarray:
        return np.sum((points - np.asarray(self.centre)) ** 2, axis=-1) < self.radius**2


@dataclass(frozen=True)
class Ring:
    """A tube around an axis along the plane normal: outer radius, a hole, a height range."""

    centre: tuple[float, float, float]
    outer: float
    inner: float
    half_height: float

    def polygons(self, plane: SliceGeometry) -> list[np.ndarray]:
        centre = np.asarray(self.centre)
        distance = float((centre - plane.position) @ plane.normal)
        if abs(distance) > self.half_height:
            return []
        in_plane = centre - distance * plane.normal
        u, v = plane.row_direction, plane.column_direction
        # The hole first: the even-odd rule must not depend on the order.
        return [_circle(in_plane, self.inner, u, v), _circle(in_plane, self.outer, u, v)]

    def inside(self, points: np.ndarray, normal: np.ndarray) -> np.ndarray:
        relative = points - np.asarray(self.centre)
        height = relative @ normal
        radial2 = np.sum(relative**2, axis=-1) - height**2
        return (
            (np.abs(height) <= self.half_height)
            & (radial2 < self.outer**2)
            & (radial2 > self.inner**2)
        )


@dataclass(frozen=True)
class Box:
    """An axis-aligned box in patient space (drawn on axial planes)."""

    low: tuple[float, float, float]
    high: tuple[float, float, float]

    def polygons(self, plane: SliceGeometry) -> list[np.ndarray]:
        z = float(plane.position[2])
        if not self.low[2] <= z <= self.high[2]:
            return []
        (x0, y0, _), (x1, y1, _) = self.low, self.high
        return [np.array([[x0, y0, z], [x1, y0, z], [x1, y1, z], [x0, y1, z]])]

    def inside(self, points: np.ndarray) -> np.ndarray:
        low, high = np.asarray(self.low), np.asarray(self.high)
        inside_xy = np.all((points[..., :2] > low[:2]) & (points[..., :2] < high[:2]), axis=-1)
        return inside_xy & (points[..., 2] >= low[2]) & (points[..., 2] <= high[2])


def pixel_centres(geometry: SeriesGeometry) -> np.ndarray:
    """Patient coordinates of every pixel centre, shape (slices, rows, columns, 3)."""
    first = geometry.slices[0]
    rows = np.arange(first.rows)[:, None, None] * first.row_spacing * first.column_direction
    columns = np.arange(first.columns)[None, :, None] * first.column_spacing * first.row_direction
    positions = np.stack([s.position for s in geometry.slices])
    return positions[:, None, None, :] + (rows + columns)[None]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def plane_series(
    *,
    rows: int,
    columns: int,
    pixel_spacing: tuple[float, float],
    n_slices: int,
    slice_spacing: float,
    row_direction: Sequence[float],
    column_direction: Sequence[float],
    centre: Sequence[float] = (0.0, 0.0, 0.0),
    study_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
) -> list[Dataset]:
    """Image datasets (zero pixels) of any orientation, centred on `centre`."""
    u = np.asarray(row_direction, dtype=float)
    v = np.asarray(column_direction, dtype=float)
    normal = np.cross(u, v)
    row_spacing, column_spacing = pixel_spacing
    corner = (
        np.asarray(centre, dtype=float)
        - u * column_spacing * (columns - 1) / 2
        - v * row_spacing * (rows - 1) / 2
        - normal * slice_spacing * (n_slices - 1) / 2
    )
    study_uid = study_uid or generate_uid()
    frame = frame_of_reference_uid or generate_uid()
    series_uid = generate_uid()
    pixels = np.zeros((rows, columns), dtype="<i2").tobytes()
    series = []
    for index in range(n_slices):
        ds = Dataset()
        uid = generate_uid()
        ds.file_meta = _file_meta(CTImageStorage, uid)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, uid
        ds.Modality = "CT"
        ds.PatientID, ds.PatientName = "SHAPES", "Shapes^Test"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.FrameOfReferenceUID = frame
        ds.InstanceNumber = index + 1
        ds.ImagePositionPatient = [_ds(float(c)) for c in corner + normal * slice_spacing * index]
        ds.ImageOrientationPatient = [_ds(float(c)) for c in (*u, *v)]
        ds.PixelSpacing = [_ds(row_spacing), _ds(column_spacing)]
        ds.SliceThickness = _ds(slice_spacing)
        ds.Rows, ds.Columns = rows, columns
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = "-1024", "1"
        ds.PixelData = pixels
        series.append(ds)
    return series


def make_rtstruct(
    images: Sequence[Dataset],
    rois: Sequence[tuple[str, Sequence[tuple[np.ndarray, str | None]]]],
    *,
    reference_images: bool = True,
) -> Dataset:
    """An RTSTRUCT with ROIs given as (name, [(polygon, referenced SOP UID or None), ...])."""
    first = images[0]
    uid = generate_uid()
    ds = Dataset()
    ds.file_meta = _file_meta(RTStructureSetStorage, uid)
    ds.SOPClassUID, ds.SOPInstanceUID = RTStructureSetStorage, uid
    ds.Modality = "RTSTRUCT"
    for keyword in ("PatientID", "PatientName", "StudyInstanceUID", "StudyDate", "StudyTime",
                    "StudyID", "AccessionNumber", "ReferringPhysicianName", "PatientBirthDate",
                    "PatientSex", "StudyDescription"):
        if keyword in first:
            setattr(ds, keyword, first.data_element(keyword).value)
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber, ds.InstanceNumber = 2, 1
    ds.StructureSetLabel = "SHAPES"
    now = datetime.now()
    ds.StructureSetDate, ds.StructureSetTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.FrameOfReferenceUID = first.FrameOfReferenceUID
    series_item = Dataset()
    series_item.SeriesInstanceUID = first.SeriesInstanceUID
    if reference_images:
        series_item.ContourImageSequence = [_image_ref(image) for image in images]
    study_item = Dataset()
    study_item.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    study_item.ReferencedSOPInstanceUID = first.StudyInstanceUID
    study_item.RTReferencedSeriesSequence = [series_item]
    frame_item = Dataset()
    frame_item.FrameOfReferenceUID = first.FrameOfReferenceUID
    frame_item.RTReferencedStudySequence = [study_item]
    ds.ReferencedFrameOfReferenceSequence = [frame_item]
    structure_rois, roi_contours = [], []
    for number, (name, polygons) in enumerate(rois, start=1):
        roi = Dataset()
        roi.ROINumber, roi.ROIName = number, name
        roi.ReferencedFrameOfReferenceUID = first.FrameOfReferenceUID
        roi.ROIGenerationAlgorithm = "AUTOMATIC"
        structure_rois.append(roi)
        contours = []
        for index, (polygon, image_uid) in enumerate(polygons, start=1):
            item = Dataset()
            if image_uid is not None:
                reference = Dataset()
                reference.ReferencedSOPClassUID = CTImageStorage
                reference.ReferencedSOPInstanceUID = image_uid
                item.ContourImageSequence = [reference]
            item.ContourGeometricType = "CLOSED_PLANAR"
            item.NumberOfContourPoints = len(polygon)
            item.ContourNumber = index
            item[CONTOUR_DATA] = _raw_ds(np.asarray(polygon, dtype=float).ravel())
            contours.append(item)
        roi_contour = Dataset()
        roi_contour.ReferencedROINumber = number
        roi_contour.ROIDisplayColor = [255, 0, 0]
        roi_contour.ContourSequence = contours
        roi_contours.append(roi_contour)
    ds.StructureSetROISequence = structure_rois
    ds.ROIContourSequence = roi_contours
    observations = []
    for number, (name, _) in enumerate(rois, start=1):
        observation = Dataset()
        observation.ObservationNumber = observation.ReferencedROINumber = number
        observation.ROIObservationLabel = name[:16]
        observation.RTROIInterpretedType = "ORGAN"
        observation.ROIInterpreter = ""
        observations.append(observation)
    ds.RTROIObservationsSequence = observations
    return ds


def _raw_ds(values: np.ndarray) -> RawDataElement:
    """ContourData as the bytes a file holds: pydicom would check every DS value one by one,
    which for a body contour on hundreds of slices takes longer than everything else."""
    # DS holds 16 characters at most; 4 decimals keep a tenth of a micrometre.
    text = "\\".join(f"{value:.4f}" for value in values).encode("ascii")
    if len(text) % 2:
        text += b" "
    if len(text) > 0xFFFE:
        # Explicit VR stores a DS length in 16 bits: a bigger contour cannot be written.
        raise ValueError(f"ContourData of {len(values)} values does not fit one DS element")
    return RawDataElement(Tag(CONTOUR_DATA), "DS", len(text), text, 0, False, True)


def shape_polygons(
    shape: Sphere | Ring | Box, images: Sequence[Dataset], *, with_uids: bool = True
) -> list[tuple[np.ndarray, str | None]]:
    polygons: list[tuple[np.ndarray, str | None]] = []
    for image in images:
        plane = SliceGeometry.of_dataset(image)
        for polygon in shape.polygons(plane):
            polygons.append((polygon, str(image.SOPInstanceUID) if with_uids else None))
    return polygons


def _image_ref(image: Dataset) -> Dataset:
    reference = Dataset()
    reference.ReferencedSOPClassUID = image.SOPClassUID
    reference.ReferencedSOPInstanceUID = image.SOPInstanceUID
    return reference
