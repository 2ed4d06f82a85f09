"""pydicom's real RT test files (an RTPLAN with malformed UIDs, an RTSTRUCT written without a
file preamble, an RTDOSE in RELATIVE units), sent by storescu through a gateway that forwards,
de-identifies and indexes: each arrives once, the copies are no less valid than the originals
(dciodvfy), the relative dose is never indexed as Gy, the plan is listed with what it lacks."""

from __future__ import annotations

from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from tests.integration.conftest import keep_logs, require_orthanc
from tests.integration.helpers import running_peers
from tests.support.orthanc import OrthancProcess, storescu, wait_until
from tests.unit.test_deid_validity import dciodvfy_errors

FILES = ("rtplan.dcm", "rtstruct.dcm", "rtdose.dcm")
RULES = """
rules:
  - name: archive
    on: instance
    match: {calling_aet: REAL}
    actions:
      - forward: ARCHIVE
  - name: research
    on: instance
    match: {calling_aet: REAL}
    actions:
      - anonymize: {profile: full}
      - forward: RESEARCH
"""


@pytest.fixture(scope="module")
def servers(workdir: Path) -> Iterator[dict[str, OrthancProcess]]:
    require_orthanc()
    with running_peers(workdir, "ARCHIVE", "RESEARCH") as peers:
        gateway = OrthancProcess(workdir / "gateway", "RTGATEWAY", plugin=True, rules=RULES,
                                 modalities=dict(peers))
        gateway.start()
        yield {"gateway": gateway, **peers}
        gateway.stop()
    keep_logs(gateway, "real-rt-files-gateway")


def part10(name: str, folder: Path) -> Path:
    """The test file as sent over DICOM: read as it is (force: rtstruct.dcm has no preamble),
    written with its file meta."""
    ds = dcmread(get_testdata_file(name), force=True)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    path = folder / name
    ds.save_as(path, enforce_file_format=True)
    return path


def test_pydicoms_real_rt_files_are_forwarded_copied_and_indexed(
    servers: dict[str, OrthancProcess], tmp_path: Path
) -> None:
    gateway, archive, research = servers["gateway"], servers["ARCHIVE"], servers["RESEARCH"]
    files = [part10(name, tmp_path) for name in FILES]
    storescu(files, gateway.dicom_port, calling="REAL")
    originals = {str(dcmread(path).SOPInstanceUID): path for path in files}

    wait_until(lambda: archive.sop_instance_uids() == set(originals), 60, "all three archived")
    wait_until(lambda: archive.instance_count() == 3, 10, "each once")

    def copies() -> list | None:
        found = research.post("/tools/find", {"Level": "Instance", "Query": {}}).json()
        return found if len(found) == 3 else None

    copy_ids = wait_until(copies, 60, "three de-identified copies at RESEARCH")
    for instance_id in copy_ids:
        copy = dcmread(BytesIO(research.get(f"/instances/{instance_id}/file").content))
        assert copy.PatientIdentityRemoved == "YES"
        original_path = next(p for p in files if dcmread(p).SOPClassUID == copy.SOPClassUID)
        copy_path = tmp_path / f"copy-{original_path.name}"
        copy.save_as(copy_path, enforce_file_format=True)
        new = dciodvfy_errors(copy_path) - dciodvfy_errors(original_path)
        assert new == set(), f"{copy.Modality}: {new}"

    def dose_row() -> dict | None:
        answer = gateway.post("/rt-gateway/index/query", {
            "sql": "select Units, DoseMaxGy from RTdoses"}).json()
        return answer["rows"][0] if answer["rows"] else None

    assert wait_until(dose_row, 60, "the dose indexed") == {"Units": "RELATIVE", "DoseMaxGy": None}
    plan = wait_until(lambda: [p for p in gateway.json("/rt-gateway/plans")
                               if p["label"] == "Plan1"], 60, "the plan listed")[0]
    assert plan["complete"] is False and plan["missing"]
    detail = gateway.get(f"/rt-gateway/plans/{plan['id']}")
    assert detail.status_code == 200 and detail.json()["label"] == "Plan1"
    assert gateway.get("/rt-gateway/plans", params={"max_dose_gt": "0"}).json() == []
