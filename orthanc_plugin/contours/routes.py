"""GET /rt-gateway/contours/{rtstruct}: what an overlay of this RTSTRUCT would hold, and why not.

Answers with the referenced image series (found, missing images), and per ROI: whether the
`ignore`/`keep` globs of the query select it, its voxel count and volume on those images, and
the contours that fit no image with the reason. Nothing is stored or sent.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from orthanc_plugin.api.router import ApiError, Request, Response, json_response
from orthanc_plugin.contours.model import (
    DEFAULT_LIMITS,
    ContourError,
    ContourLimits,
    SeriesGeometry,
    SliceGeometry,
    StructureSet,
    roi_selected,
)
from orthanc_plugin.contours.raster import rasterize_roi
from orthanc_plugin.contours.sources import find_images, read_instance, read_rtstruct
from orthanc_plugin.ports import Host, HostError

if TYPE_CHECKING:
    from orthanc_plugin.api.router import Router

MISSING_SHOWN = 20


def add_routes(router: Router, host: Host,
               limits: ContourLimits = DEFAULT_LIMITS) -> None:
    def preview(request: Request) -> Response:
        instance_id = request.params["id"]
        ignore = _globs(request.query.get("ignore", ""))
        keep = _globs(request.query.get("keep", ""))
        try:
            _, structure_set = read_rtstruct(host, instance_id, limits)
        except HostError as error:
            if error.missing:
                raise ApiError(404, f"no instance {instance_id} in Orthanc") from error
            raise
        except ContourError as error:
            raise ApiError(400, f"not a usable RTSTRUCT: {error}") from error
        search = find_images(host, structure_set, instance_id)
        answer: dict[str, Any] = {
            "rtstruct": instance_id,
            "sop_instance_uid": structure_set.sop_instance_uid,
            "images": {
                "series": search.series_id,
                "instances": len(search.instance_ids),
                "missing": search.missing[:MISSING_SHOWN],
                "missing_count": len(search.missing),
                "waiting_for": search.waiting_for,
            },
        }
        geometry = None
        if search.instance_ids:
            try:
                geometry = SeriesGeometry.of_slices(
                    SliceGeometry.of_dataset(read_instance(host, iid, pixels=False))
                    for iid in search.instance_ids
                )
            except ContourError as error:
                answer["images"]["error"] = str(error)
        answer["rois"] = _rois(structure_set, geometry, ignore, keep)
        return json_response(answer)

    router.add("GET", r"contours/(?P<id>[0-9a-fA-F-]+)", preview)


def _rois(
    structure_set: StructureSet, geometry: SeriesGeometry | None, ignore: list[str],
    keep: list[str],
) -> list[dict[str, Any]]:
    rois = []
    for roi in structure_set.rois:
        row: dict[str, Any] = {
            "number": roi.number, "name": roi.name, "contours": len(roi.contours),
            "selected": roi_selected(roi.name, ignore, keep),
        }
        if geometry is not None:
            result = rasterize_roi(roi, geometry)
            first = geometry.slices[0]
            voxel_mm3 = first.row_spacing * first.column_spacing * geometry.slice_spacing
            row["voxels"] = result.mask.voxels
            row["volume_cc"] = round(result.mask.voxels * voxel_mm3 / 1000.0, 3)
            row["unplaced"] = [
                {"contour": item.contour_number, "reason": item.reason} for item in result.unplaced
            ]
        rois.append(row)
    return rois


def _globs(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]
