"""The derived image series with the contour masks in the DICOM overlay plane (pure, pydicom).

Each overlay group (6000, 6002, ... 601E) is written as PS3.3 C.9.2 says: OverlayRows/Columns,
OverlayType G, OverlayOrigin 1\\1, OverlayBitsAllocated 1, OverlayBitPosition 0, and OverlayData
packed least significant bit first, padded to an even length. UIDs are derived from the RTSTRUCT,
the options and the image's place, so running a job again stores the same instances again rather
than a second copy.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.tag import Tag
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    ExplicitVRLittleEndian,
    RTStructureSetStorage,
    generate_uid,
)

from orthanc_plugin.contours.model import (
    DEFAULT_LIMITS,
    ContourError,
    ContourLimits,
    SeriesGeometry,
    SliceGeometry,
    parse_structure_set,
)
from orthanc_plugin.contours.planes import ImagePlacement, Plane, View, choose_view, placements
from orthanc_plugin.contours.raster import (
    RasterResult,
    UnplacedContour,
    merged_mask,
    rasterize_roi,
)

MAX_OVERLAY_GROUPS = 16
FIRST_OVERLAY_GROUP = 0x6000
MERGED_LABEL = "CONTOURS"


@dataclass(frozen=True)
class OverlayOptions:
    ignore: tuple[str, ...] = ()
    keep: tuple[str, ...] = ()
    planes: tuple[Plane, ...] = (Plane.AXIAL,)
    per_roi: bool = False
    burn_in_outline: bool = False
    series_description: str = ""
    series_number: int | None = None

    def key(self) -> str:
        """What makes two builds of one RTSTRUCT different series (part of the UID entropy)."""
        return repr((sorted(self.ignore), sorted(self.keep), self.per_roi, self.burn_in_outline,
                     self.series_description, self.series_number))


@dataclass(frozen=True, eq=False)
class OverlaySeries:
    plane: Plane
    series_uid: str
    datasets: list[Dataset]


@dataclass(eq=False)
class OverlayBuild:
    series: list[OverlaySeries]
    rois: list[str]
    ignored: list[str]
    unplaced: list[UnplacedContour]
    voxels: dict[str, int] = field(default_factory=dict)


# -- the overlay group ---------------------------------------------------------------------------
def pack_overlay(mask: np.ndarray) -> bytes:
    packed = np.packbits(np.ascontiguousarray(mask, dtype=bool).ravel(), bitorder="little")
    data = packed.tobytes()
    return data + b"\x00" if len(data) % 2 else data


def write_overlay(ds: Dataset, index: int, mask: np.ndarray, label: str) -> None:
    if not 0 <= index < MAX_OVERLAY_GROUPS:
        raise ContourError(f"overlay group {index} is beyond the {MAX_OVERLAY_GROUPS} groups")
    group = FIRST_OVERLAY_GROUP + 2 * index
    rows, columns = mask.shape
    ds.add_new(Tag(group, 0x0010), "US", rows)
    ds.add_new(Tag(group, 0x0011), "US", columns)
    ds.add_new(Tag(group, 0x0022), "LO", f"Contours: {label}"[:64])
    ds.add_new(Tag(group, 0x0040), "CS", "G")
    ds.add_new(Tag(group, 0x0050), "SS", [1, 1])
    ds.add_new(Tag(group, 0x0100), "US", 1)
    ds.add_new(Tag(group, 0x0102), "US", 0)
    ds.add_new(Tag(group, 0x1500), "LO", label[:64])
    ds.add_new(Tag(group, 0x3000), "OW", pack_overlay(mask))


# -- the build -----------------------------------------------------------------------------------
def build_overlay_series(
    images: Sequence[Dataset], rtstruct: Dataset, options: OverlayOptions,
    now: datetime | None = None, pause: Callable[[], None] = lambda: None,
    limits: ContourLimits = DEFAULT_LIMITS,
) -> OverlayBuild:
    """Rasterize the selected ROIs on the images and make one derived series per plane.

    `pause` is called between ROIs, between source slices decoded for a reformat and between
    derived images: the worker holds there while a modality's instances arrive (reception.py),
    since this CPU work competes with Orthanc's. Decoding a 160-slice 512x512 volume at once took
    0.5 s without a pause, the longest stretch of the build (bench/isolation's "rasterizing")."""
    structure_set = parse_structure_set(rtstruct, limits)
    if not images:
        raise ContourError("no images to draw the contours on")
    by_uid = {str(ds.SOPInstanceUID): ds for ds in images}
    geometry = SeriesGeometry.of_slices(
        (SliceGeometry.of_dataset(ds) for ds in by_uid.values()),
        float(images[0].get("SliceThickness", 0) or 0),
    )
    sources = [by_uid[s.sop_instance_uid] for s in geometry.slices]
    selected = structure_set.select(options.ignore, options.keep)
    ignored = [roi.name for roi in structure_set.rois if roi not in selected]
    if options.per_roi and len(selected) > MAX_OVERLAY_GROUPS:
        raise ContourError(
            f"{len(selected)} ROIs selected but an image holds at most {MAX_OVERLAY_GROUPS} "
            "overlay groups: ignore some or merge them"
        )
    results = []
    for roi in selected:
        pause()
        results.append(rasterize_roi(roi, geometry))
    layers = _layers(results, geometry.shape, options.per_roi)
    volume = _pixel_volume(sources, pause) if _needs_pixels(options, geometry) else None
    stamp = now or datetime.now()
    series = []
    for number, plane in enumerate(options.planes):
        view = choose_view(plane, geometry)
        series.append(_plane_series(
            plane, view, geometry, sources, layers, volume, structure_set.sop_instance_uid,
            options, number, stamp, pause,
        ))
    return OverlayBuild(
        series=series,
        rois=[roi.name for roi in selected],
        ignored=ignored,
        unplaced=[item for result in results for item in result.unplaced],
        voxels={result.mask.name: result.mask.voxels for result in results},
    )


def _layers(
    results: Sequence[RasterResult], shape: tuple[int, int, int], per_roi: bool
) -> list[tuple[str, np.ndarray]]:
    if per_roi:
        return [(result.mask.name, result.mask.full()) for result in results]
    return [(MERGED_LABEL, merged_mask(results, shape))]


def _needs_pixels(options: OverlayOptions, geometry: SeriesGeometry) -> bool:
    return options.burn_in_outline or any(
        not choose_view(plane, geometry).native for plane in options.planes
    )


def _pixel_volume(sources: Sequence[Dataset], pause: Callable[[], None]) -> np.ndarray:
    rescale = {(str(ds.get("RescaleSlope", "1")), str(ds.get("RescaleIntercept", "0")))
               for ds in sources}
    if len(rescale) > 1:
        raise ContourError("the source slices differ in RescaleSlope/Intercept")
    planes = []
    try:
        for ds in sources:
            pause()
            planes.append(ds.pixel_array)
        return np.stack(planes)
    except ContourError:
        raise
    except Exception as error:  # compressed without a decoder, truncated pixel data, ...
        raise ContourError(f"the source pixel data cannot be read: {error}") from error


def _plane_series(
    plane: Plane, view: View, geometry: SeriesGeometry, sources: Sequence[Dataset],
    layers: Sequence[tuple[str, np.ndarray]], volume: np.ndarray | None, rtstruct_uid: str,
    options: OverlayOptions, number: int, now: datetime, pause: Callable[[], None],
) -> OverlaySeries:
    entropy = [rtstruct_uid, options.key(), plane.value]
    series_uid = generate_uid(entropy_srcs=entropy)
    arranged_layers = [(label, view.arrange(mask)) for label, mask in layers]
    pixels = view.arrange(volume) if volume is not None else None
    series_number = options.series_number
    if series_number is None:
        series_number = int(sources[0].get("SeriesNumber", 0) or 0) + 1000
    series_number += number
    description = options.series_description or "Contours"
    # Reformatted images all derive from every source slice: one shared list of references.
    all_sources = [_reference(source) for source in sources]
    datasets = []
    for index, placement in enumerate(placements(view, geometry)):
        pause()
        masks = [(label, mask[index]) for label, mask in arranged_layers]
        template = sources[index] if view.native else sources[0]
        image = pixels[index] if pixels is not None else None
        ds = _derived_image(template, placement, image, view.native)
        ds.SOPInstanceUID = generate_uid(entropy_srcs=[*entropy, str(index)])
        ds.file_meta = _file_meta(ds.SOPClassUID, ds.SOPInstanceUID)
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = series_number
        ds.SeriesDescription = f"{description} {plane.value}"[:64]
        ds.InstanceNumber = index + 1
        ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL" if plane is Plane.AXIAL else "REFORMATTED"]
        ds.DerivationDescription = (
            f"{plane.value} images with the contours of RTSTRUCT {rtstruct_uid} in the overlay "
            "plane"
        )[:1024]
        for tag_name, value in (("SeriesDate", "%Y%m%d"), ("SeriesTime", "%H%M%S"),
                                ("ContentDate", "%Y%m%d"), ("ContentTime", "%H%M%S"),
                                ("InstanceCreationDate", "%Y%m%d"),
                                ("InstanceCreationTime", "%H%M%S")):
            setattr(ds, tag_name, now.strftime(value))
        ds.SourceImageSequence = (
            [_reference(sources[index])] if view.native else all_sources
        )
        ds.ReferencedInstanceSequence = [_rtstruct_reference(rtstruct_uid)]
        for group, (label, mask) in enumerate(masks):
            write_overlay(ds, group, mask, label)
        if options.burn_in_outline:
            _burn_outline(ds, masks)
        datasets.append(ds)
    return OverlaySeries(plane, series_uid, datasets)


def _derived_image(
    source: Dataset, placement: ImagePlacement, image: np.ndarray | None, native: bool
) -> Dataset:
    ds = Dataset()
    for element in source:
        group = element.tag.group
        # Old overlays, private data and the pixels are the source's own, not ours.
        if 0x6000 <= group <= 0x60FF or element.tag.is_private or element.tag == 0x7FE00010:
            continue
        ds.add(copy.deepcopy(element))
    for keyword in ("SliceLocation", "SpacingBetweenSlices", "ImageComments"):
        if keyword in ds:
            delattr(ds, keyword)
    ds.ImagePositionPatient = [_ds(v) for v in placement.position]
    ds.ImageOrientationPatient = [
        _ds(v) for v in (*placement.row_direction, *placement.column_direction)
    ]
    ds.PixelSpacing = [_ds(placement.row_spacing), _ds(placement.column_spacing)]
    ds.SliceThickness = _ds(placement.thickness)
    if image is None and _is_compressed(source):
        image = _decoded(source)
    if image is None:
        ds.PixelData = source.PixelData
        if native:
            ds["PixelData"].VR = source["PixelData"].VR
        return ds
    stored = np.ascontiguousarray(image)
    ds.Rows, ds.Columns = stored.shape
    ds.PixelData = stored.astype(stored.dtype.newbyteorder("<")).tobytes()
    ds["PixelData"].VR = "OW" if ds.BitsAllocated > 8 else "OB"
    return ds


def _is_compressed(source: Dataset) -> bool:
    syntax = getattr(source, "file_meta", Dataset()).get("TransferSyntaxUID")
    return bool(syntax is not None and syntax.is_compressed)


def _decoded(source: Dataset) -> np.ndarray:
    try:
        return np.asarray(source.pixel_array)
    except Exception as error:  # no decoder for this transfer syntax here
        raise ContourError(f"image {source.SOPInstanceUID}: pixel data cannot be decoded: {error}") from error


def _burn_outline(ds: Dataset, masks: Sequence[tuple[str, np.ndarray]]) -> None:
    """Draw each mask's outline into the pixels at the brightest value the pixel type holds."""
    pixels = ds.pixel_array.copy()
    outline = np.zeros(pixels.shape, dtype=bool)
    for _, mask in masks:
        inner = mask.copy()
        inner[1:, :] &= mask[:-1, :]
        inner[:-1, :] &= mask[1:, :]
        inner[:, 1:] &= mask[:, :-1]
        inner[:, :-1] &= mask[:, 1:]
        outline |= mask & ~inner
    if not outline.any():
        return
    bits = int(ds.get("BitsStored", ds.BitsAllocated))
    brightest = (1 << (bits - 1)) - 1 if int(ds.get("PixelRepresentation", 0)) else (1 << bits) - 1
    pixels[outline] = brightest
    ds.PixelData = pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
    ds.BurnedInAnnotation = "YES"


def _reference(source: Dataset) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    purpose = Dataset()
    purpose.CodeValue = "121322"
    purpose.CodingSchemeDesignator = "DCM"
    purpose.CodeMeaning = "Source image for image processing operation"
    item.PurposeOfReferenceCodeSequence = [purpose]
    return item


def _rtstruct_reference(uid: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = RTStructureSetStorage
    item.ReferencedSOPInstanceUID = uid
    # DICOM has no code for "structure set drawn in the overlay"; a private scheme (99...) says so.
    purpose = Dataset()
    purpose.CodeValue = "RTSTRUCT-OVERLAY"
    purpose.CodingSchemeDesignator = "99RTGW"
    purpose.CodeMeaning = "Structure set drawn in the overlay plane"
    item.PurposeOfReferenceCodeSequence = [purpose]
    return item


def _file_meta(sop_class_uid: str, sop_instance_uid: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class_uid)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    return meta


def _ds(value: float) -> str:
    # A DS holds at most 16 characters; repr() of a computed float may need more.
    text = f"{float(value):.6f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text
