"""Axial, coronal and sagittal views of an image volume, with the geometry of each image.

The volume is indexed (slice k, row j, column i) like the source series. A view fixes the volume
axis closest to the plane's normal and lays the other two out the way viewers expect: columns
towards patient left (+x) or, for sagittal, posterior (+y); rows towards +y on axial planes and
towards the feet (-z) on coronal and sagittal ones. Axes are flipped where needed, and the
patient position of each image is recomputed, so a patient-space point keeps its place.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from orthanc_plugin.contours.model import ContourError, SeriesGeometry


class Plane(StrEnum):
    AXIAL = "axial"
    CORONAL = "coronal"
    SAGITTAL = "sagittal"


# (normal, column direction, row direction) wanted for each plane, in patient coordinates.
_LAYOUT = {
    Plane.AXIAL: ((0, 0, 1), (1, 0, 0), (0, 1, 0)),
    Plane.CORONAL: ((0, 1, 0), (1, 0, 0), (0, 0, -1)),
    Plane.SAGITTAL: ((1, 0, 0), (0, 1, 0), (0, 0, -1)),
}


@dataclass(frozen=True, eq=False)
class ImagePlacement:
    position: np.ndarray          # ImagePositionPatient
    row_direction: np.ndarray     # IOP[0:3]
    column_direction: np.ndarray  # IOP[3:6]
    row_spacing: float
    column_spacing: float
    thickness: float


@dataclass(frozen=True, eq=False)
class View:
    """How a plane is cut from the (k, j, i) volume: fixed axis, row axis, column axis, flips."""

    plane: Plane
    axes: tuple[int, int, int]
    flips: tuple[bool, bool, bool]  # per volume axis
    native: bool                    # the images are the source slices themselves

    def arrange(self, volume: np.ndarray) -> np.ndarray:
        """The volume as (image, row, column) for this view (a numpy view, no copy)."""
        flipped = volume
        for axis, flip in enumerate(self.flips):
            if flip:
                flipped = np.flip(flipped, axis)
        return np.transpose(flipped, self.axes)


def choose_view(plane: Plane, geometry: SeriesGeometry) -> View:
    first = geometry.slices[0]
    directions = (geometry.normal, first.column_direction, first.row_direction)
    normal, column_want, row_want = (np.asarray(v, dtype=float) for v in _LAYOUT[plane])
    fixed = int(np.argmax([abs(d @ normal) for d in directions]))
    if fixed == 0:
        # The source's own planes: keep them as they are, whatever their in-plane layout.
        return View(plane, (0, 1, 2), (False, False, False), native=True)
    others = [a for a in range(3) if a != fixed]
    column_axis = max(others, key=lambda a: abs(directions[a] @ column_want))
    row_axis = others[0] if others[1] == column_axis else others[1]
    if len(geometry.slices) > 1 and not geometry.is_uniform():
        raise ContourError(f"a {plane} view needs evenly spaced source slices")
    flips = [False, False, False]
    flips[column_axis] = bool(directions[column_axis] @ column_want < 0)
    flips[row_axis] = bool(directions[row_axis] @ row_want < 0)
    return View(plane, (fixed, row_axis, column_axis), (flips[0], flips[1], flips[2]), native=False)


def placements(view: View, geometry: SeriesGeometry) -> Iterator[ImagePlacement]:
    """Geometry of each image of the view, in the order of View.arrange's first axis."""
    first = geometry.slices[0]
    shape = geometry.shape
    if view.native:
        for image in geometry.slices:
            yield ImagePlacement(
                image.position, image.row_direction, image.column_direction,
                image.row_spacing, image.column_spacing, geometry.slice_spacing,
            )
        return
    directions = [geometry.normal, first.column_direction, first.row_direction]
    spacings = [geometry.slice_spacing, first.row_spacing, first.column_spacing]
    origin = first.position.astype(float).copy()
    for axis, flip in enumerate(view.flips):
        if flip:
            origin = origin + (shape[axis] - 1) * spacings[axis] * directions[axis]
            directions[axis] = -directions[axis]
    fixed, row_axis, column_axis = view.axes
    for index in range(shape[fixed]):
        yield ImagePlacement(
            origin + index * spacings[fixed] * directions[fixed],
            directions[column_axis], directions[row_axis],
            spacings[row_axis], spacings[column_axis], spacings[fixed],
        )
