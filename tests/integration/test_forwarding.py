"""Rules decide, Orthanc sends: one gateway and two destinations for the whole module."""

from __future__ import annotations

import copy
import csv
import io
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.uid import generate_uid
from pynetdicom import AE, AllStoragePresentationContexts, evt

from tests.integration.conftest import keep_logs
from tests.integration.helpers import arrival_order, gateway_rows, sop_uids, study_jobs_done, study_sop_uids
from tests.support.orthanc import USER, OrthancProcess, free_port, send_raw_files, storescu, wait_until
from tests.support.rtset import make_rt_set, write_datasets, write_malformed

RULES = """
rules:
  - name: Ethos adaptive plans
    on: stable-study
    match:
      calling_aet: FOLLOW
      plan_label: {contains: ADP}
      modality: [CT, RTPLAN, RTSTRUCT, RTDOSE]
      tags: {StudyDescription: {regex: "(?i)prostate"}}
    actions:
      - forward: [ORGANO, ARCHIVE]
  - name: Refusal probe
    on: stable-study
    match: {calling_aet: REFTEST}
    actions:
      - forward: REFUSER
"""


class RefusingPeer:
    """A pynetdicom C-STORE SCP that refuses one chosen SOP instance with status 0xA700."""

    def __init__(self) -> None:
        self.port = free_port()
        self.refuse: set[str] = set()
        self.accepted: list[str] = []
        self._lock = threading.Lock()
        ae = AE(ae_title="REFUSER")
        ae.supported_contexts = AllStoragePresentationContexts
        self.server = ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)]
        )

    def _store(self, event: evt.Event) -> int:
        uid = str(event.request.AffectedSOPInstanceUID)
        if uid in self.refuse:
            return 0xA700
        with self._lock:
            self.accepted.append(uid)
        return 0x0000

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture(scope="module")
def refuser() -> Iterator[RefusingPeer]:
    peer = RefusingPeer()
    yield peer
    peer.close()


@pytest.fixture(scope="module")
def gateway(
    workdir: Path, destinations: dict[str, OrthancProcess], refuser: RefusingPeer
) -> Iterator[OrthancProcess]:
    process = OrthancProcess(
        workdir / "gateway", "RTGATEWAY", plugin=True, rules=RULES,
        modalities={**destinations, "REFUSER": ("REFUSER", refuser.port)},
    )
    process.start()
    yield process
    process.stop()
    keep_logs(process, "forwarding-gateway")


def send(gateway: OrthancProcess, folder: Path, datasets: list, calling: str) -> None:
    storescu(write_datasets(datasets, folder), gateway.dicom_port, calling=calling,
             called="RTGATEWAY")


def test_follow_adp_study_reaches_both_targets_in_plan_order(
    gateway: OrthancProcess, destinations: dict[str, OrthancProcess], tmp_path: Path
) -> None:
    rtset = make_rt_set("FOLLOW-1", plan_label="ADP1")
    send(gateway, tmp_path, rtset.all(), "FOLLOW")
    expected = sop_uids(rtset.all())

    for peer in destinations.values():
        wait_until(lambda p=peer: study_sop_uids(p, rtset.study_uid) == expected, 60,
                   f"study complete at {peer.aet}")
        order = arrival_order(peer, rtset.study_uid)
        assert order == sorted(order, key=["CT", "RTSTRUCT", "RTPLAN", "RTDOSE"].index)

    # The destinations answer the last store a moment before the jobs are settled: wait for that.
    wait_until(lambda: study_jobs_done(gateway, rtset.study_uid), 60, "both jobs done")
    transfers = gateway_rows(gateway, kind="transfers", study=rtset.study_uid)
    assert {row["target"] for row in transfers} == {"ORGANO", "ARCHIVE"}
    assert all(row["status"] == "success" for row in transfers)
    assert sum(row["instances"] for row in transfers) == 2 * len(expected)
    assert all(row["bytes"] > 0 for row in transfers)
    evaluation = gateway_rows(gateway, kind="evaluations", study=rtset.study_uid,
                              rule="Ethos adaptive plans")
    assert evaluation and evaluation[-1]["matched"] == 1

    csv_answer = gateway.get("/rt-gateway/audit", params={"kind": "transfers", "format": "csv",
                                                          "study": rtset.study_uid})
    assert csv_answer.headers["Content-Type"].startswith("text/csv")
    csv_rows = list(csv.DictReader(io.StringIO(csv_answer.text)))
    assert {row["target"] for row in csv_rows} == {"ORGANO", "ARCHIVE"}
    bad_filter = gateway.get("/rt-gateway/audit", params={"kind": "transfers", "colour": "red"})
    assert bad_filter.status_code == 400 and "colour" in bad_filter.json()["error"]

    stats = gateway.json("/rt-gateway/stats")
    assert stats["by_rule"]["Ethos adaptive plans"]["sent"] >= 2 * len(expected)
    assert stats["by_target"]["ORGANO"]["sent"] >= len(expected)
    metrics = gateway.get("/tools/metrics-prometheus").text
    assert "rtgw_instances_sent_total" in metrics and "rtgw_jobs_done" in metrics

    log_files = list((gateway.folder / "gateway" / "logs").glob("transactions-*.log"))
    assert log_files and rtset.study_uid in log_files[0].read_text()

    # Labels where this Orthanc has them (1.12+): the study says where it went.
    study_id = gateway.post("/tools/lookup", rtset.study_uid).json()[0]["ID"]
    if gateway.json("/system").get("HasLabels"):
        wanted = {"rtgw-sent-ORGANO", "rtgw-sent-ARCHIVE"}
        wait_until(lambda: wanted <= set(gateway.json(f"/studies/{study_id}/labels")), 30,
                   "the study is labelled with its targets")
        found = gateway.post("/tools/find", {"Level": "Study", "Query": {},
                                             "Labels": ["rtgw-sent-ORGANO"]}).json()
        assert study_id in found
    else:  # Orthanc 1.10: no labels, and none asked for
        assert "Labels" not in gateway.json(f"/studies/{study_id}")


@pytest.mark.parametrize(
    ("label", "calling", "condition"),
    [("SCHED1", "FOLLOW", "match.plan_label"), ("ADP2", "OTHERAE", "match.calling_aet")],
)
def test_non_matching_study_is_not_sent_and_the_failed_condition_is_named(
    gateway: OrthancProcess, destinations: dict[str, OrthancProcess], tmp_path: Path,
    label: str, calling: str, condition: str,
) -> None:
    rtset = make_rt_set(f"NOMATCH-{calling}", plan_label=label)
    send(gateway, tmp_path, rtset.all(), calling)

    evaluations = wait_until(
        lambda: gateway_rows(gateway, kind="evaluations", study=rtset.study_uid,
                             rule="Ethos adaptive plans"),
        30, "stable-study evaluation recorded",
    )
    assert evaluations[-1]["matched"] == 0
    assert evaluations[-1]["failed_condition"] == condition
    assert (label if condition.endswith("plan_label") else calling) in evaluations[-1]["reason"]

    study_id = gateway.post("/tools/lookup", rtset.study_uid).json()[0]["ID"]
    report = gateway.post("/rt-gateway/rules/test", {"study": study_id}).json()
    verdict = {item["rule"]: item for item in report["rules"]}["Ethos adaptive plans"]
    assert verdict["would_fire"] is False
    assert verdict["failed_condition"] == condition
    for peer in destinations.values():
        assert study_sop_uids(peer, rtset.study_uid) == set()
    assert gateway_rows(gateway, kind="transfers", study=rtset.study_uid) == []


def test_refused_instance_is_parked_and_the_rest_delivered(
    gateway: OrthancProcess, refuser: RefusingPeer, tmp_path: Path
) -> None:
    rtset = make_rt_set("REFUSE-1", plan_label="ADP9")
    bad = str(rtset.ct[3].SOPInstanceUID)
    refuser.refuse.add(bad)
    send(gateway, tmp_path, rtset.all(), "REFTEST")

    jobs = wait_until(
        lambda: [j for j in gateway.json("/rt-gateway/jobs", params={"state": "dead"})
                 if j["study_uid"] == rtset.study_uid],
        60, "job parked",
    )
    job = jobs[0]
    assert job["last_status"] == "0xA700"
    assert len(job["refused"]) == 1
    assert "0xA700" in job["last_error"]
    expected = sop_uids(rtset.all()) - {bad}
    assert expected <= set(refuser.accepted)
    assert bad not in refuser.accepted
    study = gateway.post("/tools/lookup", rtset.study_uid).json()[0]["ID"]
    labelled = gateway.json("/system").get("HasLabels")  # Orthanc 1.12+
    if labelled:
        wait_until(lambda: "rtgw-parked" in gateway.json(f"/studies/{study}/labels"), 30,
                   "the study is labelled parked")

    # The receiver is fixed; a person retries the parked job and only the refused one goes.
    refuser.refuse.clear()
    before = len(refuser.accepted)
    assert gateway.post(f"/rt-gateway/jobs/{job['id']}/retry").status_code == 200
    wait_until(lambda: gateway.json(f"/rt-gateway/jobs/{job['id']}")["state"] == "done", 30,
               "retried job done")
    assert refuser.accepted[before:] == [bad]
    if labelled:
        wait_until(lambda: "rtgw-parked" not in gateway.json(f"/studies/{study}/labels"), 30,
                   "the parked label is gone once the job completed")


def test_routes_require_authentication(gateway: OrthancProcess) -> None:
    import requests

    assert requests.get(f"{gateway.url}/rt-gateway/rules", timeout=5).status_code == 401
    wrong = requests.get(f"{gateway.url}/rt-gateway/rules", auth=(USER, "wrong"), timeout=5)
    assert wrong.status_code == 401


def test_broken_rules_at_reload_keep_the_old_rules(gateway: OrthancProcess) -> None:
    before = gateway.json("/rt-gateway/rules")
    try:
        gateway.rules_path.write_text(RULES.replace("contains: ADP", "contain: ADP"))
        answer = gateway.post("/rt-gateway/rules/reload")
        assert answer.status_code == 400
        assert answer.json()["error"].startswith("rules[0].match.plan_label: unknown operator")

        gateway.rules_path.write_text(RULES.replace("REFUSER", "NOWHERE"))
        answer = gateway.post("/rt-gateway/rules/reload")
        assert answer.status_code == 400
        assert "unknown target 'NOWHERE'" in answer.json()["error"]

        assert gateway.json("/rt-gateway/rules")["sha256"] == before["sha256"]
        events = gateway_rows(gateway, kind="events", status="refused")
        assert any("NOWHERE" in row["detail"] for row in events)
    finally:
        gateway.rules_path.write_text(RULES)
    assert gateway.post("/rt-gateway/rules/reload").status_code == 200


def test_malformed_dicom_does_not_stop_the_gateway(
    gateway: OrthancProcess, destinations: dict[str, OrthancProcess], tmp_path: Path
) -> None:
    before = gateway.instance_count()
    statuses = send_raw_files(write_malformed(tmp_path / "bad"), gateway.dicom_port, calling="FOLLOW")
    # Orthanc refuses the slice without SOPInstanceUID with a failure status and drops the
    # association on the truncated one; the random bytes cannot even be sent. Nothing is stored.
    assert statuses[0] != 0 and statuses[2] not in (None, 0), statuses
    assert gateway.instance_count() == before
    rtset = make_rt_set("AFTER-BAD", plan_label="ADP3")
    send(gateway, tmp_path / "good", rtset.all(), "FOLLOW")
    expected = sop_uids(rtset.all())
    wait_until(lambda: study_sop_uids(destinations["ORGANO"], rtset.study_uid) == expected, 60,
               "good study forwarded after malformed input")
    assert gateway.json("/rt-gateway/stats")


def test_study_that_grows_after_it_was_sent_is_sent_again_only_for_what_is_new(
    gateway: OrthancProcess, destinations: dict[str, OrthancProcess], tmp_path: Path
) -> None:
    rtset = make_rt_set("GROW-1", plan_label="ADP1")
    send(gateway, tmp_path / "first", rtset.all(), "FOLLOW")
    expected = sop_uids(rtset.all())
    wait_until(lambda: study_sop_uids(destinations["ARCHIVE"], rtset.study_uid) == expected, 60,
               "first delivery")

    extra = copy.deepcopy(rtset.ct[0])
    extra.SOPInstanceUID = generate_uid()
    extra.file_meta.MediaStorageSOPInstanceUID = extra.SOPInstanceUID
    extra.InstanceNumber = len(rtset.ct) + 1
    send(gateway, tmp_path / "second", [extra], "FOLLOW")
    wait_until(
        lambda: study_sop_uids(destinations["ARCHIVE"], rtset.study_uid)
        == expected | {str(extra.SOPInstanceUID)},
        60, "the new slice delivered",
    )
    wait_until(lambda: len(gateway_rows(gateway, kind="transfers", study=rtset.study_uid)) >= 4,
               30, "second transfers recorded")
    transfers = gateway_rows(gateway, kind="transfers", study=rtset.study_uid)
    assert sorted(row["instances"] for row in transfers) == [1, 1, len(expected), len(expected)]
