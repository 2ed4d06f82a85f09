"""Vendor-shaped cases (tests/support/vendor_corpus.py) through every capability at once: plan
bundles and DVH, the overlay series, de-identification, the DRAW export and the index."""

from __future__ import annotations

from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread

from tests.integration.conftest import keep_logs, require_orthanc
from tests.integration.helpers import running_peers
from tests.support.orthanc import OrthancProcess, storescu, wait_until
from tests.support.rtset import write_datasets
from tests.support.vendor_corpus import CASES

RULES = """
rules:
  - name: contours for the viewer
    on: instance
    match: {{calling_aet: VENDOR, modality: RTSTRUCT}}
    actions:
      - overlay: {{planes: [axial], forward: [VIEWER], series_description: Contours,
                  wait_for_images: 90s}}
  - name: structures to the DRAW folder
    on: instance
    match: {{calling_aet: VENDOR, modality: RTSTRUCT}}
    actions:
      - export: {export}
  - name: research copy
    on: stable-study
    match: {{calling_aet: VENDOR}}
    actions:
      - anonymize: {{profile: full}}
      - forward: RESEARCH
"""


@pytest.fixture(scope="module")
def servers(workdir: Path) -> Iterator[dict[str, OrthancProcess]]:
    require_orthanc()
    export = workdir / "export"
    export.mkdir()
    with running_peers(workdir, "VIEWER", "RESEARCH") as peers:
        gateway = OrthancProcess(workdir / "gateway", "RTGATEWAY", plugin=True, stable_age=1,
                                 rules=RULES.format(export=export), modalities=dict(peers),
                                 gateway_settings={"Contours": {"WaitPollSeconds": 0.5}})
        gateway.start()
        yield {"gateway": gateway, **peers, "export": export}  # type: ignore[dict-item]
        gateway.stop()
    keep_logs(gateway, "vendor-corpus-gateway")


@pytest.mark.parametrize("name", list(CASES))
def test_vendor_shaped_case_flows_through_every_capability(
    servers: dict, tmp_path: Path, name: str
) -> None:
    gateway, viewer = servers["gateway"], servers["VIEWER"]
    case = CASES[name]()
    rtset = case.rtset
    storescu(write_datasets(case.datasets(), tmp_path), gateway.dicom_port, calling="VENDOR")

    # Plans and DVH.
    plan = wait_until(lambda: [p for p in gateway.json("/rt-gateway/plans",
                                                       params={"patient": rtset.patient_id})
                               if p["label"] == case.plan_label and p["complete"]],
                      60, f"{name}: plan {case.plan_label} complete")[0]
    detail = wait_until(lambda: (lambda d: d if (d.get("dvh") or {}).get("computed") else None)(
        gateway.json(f"/rt-gateway/plans/{plan['id']}")), 60, f"{name}: DVH")
    dvh = detail["dvh"]
    assert {row["roi"] for row in dvh["computed"]} == set(case.roi_names), dvh.get("error")
    ptv = next(row for row in dvh["computed"] if "PTV" in row["roi"])
    assert ptv["Dmax"] == pytest.approx(61.8, rel=0.01)          # 103 % of 60 Gy
    if name == "per-beam-doses":
        assert dvh["dose_source"] == "sum of 4 BEAM doses"
    if name == "dose-with-dvhs":
        assert {row["roi"] for row in dvh["comparison"]} == set(case.roi_names)

    # The overlay series at the viewer.
    def overlay() -> list | None:
        found = viewer.post("/tools/find", {"Level": "Instance", "Query": {
            "StudyInstanceUID": rtset.study_uid, "SeriesDescription": "Contours*"}}).json()
        return found if len(found) == len(rtset.ct) else None

    wait_until(overlay, 90, f"{name}: overlay series at the viewer")

    # The DRAW export, once.
    sop = str(rtset.rtstruct.SOPInstanceUID)
    exported = wait_until(lambda: list(servers["export"].glob(f"*{sop}*")), 60,
                          f"{name}: structure set exported")
    assert len(exported) == 1

    # The de-identified copies, ROI names kept whatever their character set.
    def mapped() -> dict | None:
        answer = gateway.get("/rt-gateway/deid/mappings", params={"patient": rtset.patient_id})
        if answer.status_code == 404:  # nothing de-identified yet
            return None
        copies = answer.json().get("copies", [])
        return answer.json() if len(copies) >= len(case.datasets()) else None

    mapping = wait_until(mapped, 90, f"{name}: every object de-identified")
    structures = [c for c in mapping["copies"] if gateway.json(
        f"/instances/{c['copy_instance_id']}/tags?simplify")["Modality"] == "RTSTRUCT"]
    assert len(structures) == 1
    copy = dcmread(BytesIO(gateway.get(
        f"/instances/{structures[0]['copy_instance_id']}/file").content))
    assert tuple(roi.ROIName for roi in copy.StructureSetROISequence) == case.roi_names
    assert copy.PatientIdentityRemoved == "YES"

    # The index, names included.
    def indexed() -> list | None:
        rows = gateway.post("/rt-gateway/index/query", {
            "sql": f"select ROINames from RTstructs where SOPInstanc='{sop}'"}).json()["rows"]
        return rows or None

    rows = wait_until(indexed, 60, f"{name}: structure set indexed")
    assert rows[0]["ROINames"].split("\\") == list(case.roi_names)
