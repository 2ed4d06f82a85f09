"""Exact rasterization of closed planar contours: a pixel is inside when its centre is inside.

All contours of one ROI are filled together with the even-odd rule, so holes and nested contours
come out right whatever order they are listed in. The work is one vectorized scanline pass over
every edge of every contour: edges become crossings with pixel-centre rows (half-open in y, so a
vertex on a row is counted once), crossings sorted per row pair up into spans, and spans become
a cumulative sum over a difference array cropped to the ROI's bounding box.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from orthanc_plugin.contours.model import Contour, Roi, SeriesGeometry

PLANAR_TOLERANCE_FRACTION = 0.5


@dataclass(frozen=True)
class UnplacedContour:
    roi: str
    contour_number: int
    reason: str


@dataclass(frozen=True, eq=False)
class RoiMask:
    """A mask cropped to its bounding box; `offset` is its (slice, row, column) corner."""

    name: str
    shape: tuple[int, int, int]
    offset: tuple[int, int, int]
    data: np.ndarray  # bool

    @property
    def voxels(self) -> int:
        return int(np.count_nonzero(self.data))

    def paste_into(self, out: np.ndarray) -> np.ndarray:
        k, j, i = self.offset
        nk, nj, ni = self.data.shape
        out[k : k + nk, j : j + nj, i : i + ni] |= self.data
        return out

    def full(self) -> np.ndarray:
        return self.paste_into(np.zeros(self.shape, dtype=bool))

    def slice_plane(self, k: int) -> np.ndarray | None:
        """The full-size plane k, or None when the ROI does not reach it."""
        k0 = self.offset[0]
        if not k0 <= k < k0 + self.data.shape[0]:
            return None
        plane = np.zeros(self.shape[1:], dtype=bool)
        _, j, i = self.offset
        nj, ni = self.data.shape[1:]
        plane[j : j + nj, i : i + ni] = self.data[k - k0]
        return plane


@dataclass(frozen=True, eq=False)
class RasterResult:
    mask: RoiMask
    unplaced: tuple[UnplacedContour, ...]


def place_contours(
    roi_name: str, contours: Sequence[Contour], geometry: SeriesGeometry
) -> tuple[list[tuple[Contour, int]], list[UnplacedContour]]:
    """The slice of each closed contour: its referenced image when known, else by position.

    By position means the nearest slice whose plane lies within half a slice spacing of the
    contour's plane; a contour that is not parallel to the images fits no slice.
    """
    placed: list[tuple[Contour, int]] = []
    unplaced: list[UnplacedContour] = []
    half = geometry.slice_spacing * PLANAR_TOLERANCE_FRACTION
    for contour in contours:
        if contour.geometric_type != "CLOSED_PLANAR":
            unplaced.append(UnplacedContour(
                roi_name, contour.number, f"{contour.geometric_type} contours enclose no area"))
            continue
        if len(contour.points) < 3:
            unplaced.append(UnplacedContour(roi_name, contour.number, "fewer than 3 points"))
            continue
        known = [geometry.index_by_uid[u] for u in contour.image_uids if u in geometry.index_by_uid]
        if known:
            placed.append((contour, known[0]))
            continue
        heights = contour.points @ geometry.normal
        if float(heights.max() - heights.min()) > half:
            unplaced.append(UnplacedContour(
                roi_name, contour.number, "not parallel to the image planes"))
            continue
        height = float(heights.mean())
        k = int(np.argmin(np.abs(geometry.offsets - height)))
        distance = abs(float(geometry.offsets[k]) - height)
        if distance > half + 1e-6:
            unplaced.append(UnplacedContour(
                roi_name, contour.number,
                f"no image within half a slice spacing ({half:g} mm); the nearest is "
                f"{distance:.2f} mm away",
            ))
            continue
        placed.append((contour, k))
    return placed, unplaced


def rasterize_roi(roi: Roi, geometry: SeriesGeometry) -> RasterResult:
    placed, unplaced = place_contours(roi.name, roi.contours, geometry)
    return RasterResult(_fill(roi.name, placed, geometry), tuple(unplaced))


def _pixel_coordinates(
    placed: Sequence[tuple[Contour, int]], geometry: SeriesGeometry
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Column (x) and row (y) indices of every point, its slice and its next point on the contour."""
    points = np.concatenate([contour.points for contour, _ in placed])
    lengths = np.array([len(contour.points) for contour, _ in placed])
    slices = np.repeat(np.array([k for _, k in placed]), lengths)
    positions = np.stack([s.position for s in geometry.slices])[slices]
    first = geometry.slices[0]
    relative = points - positions
    x = relative @ first.row_direction / first.column_spacing
    y = relative @ first.column_direction / first.row_spacing
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    following = np.arange(len(points)) + 1
    following[starts + lengths - 1] = starts  # close each contour
    return x, y, slices, following


# Crossings held at once: a band of rows is filled at a time, so memory grows with the mask and
# this bound, not with points x rows crossed (two 100,000-point contours once needed 1.8 GB).
MAX_CROSSINGS_PER_BAND = 2_000_000


def _fill(name: str, placed: Sequence[tuple[Contour, int]], geometry: SeriesGeometry) -> RoiMask:
    shape = geometry.shape
    _, rows, columns = shape
    empty = RoiMask(name, shape, (0, 0, 0), np.zeros((0, 0, 0), dtype=bool))
    if not placed:
        return empty
    x, y, slices, following = _pixel_coordinates(placed, geometry)
    x1, y1, x2, y2 = x, y, x[following], y[following]
    # Pixel-centre rows j with min(y1, y2) <= j < max(y1, y2): half-open, so a vertex lying
    # exactly on a row is crossed once by the two edges meeting there, and flat edges not at all.
    low, high = np.minimum(y1, y2), np.maximum(y1, y2)
    first_row = np.clip(np.ceil(low), 0, rows).astype(np.int64)
    end_row = np.clip(np.ceil(high), 0, rows).astype(np.int64)
    crossing = end_row > first_row
    if not crossing.any():
        return empty
    # The box every span can reach: the difference array is the only mask-sized allocation.
    k0, k1 = int(slices[crossing].min()), int(slices[crossing].max()) + 1
    j0, j1 = int(first_row[crossing].min()), int(end_row[crossing].max())
    i0 = int(np.clip(np.ceil(min(x1.min(), x2.min())), 0, columns))
    i1 = int(np.clip(np.ceil(max(x1.max(), x2.max())), 0, columns))
    if i1 <= i0:
        return empty
    difference = np.zeros((k1 - k0, j1 - j0, i1 - i0 + 1), dtype=np.int8)
    band = max(1, MAX_CROSSINGS_PER_BAND // max(1, int(crossing.sum())))
    painted = False
    for band_start in range(j0, j1, band):
        band_end = min(band_start + band, j1)
        start = np.maximum(first_row, band_start)
        counts = np.maximum(np.minimum(end_row, band_end) - start, 0)
        painted |= _paint_band(difference, (k0, j0, i0), columns, x1, y1, x2, y2, slices,
                               start, counts)
    if not painted:
        return empty
    data = np.cumsum(difference, axis=2, dtype=np.int8)[:, :, : i1 - i0] > 0
    return RoiMask(name, shape, (k0, j0, i0), data)


def _paint_band(
    difference: np.ndarray, corner: tuple[int, int, int], columns: int,
    x1: np.ndarray, y1: np.ndarray, x2: np.ndarray, y2: np.ndarray, slices: np.ndarray,
    first_row: np.ndarray, counts: np.ndarray,
) -> bool:
    """Crossings of one band of rows, paired into inside spans, added to the difference array."""
    total = int(counts.sum())
    if total == 0:
        return False
    edge = np.repeat(np.arange(len(x1)), counts)
    row = first_row[edge] + (np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts))
    t = (row - y1[edge]) / (y2[edge] - y1[edge])
    cross_x = x1[edge] + t * (x2[edge] - x1[edge])
    cross_k = slices[edge]
    order = np.lexsort((cross_x, row, cross_k))
    cross_x, row, cross_k = cross_x[order], row[order], cross_k[order]
    # Each pixel-centre row of a closed polygon set is crossed an even number of times; after the
    # sort, crossings 0-1, 2-3, ... of a row bound the inside spans (even-odd rule).
    span_k, span_row = cross_k[0::2], row[0::2]
    span_start = np.clip(np.ceil(cross_x[0::2]), 0, columns).astype(np.int64)
    span_end = np.clip(np.ceil(cross_x[1::2]), 0, columns).astype(np.int64)
    keep = span_end > span_start
    if not keep.any():
        return False
    k0, j0, i0 = corner
    line = (span_k[keep] - k0, span_row[keep] - j0)
    np.add.at(difference, (*line, span_start[keep] - i0), 1)
    np.add.at(difference, (*line, span_end[keep] - i0), -1)
    return True


def merged_mask(results: Sequence[RasterResult], shape: tuple[int, int, int]) -> np.ndarray:
    merged = np.zeros(shape, dtype=bool)
    for result in results:
        result.mask.paste_into(merged)
    return merged
