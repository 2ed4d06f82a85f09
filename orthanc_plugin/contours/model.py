"""Pure values for contours: image geometry of a series and the ROIs of an RTSTRUCT (pydicom only)."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset

CONTOUR_DATA_TAG = 0x30060050
# Orientations of one series may differ by rounding in the written decimal strings.
ORIENTATION_TOLERANCE = 1e-4


class ContourError(ValueError):
    """The RTSTRUCT or the image series cannot be rasterized; the message says why."""


@dataclass(frozen=True, eq=False)
class SliceGeometry:
    """One image plane. DICOM PixelSpacing is (distance between rows, distance between columns)."""

    sop_instance_uid: str
    position: np.ndarray          # ImagePositionPatient: centre of the first transmitted pixel
    row_direction: np.ndarray     # IOP[0:3]: the direction in which the column index grows
    column_direction: np.ndarray  # IOP[3:6]: the direction in which the row index grows
    row_spacing: float
    column_spacing: float
    rows: int
    columns: int

    @classmethod
    def of_dataset(cls, ds: Dataset) -> SliceGeometry:
        try:
            orientation = np.array([float(v) for v in ds.ImageOrientationPatient], dtype=float)
            position = np.array([float(v) for v in ds.ImagePositionPatient], dtype=float)
            row_spacing, column_spacing = (float(v) for v in ds.PixelSpacing)
            rows, columns = int(ds.Rows), int(ds.Columns)
        except (AttributeError, TypeError, ValueError) as error:
            uid = ds.get("SOPInstanceUID", "?")
            raise ContourError(f"image {uid} has no usable plane geometry: {error}") from error
        if orientation.size != 6 or position.size != 3 or row_spacing <= 0 or column_spacing <= 0:
            raise ContourError(f"image {ds.get('SOPInstanceUID', '?')} has an invalid geometry")
        return cls(
            str(ds.get("SOPInstanceUID", "")), position, _unit(orientation[:3]),
            _unit(orientation[3:]), row_spacing, column_spacing, rows, columns,
        )

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.row_direction, self.column_direction)


@dataclass(frozen=True, eq=False)
class SeriesGeometry:
    """The slices of one image series, sorted along the plane normal."""

    slices: tuple[SliceGeometry, ...]
    normal: np.ndarray
    offsets: np.ndarray  # position . normal of each slice, increasing
    slice_spacing: float
    index_by_uid: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of_slices(cls, slices: Iterable[SliceGeometry], thickness: float = 0.0) -> SeriesGeometry:
        items = list(slices)
        if not items:
            raise ContourError("the image series has no slices")
        first = items[0]
        for item in items[1:]:
            same_plane = (
                np.allclose(item.row_direction, first.row_direction, atol=ORIENTATION_TOLERANCE)
                and np.allclose(
                    item.column_direction, first.column_direction, atol=ORIENTATION_TOLERANCE
                )
            )
            same_grid = (item.rows, item.columns) == (first.rows, first.columns) and np.isclose(
                item.row_spacing, first.row_spacing) and np.isclose(item.column_spacing, first.column_spacing)
            if not same_plane or not same_grid:
                raise ContourError(
                    f"image {item.sop_instance_uid} differs in orientation or size from the series"
                )
        normal = first.normal
        items.sort(key=lambda s: float(s.position @ normal))
        offsets = np.array([float(s.position @ normal) for s in items])
        gaps = np.diff(offsets)
        spacing = float(np.median(gaps)) if gaps.size else float(thickness or 1.0)
        if spacing <= 0:
            raise ContourError("two images of the series lie in the same plane")
        return cls(
            tuple(items), normal, offsets, spacing,
            {s.sop_instance_uid: k for k, s in enumerate(items)},
        )

    @property
    def shape(self) -> tuple[int, int, int]:
        first = self.slices[0]
        return len(self.slices), first.rows, first.columns

    def is_uniform(self, tolerance: float = 0.01) -> bool:
        gaps = np.diff(self.offsets)
        return bool(gaps.size == 0 or np.all(np.abs(gaps - self.slice_spacing) <= tolerance))

    def patient_to_index(self, point: Sequence[float]) -> tuple[float, float, float]:
        """(slice, row, column) of a patient-space point, as fractional indices."""
        point_array = np.asarray(point, dtype=float)
        k = float(np.interp(point_array @ self.normal, self.offsets, np.arange(len(self.slices))))
        geometry = self.slices[round(k)]
        relative = point_array - geometry.position
        return (
            k,
            float(relative @ geometry.column_direction / geometry.row_spacing),
            float(relative @ geometry.row_direction / geometry.column_spacing),
        )


@dataclass(frozen=True, eq=False)
class Contour:
    points: np.ndarray  # (n, 3) patient coordinates in mm
    geometric_type: str
    image_uids: tuple[str, ...]
    number: int = 0


@dataclass(frozen=True, eq=False)
class Roi:
    number: int
    name: str
    contours: tuple[Contour, ...]
    colour: tuple[int, int, int] = (255, 0, 0)


@dataclass(frozen=True, eq=False)
class StructureSet:
    sop_instance_uid: str
    series_uid: str
    study_uid: str
    frame_of_reference_uid: str
    referenced_series_uids: tuple[str, ...]
    referenced_image_uids: tuple[str, ...]
    rois: tuple[Roi, ...]

    def select(self, ignore: Sequence[str] = (), keep: Sequence[str] = ()) -> list[Roi]:
        return [roi for roi in self.rois if roi_selected(roi.name, ignore, keep)]


def roi_selected(name: str, ignore: Sequence[str], keep: Sequence[str]) -> bool:
    """Case-insensitive globs: `keep` (when given) must match, `ignore` must not."""
    folded = name.strip().casefold()

    def matches(patterns: Sequence[str]) -> bool:
        return any(fnmatch.fnmatchcase(folded, p.strip().casefold()) for p in patterns)

    if keep and not matches(keep):
        return False
    return not matches(ignore)


@dataclass(frozen=True)
class ContourLimits:
    """Beyond these a structure set is refused with the reason (audit + quarantine), not rasterized:
    a real body contour has a few thousand points; a 100,000-point contour is an error or an attack."""

    max_points_per_contour: int = 50_000
    max_points_per_structure_set: int = 5_000_000


# The site's limits (RtGateway.Contours) are handed down from install(); these when not given.
DEFAULT_LIMITS = ContourLimits()


def parse_structure_set(ds: Dataset, limits: ContourLimits = DEFAULT_LIMITS) -> StructureSet:
    if str(ds.get("Modality", "")) != "RTSTRUCT" and "ROIContourSequence" not in ds:
        raise ContourError("not an RTSTRUCT: no ROIContourSequence")
    names = {
        int(item.ROINumber): str(item.get("ROIName", "")).strip()
        for item in ds.get("StructureSetROISequence", [])
        if "ROINumber" in item
    }
    series_uids: list[str] = []
    image_uids: list[str] = []
    frame_uid = str(ds.get("FrameOfReferenceUID", ""))
    for frame in ds.get("ReferencedFrameOfReferenceSequence", []):
        frame_uid = frame_uid or str(frame.get("FrameOfReferenceUID", ""))
        for study in frame.get("RTReferencedStudySequence", []):
            for series in study.get("RTReferencedSeriesSequence", []):
                series_uids.append(str(series.get("SeriesInstanceUID", "")))
                image_uids += [
                    str(image.get("ReferencedSOPInstanceUID", ""))
                    for image in series.get("ContourImageSequence", [])
                ]
    rois = []
    total_points = 0
    for item in ds.get("ROIContourSequence", []):
        number = int(item.get("ReferencedROINumber", 0))
        colour = tuple(int(v) for v in item.get("ROIDisplayColor", [255, 0, 0]))[:3]
        contours = tuple(
            _contour(contour, index) for index, contour in enumerate(item.get("ContourSequence", []))
        )
        name = names.get(number, f"ROI {number}")
        for contour in contours:
            total_points += len(contour.points)
            if len(contour.points) > limits.max_points_per_contour:
                raise ContourError(
                    f"ROI '{name}' contour {contour.number} has {len(contour.points)} points, more "
                    f"than the limit of {limits.max_points_per_contour} "
                    "(RtGateway.Contours.MaxPointsPerContour)")
        if total_points > limits.max_points_per_structure_set:
            raise ContourError(
                f"the structure set has more than {limits.max_points_per_structure_set} contour "
                "points (RtGateway.Contours.MaxPointsPerStructureSet)")
        rois.append(Roi(number, name, contours,
                        colour if len(colour) == 3 else (255, 0, 0)))
    return StructureSet(
        sop_instance_uid=str(ds.get("SOPInstanceUID", "")),
        series_uid=str(ds.get("SeriesInstanceUID", "")),
        study_uid=str(ds.get("StudyInstanceUID", "")),
        frame_of_reference_uid=frame_uid,
        referenced_series_uids=tuple(u for u in series_uids if u),
        referenced_image_uids=tuple(u for u in image_uids if u),
        rois=tuple(rois),
    )


def _contour(item: Dataset, index: int) -> Contour:
    points = _contour_points(item)
    if points.size % 3:
        raise ContourError(f"contour {index + 1}: ContourData is not a list of (x, y, z) triplets")
    return Contour(
        points=points.reshape(-1, 3),
        geometric_type=str(item.get("ContourGeometricType", "CLOSED_PLANAR")).upper(),
        image_uids=tuple(
            str(ref.get("ReferencedSOPInstanceUID", "")) for ref in item.get("ContourImageSequence", [])
        ),
        number=int(item.get("ContourNumber", index + 1) or index + 1),
    )


def _contour_points(item: Dataset) -> np.ndarray:
    # Converting a body contour's thousands of DS values one by one through pydicom costs far more
    # than the rasterization; the raw bytes parse in one numpy call.
    element = item.get_item(CONTOUR_DATA_TAG) if CONTOUR_DATA_TAG in item else None
    if element is None:
        return np.zeros(0)
    try:
        if isinstance(element, RawDataElement) and isinstance(element.value, bytes):
            text = element.value.strip(b" \x00")
            return _finite(np.array(text.split(b"\\"), dtype=float)) if text else np.zeros(0)
        value = item.ContourData
        values = value if isinstance(value, list | tuple) or hasattr(value, "__len__") else [value]
        points = np.array([float(v) for v in values], dtype=float)
    except ValueError as error:
        raise ContourError(f"ContourData holds a value that is not a number: {error}") from error
    return _finite(points)


def _finite(points: np.ndarray) -> np.ndarray:
    # "NaN" and "inf" parse as floats; rasterized they would paint anywhere or nowhere.
    if not np.isfinite(points).all():
        raise ContourError("ContourData holds a value that is not a finite number (NaN or inf)")
    return points


def _unit(vector: np.ndarray) -> np.ndarray:
    length = float(np.linalg.norm(vector))
    if length < 1e-6:
        raise ContourError("ImageOrientationPatient holds a zero vector")
    return vector / length
