"""Plans as one unit, with a real gateway Orthanc and two real destination Orthancs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from tests.integration.conftest import keep_logs
from tests.integration.helpers import arrival_order, gateway_rows, sop_uids, study_sop_uids
from tests.support.orthanc import OrthancProcess, storescu, wait_until
from tests.support.rtset import add_plan, make_rt_set, write_datasets

RULES = """
rules:
  - name: Ethos ADP
    on: plan-complete
    match:
      calling_aet: ETHOS
      plan_label: {contains: ADP}
    actions:
      - forward: ORGANO
  - name: Grace
    on: plan-complete
    complete_within: 3s
    then: forward-incomplete
    match: {calling_aet: GRACE}
    actions:
      - forward: ARCHIVE
"""
MODALITY_ORDER = ["CT", "RTSTRUCT", "RTPLAN", "RTDOSE"]


@pytest.fixture(scope="module")
def gateway(workdir: Path, destinations: dict[str, OrthancProcess]) -> Iterator[OrthancProcess]:
    process = OrthancProcess(workdir / "gateway", "RTGATEWAY", plugin=True, rules=RULES,
                             modalities=destinations)
    process.start()
    yield process
    process.stop()
    keep_logs(process, "plans-gateway")


def send(gateway: OrthancProcess, folder: Path, datasets: list[Dataset], calling: str) -> None:
    storescu(write_datasets(datasets, folder), gateway.dicom_port, calling=calling,
             called="RTGATEWAY")


def plans_of(gateway: OrthancProcess, patient: str) -> dict[str, dict]:
    return {plan["label"]: plan for plan in gateway.json("/rt-gateway/plans",
                                                        params={"patient": patient})}


def runs(plan: dict, rule: str) -> list[str]:
    return [run["outcome"] for run in plan["rule_runs"] if run["rule"] == rule]


def test_ethos_adp_bundle_alone_is_forwarded_whole_in_plan_order_once(
    gateway: OrthancProcess, destinations: dict[str, OrthancProcess], tmp_path: Path
) -> None:
    rtset = make_rt_set("ETHOS-1", plan_label="SCHED", n_slices=10)
    adp_plan, adp_dose = add_plan(rtset, "ADP1")
    assert rtset.rtdose is not None and adp_dose is not None
    # Doses before their plans, the CT last and in two associations.
    send(gateway, tmp_path / "a", [adp_dose, rtset.rtdose], "ETHOS")
    send(gateway, tmp_path / "b", [adp_plan, rtset.rtplan, rtset.rtstruct], "ETHOS")
    send(gateway, tmp_path / "c", rtset.ct[:4], "ETHOS")
    send(gateway, tmp_path / "d", rtset.ct[4:], "ETHOS")

    organo = destinations["ORGANO"]
    expected = sop_uids([*rtset.ct, rtset.rtstruct, adp_plan, adp_dose])
    wait_until(lambda: study_sop_uids(organo, rtset.study_uid) == expected, 90,
               "the ADP bundle at ORGANO")
    order = arrival_order(organo, rtset.study_uid)
    assert order == sorted(order, key=MODALITY_ORDER.index)
    assert order.count("CT") == 10 and order[-2:] == ["RTPLAN", "RTDOSE"]

    plans = plans_of(gateway, "ETHOS-1")
    assert set(plans) == {"SCHED", "ADP1"}
    assert plans["SCHED"]["complete"] and plans["ADP1"]["complete"]
    assert plans["ADP1"]["calling_aet"] == "ETHOS"
    assert [o["modality"] for o in plans["ADP1"]["objects"]] == ["CT"] * 10 + MODALITY_ORDER[1:]
    detail = gateway.json(f"/rt-gateway/plans/{plans['ADP1']['id']}")
    assert runs(detail, "Ethos ADP") == ["fired"]
    assert runs(detail, "Grace") == ["not-matched"]
    sched = gateway.json(f"/rt-gateway/plans/{plans['SCHED']['id']}")
    assert runs(sched, "Ethos ADP") == ["not-matched"]

    # Exactly once: more passes of the intake do not fire again.
    wait_until(lambda: gateway.json("/rt-gateway/jobs", params={"state": "done"}), 30, "job done")
    jobs = [job for job in gateway.json("/rt-gateway/jobs") if job["rule"] == "Ethos ADP"]
    assert len(jobs) == 1 and jobs[0]["instances"] == len(expected)
    fired = [row for row in gateway_rows(gateway, kind="evaluations", rule="Ethos ADP")
             if row["matched"] == 1]
    assert len(fired) == 1 and fired[0]["resource_id"] == str(adp_plan.SOPInstanceUID)
    assert str(rtset.rtplan.SOPInstanceUID) not in organo.sop_instance_uids()


def test_grace_time_forwards_an_incomplete_bundle_and_says_what_was_missing(
    gateway: OrthancProcess, destinations: dict[str, OrthancProcess], tmp_path: Path
) -> None:
    rtset = make_rt_set("GRACE-1", plan_label="PLAN1", n_slices=6, with_dose=False)
    send(gateway, tmp_path, rtset.all(), "GRACE")
    archive = destinations["ARCHIVE"]
    expected = sop_uids(rtset.all())
    wait_until(lambda: study_sop_uids(archive, rtset.study_uid) == expected, 60,
               "incomplete bundle forwarded after the grace time")
    events = [row for row in gateway_rows(gateway, kind="events", patient="GRACE-1")
              if row["event"] == "plan-incomplete"]
    assert len(events) == 1
    assert events[0]["status"] == "forwarded-incomplete"
    assert "missing: RTDOSE (0 of 1 expected)" in events[0]["detail"]
    plan = plans_of(gateway, "GRACE-1")["PLAN1"]
    assert plan["complete"] is False and plan["missing"] == ["RTDOSE (0 of 1 expected)"]


def test_manual_send_of_two_plans_to_two_targets_delivers_all_four(
    gateway: OrthancProcess, destinations: dict[str, OrthancProcess], tmp_path: Path
) -> None:
    rtset = make_rt_set("MANUAL-1", plan_label="SCHED", n_slices=5)
    adp_plan, adp_dose = add_plan(rtset, "ADP7")
    assert adp_dose is not None
    send(gateway, tmp_path, [*rtset.all(), adp_plan, adp_dose], "PLANNER")
    plans = wait_until(
        lambda: (p := plans_of(gateway, "MANUAL-1")) and len(p) == 2
        and all(x["complete"] for x in p.values()) and p,
        30, "two complete plans listed",
    )
    answer = gateway.post("/rt-gateway/plans/send", {
        "plans": [plans["SCHED"]["id"], plans["ADP7"]["id"]], "targets": ["ORGANO", "ARCHIVE"],
    })
    assert answer.status_code == 200, answer.text
    jobs = answer.json()["jobs"]
    assert len(jobs) == 4 and all(isinstance(job["id"], int) for job in jobs)
    assert {(job["label"], job["target"]) for job in jobs} == {
        (label, target) for label in ("SCHED", "ADP7") for target in ("ORGANO", "ARCHIVE")}
    for job in jobs:
        wait_until(lambda j=job: gateway.json(f"/rt-gateway/jobs/{j['id']}")["state"] == "done",
                   60, f"job {job['id']} done")
    expected = sop_uids([*rtset.all(), adp_plan, adp_dose])
    for peer in destinations.values():
        assert study_sop_uids(peer, rtset.study_uid) == expected

    unknown = gateway.post("/rt-gateway/plans/send", {"plans": [plans["SCHED"]["id"]],
                                                     "targets": ["NOWHERE"]})
    assert unknown.status_code == 400 and "NOWHERE" in unknown.json()["error"]
    missing = gateway.post("/rt-gateway/plans/send", {"plans": ["1.2.3"], "targets": ["ORGANO"]})
    assert missing.status_code == 404


def test_conquest_index_answers_old_queries_and_refuses_writes(
    gateway: OrthancProcess, tmp_path: Path
) -> None:
    rtset = make_rt_set("INDEX-1", plan_label="IDX1", n_slices=4)
    send(gateway, tmp_path, rtset.all(), "PLANNER")
    plan_series = str(rtset.rtplan.SeriesInstanceUID)

    def rtplan_series() -> set[str]:
        answer = gateway.post("/rt-gateway/index/query",
                              {"sql": "select seriesinst from dicomseries where modality='RTPLAN'"})
        answer.raise_for_status()
        return {row["SeriesInst"] for row in answer.json()["rows"]}

    wait_until(lambda: plan_series in rtplan_series(), 30, "plan series indexed")
    in_orthanc = {s["MainDicomTags"]["SeriesInstanceUID"] for s in gateway.post(
        "/tools/find", {"Level": "Series", "Query": {"Modality": "RTPLAN"}, "Expand": True}).json()}
    assert rtplan_series() == in_orthanc

    csv_answer = gateway.post("/rt-gateway/index/query", {
        "sql": "select ImageNumbe, ObjectFile from DICOMimages where ImagePat='INDEX-1' "
               "and SOPClassUI='1.2.840.10008.5.1.4.1.1.2' order by cast(ImageNumbe as int)",
        "format": "csv"})
    assert csv_answer.headers["Content-Type"].startswith("text/csv")
    lines = csv_answer.text.strip().splitlines()
    assert lines[0] == "ImageNumbe,ObjectFile" and [line.split(",")[0] for line in lines[1:]] == [
        "1", "2", "3", "4"]
    first_ct = lines[1].split(",")[1]
    assert gateway.json(f"/instances/{first_ct}")["MainDicomTags"]["SOPInstanceUID"] == str(
        rtset.ct[0].SOPInstanceUID)

    refused = gateway.post("/rt-gateway/index/query", {"sql": "delete from DICOMimages"})
    assert refused.status_code == 400 and "readonly" in refused.json()["error"]
    assert plan_series in rtplan_series()

    dump = gateway.get("/rt-gateway/index/tables/RTplans.csv")
    assert dump.status_code == 200 and "IDX1" in dump.text and "PrescriptionGy" in dump.text
    assert gateway.get("/rt-gateway/index/tables/nothing.csv").status_code == 404

    plan = wait_until(lambda: plans_of(gateway, "INDEX-1").get("IDX1"), 30, "plan listed")
    detail = gateway.json(f"/rt-gateway/plans/{plan['id']}")
    assert detail["metrics"]["Fractions"] == 20 and detail["metrics"]["PrescriptionGy"] == 60.0
    assert [beam["MU"] for beam in detail["metrics"]["beams"]] == [86.25] * 4
    assert [roi["ROIName"] for roi in detail["rois"]] == ["BODY", "PTV", "Rectum"]
    assert abs(detail["doses"][0]["DoseMaxGy"] - 61.8) < 1e-3
    dvh = {row["roi"]: row for row in detail["dvh"]["computed"]}
    assert set(dvh) == {"BODY", "PTV", "Rectum"} and detail["dvh"]["prescription_gy"] == 60.0
    assert abs(dvh["PTV"]["Dmax"] - 61.8) < 1e-3 and dvh["PTV"]["V_prescription_pct"] > 90
    assert dvh["Rectum"]["Dmean"] < dvh["PTV"]["Dmean"]

    # Deleted in Orthanc, gone from the index.
    plan_instance = gateway.post("/tools/lookup", str(rtset.rtplan.SOPInstanceUID)).json()[0]["ID"]
    assert gateway.delete(f"/instances/{plan_instance}").status_code == 200
    wait_until(lambda: plan_series not in rtplan_series(), 30, "deleted plan leaves the index")


def test_dvh_comes_before_the_images_and_says_which_are_missing(
    gateway: OrthancProcess, tmp_path: Path
) -> None:
    """A DVH needs the structure set, the plan and the dose, not the CT: it is there while images
    are missing, and the answer names them."""
    rtset = make_rt_set("EARLY-DVH", plan_label="EARLY1", n_slices=8)
    send(gateway, tmp_path, [rtset.ct[0], rtset.rtstruct, rtset.rtplan, rtset.rtdose], "PLANNER")
    plan = wait_until(lambda: plans_of(gateway, "EARLY-DVH").get("EARLY1"), 60, "plan known")
    assert plan["complete"] is False
    detail = wait_until(
        lambda: (lambda d: d if d.get("dvh") and d["dvh"].get("computed") else None)(
            gateway.json(f"/rt-gateway/plans/{plan['id']}")), 60, "a DVH without the images")
    dvh = detail["dvh"]
    assert dvh["complete"] is False and dvh["missing"] == [
        f"7 of 8 referenced images (first {rtset.ct[1].SOPInstanceUID})"], dvh["missing"]
    assert {row["roi"] for row in dvh["computed"]} == {"BODY", "PTV", "Rectum"}
    send(gateway, tmp_path / "rest", rtset.ct[1:], "PLANNER")
    wait_until(lambda: gateway.json(f"/rt-gateway/plans/{plan['id']}")["dvh"]["complete"], 60,
               "the DVH says complete once the images are there")


def test_a_broken_structure_costs_only_its_own_dvh(gateway: OrthancProcess,
                                                    tmp_path: Path) -> None:
    """A structure set with a contour point that is not a number (written as "NaN"): that ROI is
    listed under not_computed with the reason, the others have their DVH, the answer is JSON."""
    rtset = make_rt_set("BROKEN-ROI", plan_label="BROKEN1", n_slices=8)
    names = {int(item.ROINumber): str(item.ROIName)
             for item in rtset.rtstruct.StructureSetROISequence}
    broken = rtset.rtstruct.ROIContourSequence[1]
    points = list(broken.ContourSequence[0].ContourData)
    points[0] = "NaN"
    broken.ContourSequence[0].ContourData = points
    send(gateway, tmp_path, [*rtset.ct, rtset.rtstruct, rtset.rtplan, rtset.rtdose], "PLANNER")
    plan = wait_until(lambda: plans_of(gateway, "BROKEN-ROI").get("BROKEN1"), 60, "plan known")
    response = wait_until(lambda: (lambda r: r if r.json().get("dvh", {}).get("computed") else None)(
        gateway.get(f"/rt-gateway/plans/{plan['id']}")), 60, "a DVH")
    assert "NaN" not in response.text
    dvh = response.json()["dvh"]
    victim = names[int(broken.ReferencedROINumber)]
    assert [(row["roi"], "not finite" in row["reason"]) for row in dvh["not_computed"]] == [
        (victim, True)]
    assert {row["roi"] for row in dvh["computed"]} == set(names.values()) - {victim}
