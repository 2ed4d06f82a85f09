"""Compressed CT in every transfer syntax real archives send, through the capabilities that read
or copy pixels: the overlay series (decoded with pylibjpeg, written uncompressed), the
de-identified copy (its pixels unchanged), and the RT index."""

from __future__ import annotations

from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread

from tests.integration.conftest import keep_logs, require_orthanc
from tests.integration.helpers import gateway_rows, running_peers
from tests.support.orthanc import OrthancProcess, storescu, wait_until
from tests.support.rtset import make_rt_set, write_datasets
from tests.support.transcode import PROPOSE, SYNTAXES, transcode

RULES = """
rules:
  - name: contours for the viewer
    on: instance
    match: {modality: RTSTRUCT, calling_aet: PLANNING}
    actions:
      - overlay: {planes: [axial], forward: [VIEWER], series_description: Contours,
                  wait_for_images: 90s}
  - name: research copy
    on: stable-study
    match: {calling_aet: PLANNING}
    actions:
      - anonymize: {profile: full}
      - forward: RESEARCH
"""
SLICES = 4


@pytest.fixture(scope="module")
def peers(workdir: Path) -> Iterator[dict[str, OrthancProcess]]:
    require_orthanc()
    with running_peers(workdir, "VIEWER", "RESEARCH") as processes:
        yield processes

@pytest.fixture(scope="module")
def gateway(workdir: Path, peers: dict[str, OrthancProcess]) -> Iterator[OrthancProcess]:
    process = OrthancProcess(workdir / "gateway", "RTGATEWAY", plugin=True, rules=RULES,
                             modalities=dict(peers), stable_age=1,
                             gateway_settings={"Contours": {"WaitPollSeconds": 0.5}})
    process.start()
    yield process
    process.stop()
    keep_logs(process, "transfer-syntaxes-gateway")


def read(peer: OrthancProcess, instance_id: str) -> object:
    response = peer.get(f"/instances/{instance_id}/file")
    response.raise_for_status()
    return dcmread(BytesIO(response.content))


@pytest.mark.parametrize("syntax", sorted(SYNTAXES))
def test_compressed_ct_is_overlaid_copied_and_indexed(
    gateway: OrthancProcess, peers: dict[str, OrthancProcess], tmp_path: Path, syntax: str
) -> None:
    viewer, research = peers["VIEWER"], peers["RESEARCH"]
    rtset = make_rt_set(f"TS-{syntax}", n_slices=SLICES, rows=32, columns=40, with_dose=False)
    plain = write_datasets(rtset.ct, tmp_path / "plain")
    compressed = transcode(plain, syntax, tmp_path / syntax)
    originals = {str(dcmread(p).SOPInstanceUID): dcmread(p).pixel_array for p in compressed}
    storescu([*compressed, *write_datasets([rtset.rtstruct], tmp_path / "rs")],
             gateway.dicom_port, calling="PLANNING",
             options=[PROPOSE[syntax]])  # sent compressed, as an archive sends it

    def overlay() -> list[str] | None:
        found = viewer.post("/tools/find", {"Level": "Series", "Expand": True, "Query": {
            "StudyInstanceUID": rtset.study_uid, "SeriesDescription": "Contours*"}}).json()
        instances = [i for series in found for i in series["Instances"]]
        return instances if len(instances) == SLICES else None

    instances = wait_until(overlay, 90, f"{syntax}: overlay series at the viewer")
    for instance_id in instances:
        ds = read(viewer, instance_id)
        assert not ds.file_meta.TransferSyntaxUID.is_compressed  # any receiver takes it
        source = originals[str(ds.SourceImageSequence[0].ReferencedSOPInstanceUID)]
        assert np.array_equal(ds.pixel_array, source)  # the decoded CT, pixel for pixel
        assert ds.overlay_array(0x6000).any()
    assert not [row for row in gateway_rows(gateway, kind="quarantine")
                if row["instance_id"] in {str(rtset.rtstruct.SOPInstanceUID)}]

    def copies() -> list[object] | None:
        found = research.post("/tools/find", {"Level": "Instance", "Query": {
            "Modality": "CT"}}).json()
        wanted = [read(research, iid) for iid in found]
        mine = [ds for ds in wanted if ds.Rows == 32 and ds.Columns == 40
                and str(ds.file_meta.TransferSyntaxUID) == SYNTAXES[syntax][0]]
        return mine if len(mine) == SLICES else None

    research_copies = wait_until(copies, 90, f"{syntax}: de-identified CT at RESEARCH")
    decoded = sorted(ds.pixel_array.tobytes() for ds in research_copies)
    assert decoded == sorted(p.tobytes() for p in originals.values())

    def indexed() -> bool:
        series = str(rtset.ct[0].SeriesInstanceUID)
        answer = gateway.post("/rt-gateway/index/query", {
            "sql": f"select count(*) as n from DICOMimages where SeriesInst='{series}'"}).json()
        return bool(answer["rows"][0]["n"] == SLICES)

    wait_until(indexed, 60, f"{syntax}: the compressed CT in the index")
