"""Overlay series end to end: CT + RTSTRUCT in by storescu, overlay series out at a real viewer."""

from __future__ import annotations

import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom import dcmread

from orthanc_plugin.contours.model import SeriesGeometry, SliceGeometry, parse_structure_set
from orthanc_plugin.contours.raster import rasterize_roi
from tests.integration.conftest import keep_logs, require_orthanc
from tests.integration.helpers import gateway_rows, study_jobs_done
from tests.support.orthanc import OrthancProcess, storescu, wait_until
from tests.support.rtset import RtSet, make_rt_set, write_datasets

RULES = """
rules:
  - name: contours for the viewer
    on: instance
    match: {modality: RTSTRUCT, calling_aet: PLANNING}
    actions:
      - overlay: {ignore: ["*body*", skull], planes: [axial, coronal, sagittal],
                  forward: [VIEWER], series_description: Contours, wait_for_images: 90s}
  - name: contours that never get their images
    on: instance
    match: {modality: RTSTRUCT, calling_aet: ORPHAN}
    actions:
      - overlay: {forward: VIEWER, wait_for_images: 3s}
"""
ROWS, COLUMNS, SLICES = 40, 56, 10


@pytest.fixture(scope="module")
def viewer(workdir: Path) -> Iterator[OrthancProcess]:
    require_orthanc()
    process = OrthancProcess(workdir / "viewer", "VIEWER")
    process.start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def gateway(workdir: Path, viewer: OrthancProcess) -> Iterator[OrthancProcess]:
    process = OrthancProcess(
        workdir / "gateway", "RTGATEWAY", plugin=True, rules=RULES, modalities={"VIEWER": viewer},
        gateway_settings={"Contours": {"WaitPollSeconds": 0.5}},
    )
    process.start()
    yield process
    process.stop()
    keep_logs(process, "contours-gateway")


def rt_set(patient_id: str) -> RtSet:
    # Non-square, anisotropic pixels: a swapped PixelSpacing or a transposed mask shows.
    return make_rt_set(patient_id, n_slices=SLICES, rows=ROWS, columns=COLUMNS,
                       pixel_spacing=(1.0, 0.8), slice_thickness=2.5, with_dose=False)


def send(gateway: OrthancProcess, folder: Path, datasets: list, calling: str) -> None:
    storescu(write_datasets(datasets, folder), gateway.dicom_port, calling=calling,
             called="RTGATEWAY")


def overlay_series(viewer: OrthancProcess, study_uid: str) -> dict[str, dict[str, Any]]:
    """The viewer's derived series of the study, by SeriesDescription, with their instances."""
    answer = viewer.post("/tools/find", {"Level": "Series", "Expand": True,
                                         "Query": {"StudyInstanceUID": study_uid,
                                                   "SeriesDescription": "Contours*"}})
    answer.raise_for_status()
    return {s["MainDicomTags"]["SeriesDescription"]: s for s in answer.json()}


def arrived(viewer: OrthancProcess, study_uid: str) -> dict[str, dict[str, Any]] | None:
    series = overlay_series(viewer, study_uid)
    counts = {name: len(s["Instances"]) for name, s in series.items()}
    wanted = {"Contours axial": SLICES, "Contours coronal": ROWS, "Contours sagittal": COLUMNS}
    return series if counts == wanted else None


def read(peer: OrthancProcess, instance_id: str) -> Any:
    response = peer.get(f"/instances/{instance_id}/file")
    response.raise_for_status()
    return dcmread(BytesIO(response.content))


def expected_masks(rtset: RtSet) -> dict[str, np.ndarray]:
    geometry = SeriesGeometry.of_slices(SliceGeometry.of_dataset(ds) for ds in rtset.ct)
    structure_set = parse_structure_set(rtset.rtstruct)
    return {roi.name: rasterize_roi(roi, geometry).mask.full() for roi in structure_set.rois}


def test_overlay_series_reach_the_viewer_with_geometry_and_contours(
    gateway: OrthancProcess, viewer: OrthancProcess, tmp_path: Path
) -> None:
    rtset = rt_set("CONTOURS-1")
    send(gateway, tmp_path, [*rtset.ct, rtset.rtstruct], "PLANNING")
    series = wait_until(lambda: arrived(viewer, rtset.study_uid), 120,
                        "three overlay series complete at the viewer")

    masks = expected_masks(rtset)
    kept = masks["PTV"] | masks["Rectum"]
    body_only = masks["BODY"] & ~kept
    assert body_only.any()
    by_position = {float(ds.ImagePositionPatient[2]): ds for ds in rtset.ct}
    axial = [read(viewer, iid) for iid in series["Contours axial"]["Instances"]]
    for ds in axial:
        source = by_position[float(ds.ImagePositionPatient[2])]
        k = rtset.ct.index(source)
        overlay = ds.overlay_array(0x6000).astype(bool)
        assert overlay.shape == (ROWS, COLUMNS)
        assert np.array_equal(overlay, kept[k])          # the ignored BODY is absent
        assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
        assert ds.StudyInstanceUID == rtset.study_uid
        assert ds.FrameOfReferenceUID == rtset.frame_of_reference_uid
        assert ds.SeriesInstanceUID != source.SeriesInstanceUID
        assert ds.PixelSpacing == source.PixelSpacing
        assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert (ds.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID
                == rtset.rtstruct.SOPInstanceUID)
    assert sum(int(ds.overlay_array(0x6000).sum()) for ds in axial) == int(kept.sum())

    coronal = [read(viewer, iid) for iid in series["Contours coronal"]["Instances"]]
    assert {tuple(float(v) for v in ds.ImageOrientationPatient) for ds in coronal} == {
        (1, 0, 0, 0, 0, -1)}
    assert sum(int(ds.overlay_array(0x6000).sum()) for ds in coronal) == int(kept.sum())
    first = coronal[0]
    assert (first.Rows, first.Columns) == (SLICES, COLUMNS)
    assert [float(v) for v in first.PixelSpacing] == [2.5, 0.8]

    # The viewer holds the series a moment before the jobs are settled (their transfer rows), and
    # "overlay-done" is written after its job is: wait for both.
    wait_until(lambda: study_jobs_done(gateway, rtset.study_uid), 60, "the study's jobs done")
    wait_until(lambda: {"overlay-built", "overlay-stored", "overlay-forward-queued", "overlay-done"}
               <= {row["event"] for row in gateway_rows(gateway, kind="events",
                                                        study=rtset.study_uid)},
               30, "the overlay's events recorded")
    transfers = gateway_rows(gateway, kind="transfers", study=rtset.study_uid, target="VIEWER")
    assert transfers and all(row["status"] == "success" for row in transfers)
    assert sum(row["instances"] for row in transfers) == SLICES + ROWS + COLUMNS
    rtstruct_id = gateway.post("/tools/lookup", str(rtset.rtstruct.SOPInstanceUID)).json()[0]["ID"]
    preview = gateway.json(f"/rt-gateway/contours/{rtstruct_id}", params={"ignore": "*body*"})
    assert preview["images"]["instances"] == SLICES and preview["images"]["missing_count"] == 0
    rois = {roi["name"]: roi for roi in preview["rois"]}
    assert not rois["BODY"]["selected"] and rois["PTV"]["selected"]
    assert rois["PTV"]["voxels"] == int(masks["PTV"].sum())
    assert rois["PTV"]["volume_cc"] == pytest.approx(masks["PTV"].sum() * 0.8 * 2.5 / 1000, abs=1e-3)
    assert gateway.get("/rt-gateway/contours/0000aaaa-bbbbcccc").status_code == 404
    # What the gateway stored comes back as gateway output: no rule runs on it.
    # The intake notes them in the background: wait for every one, then count exactly.
    def from_gateway() -> int:
        return sum(1 for row in gateway_rows(gateway, kind="received", study=rtset.study_uid)
                   if row["source"] == "GATEWAY")
    wait_until(lambda: from_gateway() >= SLICES + ROWS + COLUMNS, 60, "the overlays noted")
    assert from_gateway() == SLICES + ROWS + COLUMNS


def test_rtstruct_before_its_ct_waits_then_builds(
    gateway: OrthancProcess, viewer: OrthancProcess, tmp_path: Path
) -> None:
    rtset = rt_set("CONTOURS-2")
    send(gateway, tmp_path / "rs", [rtset.rtstruct], "PLANNING")
    waiting = wait_until(
        lambda: [row for row in gateway_rows(gateway, kind="events", study=rtset.study_uid)
                 if row["event"] == "overlay-waiting"],
        60, "the overlay job waits for its images",
    )
    detail = waiting[0]["detail"]
    assert str(rtset.ct[0].SeriesInstanceUID) in detail and "not in Orthanc" in detail
    time.sleep(1.5)
    assert overlay_series(viewer, rtset.study_uid) == {}
    send(gateway, tmp_path / "ct", rtset.ct, "PLANNING")
    wait_until(lambda: arrived(viewer, rtset.study_uid), 120, "overlay series after the CT came")
    events = [row["event"] for row in gateway_rows(gateway, kind="events", study=rtset.study_uid)]
    assert events.count("overlay-waiting") == 1  # one audit row per wait, not one per poll


def test_images_that_never_come_are_named_and_the_job_parked(
    gateway: OrthancProcess, viewer: OrthancProcess, tmp_path: Path
) -> None:
    rtset = rt_set("CONTOURS-3")
    send(gateway, tmp_path, [*rtset.ct[:4], rtset.rtstruct], "ORPHAN")
    missing = wait_until(
        lambda: [row for row in gateway_rows(gateway, kind="events", study=rtset.study_uid)
                 if row["event"] == "overlay-images-missing"],
        60, "the overlay job gives up on its images",
    )
    detail = missing[0]["detail"]
    assert f"{SLICES - 4} of {SLICES} referenced image(s)" in detail
    assert str(rtset.ct[0].SeriesInstanceUID) in detail and "gave up after" in detail
    jobs = [job for job in gateway.json("/rt-gateway/jobs", params={"state": "dead"})
            if job["study_uid"] == rtset.study_uid]
    assert len(jobs) == 1 and jobs[0]["action"] == "overlay"
    assert jobs[0]["last_status"] == "images-missing"
    assert overlay_series(viewer, rtset.study_uid) == {}


def test_malformed_rtstruct_is_quarantined_with_the_reason(
    gateway: OrthancProcess, viewer: OrthancProcess, tmp_path: Path
) -> None:
    rtset = rt_set("CONTOURS-4")
    contour = rtset.rtstruct.ROIContourSequence[1].ContourSequence[0]
    contour.ContourData = list(contour.ContourData)[:4]  # not (x, y, z) triplets
    send(gateway, tmp_path, [*rtset.ct, rtset.rtstruct], "PLANNING")
    rtstruct_id = gateway.post("/tools/lookup", str(rtset.rtstruct.SOPInstanceUID)).json()[0]["ID"]
    rows = wait_until(
        lambda: [row for row in gateway_rows(gateway, kind="quarantine")
                 if row["instance_id"] == rtstruct_id],
        60, "the RTSTRUCT is quarantined",
    )
    assert "triplets" in rows[0]["reason"]
    failed = [row for row in gateway_rows(gateway, kind="events", study=rtset.study_uid)
              if row["event"] == "overlay-failed"]
    assert failed and "triplets" in failed[0]["detail"]
    assert gateway.get(f"/instances/{rtstruct_id}").status_code == 200  # never lost
    assert overlay_series(viewer, rtset.study_uid) == {}
