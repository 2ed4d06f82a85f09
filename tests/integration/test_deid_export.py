"""De-identified RT sets that still link at a real destination, and the DRAW RTSTRUCT export."""

from __future__ import annotations

from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pytest
import requests
from pydicom import dcmread
from pydicom.dataset import Dataset

from tests.integration.conftest import keep_logs, require_orthanc
from tests.integration.helpers import gateway_rows
from tests.support.orthanc import OrthancProcess, storescu, wait_until
from tests.support.rtset import RtSet, make_rt_set, write_datasets

RULES = """
rules:
  - name: research copy
    on: stable-study
    match: {{calling_aet: TPS}}
    actions:
      - anonymize: {{profile: full, options: [retain-longitudinal-modified-dates]}}
      - forward: [RESEARCH]
  - name: research copy, original removed
    on: stable-study
    match: {{calling_aet: TPSMOVE}}
    actions:
      - anonymize: {{profile: full, keep_original: false}}
      - forward: RESEARCH
  - name: DRAW export
    on: instance
    match: {{calling_aet: AUTOSEG, modality: RTSTRUCT}}
    actions:
      - export: {{folder: {draw}, filename: "DRAW_{{PatientID}}_{{SOPInstanceUID}}.dcm"}}
  - name: DRAW export, second rule on the same folder
    on: instance
    match: {{calling_aet: AUTOSEG, modality: RTSTRUCT}}
    actions:
      - export: {draw}
  - name: DRAW export to a share mounted late
    on: instance
    match: {{calling_aet: AUTOSEG2, modality: RTSTRUCT}}
    actions:
      - export: {late}
"""


@pytest.fixture(scope="module")
def research(workdir: Path) -> Iterator[OrthancProcess]:
    require_orthanc()
    process = OrthancProcess(workdir / "research", "RESEARCH")
    process.start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def folders(workdir: Path) -> dict[str, Path]:
    draw = workdir / "exports" / "draw"
    draw.mkdir(parents=True)
    return {"draw": draw, "late": workdir / "exports" / "late"}


@pytest.fixture(scope="module")
def gateway(
    workdir: Path, research: OrthancProcess, folders: dict[str, Path]
) -> Iterator[OrthancProcess]:
    process = OrthancProcess(
        workdir / "gateway", "RTGATEWAY", plugin=True,
        rules=RULES.format(draw=folders["draw"], late=folders["late"]),
        modalities={"RESEARCH": research},
    )
    process.start()
    yield process
    process.stop()
    keep_logs(process, "deid-export-gateway")


def send(gateway: OrthancProcess, folder: Path, datasets: list[Dataset], calling: str) -> None:
    storescu(write_datasets(datasets, folder), gateway.dicom_port, calling=calling,
             called="RTGATEWAY")


def patient_files(peer: OrthancProcess, patient_id: str) -> list[Dataset]:
    answer = peer.post("/tools/find", {"Level": "Instance", "Query": {"PatientID": patient_id}})
    answer.raise_for_status()
    return [dcmread(BytesIO(peer.get(f"/instances/{iid}/file").content)) for iid in answer.json()]


def values(ds: Dataset) -> Iterator[str]:
    for element in ds:
        if element.VR == "SQ":
            for item in element.value or []:
                yield from values(item)
        elif element.VR not in ("OB", "OW", "OF", "UN") and element.value is not None:
            yield str(element.value)


def by_modality(datasets: list[Dataset]) -> dict[str, list[Dataset]]:
    grouped: dict[str, list[Dataset]] = {}
    for ds in datasets:
        grouped.setdefault(str(ds.Modality), []).append(ds)
    return grouped


def assert_links_resolve(copies: list[Dataset]) -> None:
    grouped = by_modality(copies)
    ct_uids = {str(ds.SOPInstanceUID) for ds in grouped["CT"]}
    (struct,) = grouped["RTSTRUCT"]
    plans, doses = grouped["RTPLAN"], grouped["RTDOSE"]
    plan_uids = {str(p.SOPInstanceUID) for p in plans}
    for plan in plans:
        assert plan.ReferencedStructureSetSequence[0].ReferencedSOPInstanceUID == struct.SOPInstanceUID
        assert plan.FrameOfReferenceUID == grouped["CT"][0].FrameOfReferenceUID
    for dose in doses:
        assert dose.ReferencedRTPlanSequence[0].ReferencedSOPInstanceUID in plan_uids
    study = struct.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0]
    series = study.RTReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == grouped["CT"][0].SeriesInstanceUID
    assert {str(i.ReferencedSOPInstanceUID) for i in series.ContourImageSequence} == ct_uids


def original_identifiers(rtset: RtSet) -> set[str]:
    found = {rtset.patient_id, *rtset.patient_name.split("^"), "19600101", "ACC001"}
    for ds in rtset.all():
        found |= {str(ds.SOPInstanceUID), str(ds.SeriesInstanceUID), str(ds.StudyInstanceUID),
                  str(ds.FrameOfReferenceUID)}
    return found


def test_full_profile_copy_links_at_the_destination_and_carries_no_identity(
    gateway: OrthancProcess, research: OrthancProcess, tmp_path: Path
) -> None:
    rtset = make_rt_set("DEID-4711", "Secret^Person^Anna", n_slices=4)
    send(gateway, tmp_path / "first", rtset.all(), "TPS")
    mapping = wait_until(
        lambda: gateway.get("/rt-gateway/deid/mappings", params={"patient": "DEID-4711"}).ok
        and gateway.json("/rt-gateway/deid/mappings", params={"patient": "DEID-4711"}),
        60, "mapping recorded",
    )
    pseudonym = mapping["new_patient_id"]
    wait_until(lambda: len(patient_files(research, pseudonym)) == len(rtset.all()), 60,
               "de-identified set at RESEARCH")
    copies = patient_files(research, pseudonym)
    assert_links_resolve(copies)
    forbidden = original_identifiers(rtset)
    for ds in copies:
        leaks = {f for f in forbidden for v in values(ds) if f in v}
        assert leaks == set(), f"{ds.Modality} carries {leaks}"
        assert ds.PatientIdentityRemoved == "YES" and ds.PatientName == pseudonym
        assert ds.LongitudinalTemporalInformationModified == "MODIFIED"
    assert research.post("/tools/find", {"Level": "Patient", "Query": {"PatientID": "DEID-4711"}}
                         ).json() == []
    # Each copy's report lists what the de-identification changed.
    reports = gateway.json("/rt-gateway/deid/mappings", params={"patient": "DEID-4711"})["copies"]
    assert reports and all("PatientName: replaced by the pseudonym" in c["report"] for c in reports)
    # The mapping re-links: the original study UID maps to the study UID at the destination.
    new_study = {row["original_uid"]: row["new_uid"] for row in mapping["uids"]}[rtset.study_uid]
    assert {str(ds.StudyInstanceUID) for ds in copies} == {new_study}
    # The copy came back into the gateway as gateway output: no rule fired on it.
    evaluations = wait_until(
        lambda: gateway_rows(gateway, kind="evaluations", study=new_study), 30,
        "the gateway evaluated the copy it stored")
    assert not any(row["matched"] for row in evaluations)
    copy_study = gateway.post("/tools/lookup", new_study).json()[0]["ID"]
    original_study = gateway.post("/tools/lookup", rtset.study_uid).json()[0]["ID"]
    if gateway.json("/system").get("HasLabels"):  # Orthanc 1.12+: Explorer 2 can filter by them
        wait_until(lambda: "rtgw-deid-copy" in gateway.json(f"/studies/{copy_study}/labels"), 30,
                   "the copy is labelled")
        assert "rtgw-deid-copy" not in gateway.json(f"/studies/{original_study}/labels")
    # The original stays (keep_original defaults to true); the logs never name the patient.
    assert gateway.post("/tools/lookup", rtset.study_uid).json()
    for log in (gateway.folder / "gateway" / "logs").glob("*.log"):
        text = log.read_text()
        assert "DEID-4711" not in text and "Secret" not in text
    assert "Secret^Person" not in gateway.log_path.read_text(errors="replace")

    # Days later, a second study of the same patient: same pseudonym, one patient at RESEARCH.
    later = make_rt_set("DEID-4711", "Secret^Person^Anna", n_slices=2)
    send(gateway, tmp_path / "later", later.all(), "TPS")
    total = len(rtset.all()) + len(later.all())
    wait_until(lambda: len(patient_files(research, pseudonym)) == total, 60, "second study")
    patients = research.post("/tools/find", {"Level": "Patient", "Query": {}}).json()
    studies = research.post("/tools/find", {"Level": "Study",
                                            "Query": {"PatientID": pseudonym}}).json()
    assert len(studies) == 2 and len(patients) == 1
    second = [ds for ds in patient_files(research, pseudonym)
              if str(ds.StudyInstanceUID) != new_study]
    assert_links_resolve(second)


def test_mapping_route_needs_authentication_and_a_patient(gateway: OrthancProcess) -> None:
    url = f"{gateway.url}/rt-gateway/deid/mappings?patient=DEID-4711"
    assert requests.get(url, timeout=5).status_code == 401
    assert gateway.get("/rt-gateway/deid/mappings").status_code == 400
    assert gateway.get("/rt-gateway/deid/mappings", params={"patient": "NOBODY"}).status_code == 404


def test_original_is_deleted_only_after_its_copy_is_stored(
    gateway: OrthancProcess, research: OrthancProcess, tmp_path: Path
) -> None:
    rtset = make_rt_set("MOVE-1", "Moved^Patient", n_slices=2)
    send(gateway, tmp_path, rtset.all(), "TPSMOVE")
    wait_until(lambda: gateway.post("/tools/lookup", rtset.study_uid).json() == [], 60,
               "original removed from the gateway")
    # Each copy's deletion time is written just after its original's DELETE: wait for all.
    mapping = wait_until(
        lambda: (m := gateway.json("/rt-gateway/deid/mappings", params={"patient": "MOVE-1"}))
        and len(m["copies"]) == len(rtset.all())
        and all(c["original_deleted_at"] for c in m["copies"]) and m, 30,
        "every original's deletion recorded")
    copies = mapping["copies"]
    assert len(copies) == len(rtset.all())
    assert all(c["original_deleted_at"] and c["stored_at"] <= c["original_deleted_at"]
               for c in copies)
    for copy in copies:  # the copies stay in the gateway
        assert gateway.get(f"/instances/{copy['copy_instance_id']}").ok
    wait_until(lambda: len(patient_files(research, mapping["new_patient_id"])) == len(rtset.all()),
               60, "copies forwarded")
    wait_until(lambda: any(row["event"] == "original-deleted" and row["status"] == "ok"
                           for row in gateway_rows(gateway, kind="events",
                                                   rule="research copy, original removed")),
               30, "the deletion audited")


def test_autoseg_rtstruct_exported_once_with_the_draw_name(
    gateway: OrthancProcess, folders: dict[str, Path], tmp_path: Path
) -> None:
    rtset = make_rt_set("DRAW-77", n_slices=2)
    sop = str(rtset.rtstruct.SOPInstanceUID)
    send(gateway, tmp_path / "a", [*rtset.ct, rtset.rtstruct], "AUTOSEG")
    send(gateway, tmp_path / "b", [rtset.rtstruct], "AUTOSEG")   # the modality sends it again
    expected = folders["draw"] / f"DRAW_DRAW-77_{sop}.dcm"
    wait_until(expected.exists, 60, "exported file")
    def export_events() -> list[dict]:
        return [r for r in gateway_rows(gateway, kind="events")
                if r["event"] in ("exported", "export-skipped") and sop in (r["detail"] or "")]

    # Two rules export to the same folder: one writes, the other finds the same content there.
    events = wait_until(lambda: len(export_events()) >= 2 and export_events(), 60,
                        "both rules decided")
    assert sorted(r["event"] for r in events) == ["export-skipped", "exported"]
    assert [p.name for p in folders["draw"].iterdir() if sop in p.name] == [expected.name]
    assert expected.read_bytes() == rtset_bytes(gateway, sop)
    rows = gateway.json("/rt-gateway/export/transfers", params={"sop": sop})
    assert len(rows) == 1
    assert rows[0]["ModifiedFileName"] == expected.name and rows[0]["PatientUID"] == "DRAW-77"
    assert rows[0]["SourceAET"] == "AUTOSEG" and rows[0]["DestinationPath"] == str(folders["draw"])
    csv_text = gateway.get("/rt-gateway/export/transfers",
                           params={"sop": sop, "format": "csv"}).text
    assert csv_text.splitlines()[0].startswith("id,PatientUID,PatientName,SOPInstanceUID")
    assert expected.name in csv_text
    # CT images from AUTOSEG do not match the rule: only the structure set is exported.
    assert len(list(folders["draw"].glob("DRAW_DRAW-77_*"))) == 1


def rtset_bytes(gateway: OrthancProcess, sop: str) -> bytes:
    (match,) = gateway.post("/tools/lookup", sop).json()
    return gateway.get(f"/instances/{match['ID']}/file").content


def test_unsafe_patient_id_stays_in_the_folder(
    gateway: OrthancProcess, folders: dict[str, Path], tmp_path: Path
) -> None:
    rtset = make_rt_set("../../escaped", "山田^太郎", n_slices=1)
    rtset.rtstruct.SpecificCharacterSet = "ISO_IR 192"
    send(gateway, tmp_path, [rtset.rtstruct], "AUTOSEG")
    sop = str(rtset.rtstruct.SOPInstanceUID)
    wait_until(lambda: list(folders["draw"].glob(f"*{sop}*")), 60, "exported")
    (written,) = list(folders["draw"].glob(f"*{sop}*"))
    assert written.name == f"DRAW_escaped_{sop}.dcm"
    exports = folders["draw"].parent
    assert [p for p in exports.parent.rglob(f"*{sop}*")] == [written]
    # The file is renamed into place a moment before its row commits: wait for the row.
    (row,) = wait_until(lambda: gateway.json("/rt-gateway/export/transfers", params={"sop": sop}),
                        30, "the export recorded")
    assert row["PatientUID"] == "../../escaped" and row["PatientName"] == "山田^太郎"


def test_destination_that_appears_later_gets_the_file(
    gateway: OrthancProcess, folders: dict[str, Path], tmp_path: Path
) -> None:
    rtset = make_rt_set("LATE-1", n_slices=1)
    send(gateway, tmp_path, [rtset.rtstruct], "AUTOSEG2")
    wait_until(lambda: any(r["event"] == "export-waiting" for r in gateway_rows(
        gateway, kind="events", rule="DRAW export to a share mounted late")), 60, "export waiting")
    assert not folders["late"].exists()
    folders["late"].mkdir()   # the share is mounted
    sop = str(rtset.rtstruct.SOPInstanceUID)
    wait_until(lambda: (folders["late"] / f"DRAW_LATE-1_{sop}.dcm").exists(), 60,
               "exported after the folder appeared")
    assert [p.name for p in folders["late"].iterdir()] == [f"DRAW_LATE-1_{sop}.dcm"]
