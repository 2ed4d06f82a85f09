"""Approval before sending on real processes (issue 26, item 1): one gateway Orthanc with three
registered users, counting pynetdicom receivers, storescu as the planning system.

- a plan held for approval: one approver approves LINAC, another rejects ARCHIVE with a comment;
  exactly LINAC receives, the audit names both users, nothing else moves;
- a user who is not an approver, or a request without a user, decides nothing;
- a hold nobody decides in time parks its jobs with the reason; retried by hand, it is held again.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.helpers import counting_peers, gateway_to_peers
from tests.support.orthanc import PASSWORD, USER, OrthancProcess, storescu, wait_until
from tests.support.peers import CountingPeer
from tests.support.rtset import make_rt_set, write_datasets

CURIE, BRAGG, INTRUDER = ("dr.curie", "pw-curie"), ("phys.bragg", "pw-bragg"), ("clerk", "pw-clerk")
RULES = """
rules:
  - name: plans for treatment
    on: stable-study
    match: {calling_aet: TPS}
    actions:
      - hold: {approvers: [dr.curie, phys.bragg], expires: 7d}
      - forward: [LINAC, ARCHIVE]
  - name: quick hold
    on: stable-study
    match: {calling_aet: QUICK}
    actions:
      - hold: {expires: 3s}
      - forward: LINAC
"""


@pytest.fixture(scope="module")
def peers() -> Iterator[dict[str, CountingPeer]]:
    yield from counting_peers("LINAC", "ARCHIVE")


@pytest.fixture(scope="module")
def gateway(workdir: Path, peers: dict[str, CountingPeer]) -> Iterator[OrthancProcess]:
    users = {USER: PASSWORD, CURIE[0]: CURIE[1], BRAGG[0]: BRAGG[1], INTRUDER[0]: INTRUDER[1]}
    yield from gateway_to_peers(workdir, peers, RULES, "approvals-gateway",
                                extra={"RegisteredUsers": users})


def waiting(gateway: OrthancProcess, patient_id: str) -> dict[str, Any] | None:
    answer = gateway.json("/rt-gateway/approvals", params={"state": "all"})
    return next((a for a in answer["approvals"] if a["patient_id"] == patient_id), None)


def decide(gateway: OrthancProcess, approval: int, verb: str, user: tuple[str, str] | None,
           **body: Any) -> Any:
    headers = {} if user else {"Authorization": ""}
    return gateway.post(f"/rt-gateway/approvals/{approval}/{verb}", {"confirm": True, **body},
                        auth=user, headers=headers)


def test_one_approves_a_target_another_rejects_the_other_only_the_approved_receives(
        gateway: OrthancProcess, peers: dict[str, CountingPeer], tmp_path: Path) -> None:
    linac, archive = peers["LINAC"], peers["ARCHIVE"]
    plan = make_rt_set("HOLD-1", "Held^Hanna", n_slices=4)
    uids = {str(ds.SOPInstanceUID) for ds in plan.all()}
    storescu(write_datasets(plan.all(), tmp_path), gateway.dicom_port, calling="TPS",
             called="RTGATEWAY")
    approval = wait_until(lambda: (a := waiting(gateway, "HOLD-1")) and a["state"] == "waiting"
                          and len(a["targets"]) == 2 and a, 60, "the plan held for approval")
    assert {t["target"] for t in approval["targets"]} == {"LINAC", "ARCHIVE"}
    assert all(t["held"] for t in approval["targets"])
    assert approval["approvers"] == ["dr.curie", "phys.bragg"]
    wait_until(lambda: waiting(gateway, "HOLD-1")["patient_name"], 30, "the patient named")
    assert "Held" in waiting(gateway, "HOLD-1")["patient_name"]
    states = {d["name"]: d for d in gateway.json("/rt-gateway/destinations")}
    assert states["LINAC"]["awaiting_approval"] == 1 and states["ARCHIVE"]["awaiting_approval"] == 1
    stats = gateway.json("/rt-gateway/stats")
    assert stats["by_target"]["LINAC"]["awaiting_approval"] == 1
    assert stats["by_rule"]["plans for treatment"]["awaiting_approval"] == 2
    assert {d["name"]: d["awaiting_approval"] for d in stats["destinations"]} == {
        "LINAC": 1, "ARCHIVE": 1}
    assert linac.distinct() == 0 and archive.distinct() == 0

    # Nobody but an approver decides, and not without being signed in.
    refused = decide(gateway, approval["id"], "approve", INTRUDER)
    assert refused.status_code == 403 and "clerk may not decide" in refused.json()["error"]
    anonymous = decide(gateway, approval["id"], "approve", None)
    assert anonymous.status_code in (401, 403)
    unsure = gateway.post(f"/rt-gateway/approvals/{approval['id']}/approve", {"targets": ["LINAC"]},
                          auth=CURIE)
    assert unsure.status_code == 400 and "confirm" in unsure.json()["error"]
    silent = decide(gateway, approval["id"], "reject", BRAGG, targets=["ARCHIVE"])
    assert silent.status_code == 400 and "says why" in silent.json()["error"]

    approved = decide(gateway, approval["id"], "approve", CURIE, targets=["LINAC"],
                      comment="checked against the TPS printout")
    assert approved.status_code == 200, approved.text
    assert approved.json()["still_held"] == ["ARCHIVE"]
    rejected = decide(gateway, approval["id"], "reject", BRAGG, targets=["ARCHIVE"],
                      comment="archive copy not wanted for this patient")
    assert rejected.status_code == 200, rejected.text
    again = decide(gateway, approval["id"], "approve", CURIE, targets=["ARCHIVE"])
    assert again.status_code == 409

    wait_until(lambda: linac.distinct() == len(uids), 60, "the approved target delivered")
    assert set(linac.stores) == uids and linac.duplicates() == {}
    final = waiting(gateway, "HOLD-1")
    assert final["state"] == "decided"
    by_target = {t["target"]: t for t in final["targets"]}
    assert by_target["ARCHIVE"]["states"] == ["cancelled"]
    assert [(d["decision"], d["user"]) for d in final["decisions"]] == [
        ("approve", "dr.curie"), ("reject", "phys.bragg")]
    events = gateway.json("/rt-gateway/audit", params={"kind": "events", "patient": "HOLD-1"})
    said = {(e["event"], e["target"]): e["detail"] for e in events
            if e["event"].startswith("approval-")}
    assert "by dr.curie" in said[("approval-approved", "LINAC")]
    assert "by phys.bragg" in said[("approval-rejected", "ARCHIVE")]
    assert "not wanted" in said[("approval-rejected", "ARCHIVE")]
    assert archive.distinct() == 0


def test_a_hold_nobody_decides_parks_with_the_reason_and_a_retry_holds_it_again(
        gateway: OrthancProcess, peers: dict[str, CountingPeer], tmp_path: Path) -> None:
    linac = peers["LINAC"]
    before = linac.distinct()
    plan = make_rt_set("HOLD-2", "Late^Lars", n_slices=2)
    storescu(write_datasets(plan.all(), tmp_path), gateway.dicom_port, calling="QUICK",
             called="RTGATEWAY")
    expired = wait_until(lambda: (a := waiting(gateway, "HOLD-2")) and a["state"] == "expired"
                         and a, 60, "the hold expired")
    (job_id,) = expired["targets"][0]["job_ids"]
    job = gateway.json(f"/rt-gateway/jobs/{job_id}")
    assert job["state"] == "dead" and "approval expired" in job["last_error"]
    assert "3 s" in job["last_error"]
    assert [d["decision"] for d in expired["decisions"]] == ["expired"]
    assert linac.distinct() == before

    assert gateway.post(f"/rt-gateway/jobs/{job_id}/retry").status_code == 200
    wait_until(lambda: gateway.json(f"/rt-gateway/jobs/{job_id}")["state"] == "held", 30,
               "the retried job held again")
    assert linac.distinct() == before
