"""Storage commitment (issue 11, item 3): `committed` is what the receiver confirmed, through
Orthanc's own storage commitment SCU and a real Orthanc archive as the SCP; an instance the
archive does not hold is `not-committed` with the archive's reason, its job parked, a hand retry
sends it again; a node without storage commitment is reported, never trusted; a report Orthanc
forgot in a restart is asked again."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import keep_logs, require_orthanc
from tests.integration.helpers import gateway_rows, item_states, prometheus
from tests.support.orthanc import OrthancProcess, free_port, storescu, wait_until
from tests.support.peers import CountingPeer
from tests.support.rtset import make_rt_set, write_datasets

RULES = """
rules:
  - name: to archive
    on: stable-study
    match: {calling_aet: SC}
    actions: [{forward: ARCHIVE}]
  - name: to a node without commitment
    on: stable-study
    match: {calling_aet: SCNO}
    actions: [{forward: NOCOMMIT}]
"""
TIMEOUT_SECONDS = 8

# The archive loses (deletes right after storing) instance number 3 of patient SC-LOSE, once:
# the C-STORE succeeded, so only storage commitment can tell the gateway it is not there.
LOSING_ARCHIVE_LUA = """
lost = lost or {}
function OnStoredInstance(instanceId, tags, metadata, origin)
  if tags.PatientID == 'SC-LOSE' and tags.InstanceNumber == '3' and not lost[tags.SOPInstanceUID] then
    lost[tags.SOPInstanceUID] = true
    Delete(instanceId)
  end
end
"""


def commitment_settings(timeout: float = TIMEOUT_SECONDS) -> dict[str, Any]:
    return {
        "Forwarding": {"StorageCommitment": {
            "Modalities": ["ARCHIVE", "NOCOMMIT"], "TimeoutSeconds": timeout,
            "CheckEverySeconds": 0.5}},
        "Retry": {"MaxAttempts": 3, "BaseDelaySeconds": 0.5, "MaxDelaySeconds": 1},
    }


def make_archive(folder: Path, lua: str | None = None) -> OrthancProcess:
    archive = OrthancProcess(folder, "ARCHIVE")
    if lua:
        script = folder / "lose.lua"
        script.write_text(lua)
        archive.config["LuaScripts"] = [str(script)]
    return archive


@pytest.fixture(scope="module")
def nocommit() -> Iterator[CountingPeer]:
    peer = CountingPeer("NOCOMMIT")
    yield peer
    peer.close()


@pytest.fixture(scope="module")
def network(workdir: Path, nocommit: CountingPeer
            ) -> Iterator[tuple[OrthancProcess, OrthancProcess]]:
    require_orthanc()
    archive = make_archive(workdir / "archive", LOSING_ARCHIVE_LUA)
    gateway = OrthancProcess(
        workdir / "gateway", "RTGATEWAY", plugin=True, stable_age=1, rules=RULES,
        modalities={"ARCHIVE": archive, "NOCOMMIT": ("NOCOMMIT", nocommit.port)},
        gateway_settings=commitment_settings())
    # The archive sends its N-EVENT-REPORT on an association of its own: it must know us.
    archive.add_modality("RTGATEWAY", gateway)
    archive.start()
    gateway.start()
    yield gateway, archive
    gateway.stop()
    archive.stop()
    keep_logs(gateway, "commitment-gateway")
    keep_logs(archive, "commitment-archive")


def study_job(gateway: OrthancProcess, study_uid: str) -> dict[str, Any]:
    jobs = [job for job in gateway.json("/rt-gateway/jobs", params={"limit": 100})
            if job["study_uid"] == study_uid]
    assert len(jobs) == 1, jobs
    return dict(gateway.json(f"/rt-gateway/jobs/{jobs[0]['id']}"))


def commit_settled(gateway: OrthancProcess, study_uid: str, state: str) -> bool:
    jobs = [job for job in gateway.json("/rt-gateway/jobs", params={"limit": 100})
            if job["study_uid"] == study_uid]
    if len(jobs) != 1 or jobs[0]["state"] != state:
        return False
    commitment = gateway.json(f"/rt-gateway/jobs/{jobs[0]['id']}").get("commitment") or {}
    return bool(commitment) and commitment["waiting"] == 0


def item_commit_states(gateway: OrthancProcess, study_uid: str) -> dict[str, tuple[str, str]]:
    return item_states(gateway, study_uid, "COALESCE(f.commit_state, '')")


def test_all_committed_by_an_archive_that_holds_them(
        network: tuple[OrthancProcess, OrthancProcess], workdir: Path) -> None:
    gateway, archive = network
    rtset = make_rt_set("SC-KEEP", with_dose=True)
    storescu(write_datasets(rtset.all(), workdir / "keep"), gateway.dicom_port, calling="SC")
    wait_until(lambda: commit_settled(gateway, rtset.study_uid, "done"), 60,
               "every instance committed")
    job = study_job(gateway, rtset.study_uid)
    total = len(rtset.all())
    assert job["sent"] == total
    assert job["commitment"] == {"committed": total, "waiting": 0, "not_committed": []}
    assert set(item_commit_states(gateway, rtset.study_uid).values()) == {("sent", "committed")}
    events = gateway_rows(gateway, kind="events", target="ARCHIVE")
    assert any(e["event"] == "committed" and f"{total} of {total}" in e["detail"] for e in events)
    stats = gateway.json("/rt-gateway/stats")["by_target"]["ARCHIVE"]
    assert stats["commitment"]["committed"] >= total
    assert archive.sop_instance_uids() >= {str(ds.SOPInstanceUID) for ds in rtset.all()}


def test_two_senders_at_once_every_instance_committed_once(
        network: tuple[OrthancProcess, OrthancProcess], workdir: Path) -> None:
    gateway, archive = network
    sets = [make_rt_set(f"SC-TWO-{n}", with_dose=True) for n in range(2)]
    folders = [write_datasets(rtset.all(), workdir / f"two-{n}") for n, rtset in enumerate(sets)]
    senders = [threading.Thread(target=storescu, args=(files, gateway.dicom_port),
                                kwargs={"calling": "SC"}) for files in folders]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join()
    for rtset in sets:
        wait_until(lambda rtset=rtset: commit_settled(gateway, rtset.study_uid, "done"), 60,
                   "both studies committed")
        total = len(rtset.all())
        assert study_job(gateway, rtset.study_uid)["commitment"] == {
            "committed": total, "waiting": 0, "not_committed": []}
        assert archive.sop_instance_uids() >= {str(ds.SOPInstanceUID) for ds in rtset.all()}
    with sqlite3.connect(gateway.gateway_db) as connection:
        asked = connection.execute(
            "SELECT COUNT(*), COUNT(DISTINCT f.instance_id) FROM forward_items f JOIN jobs j "
            "ON j.id = f.job_id WHERE j.patient_id LIKE 'SC-TWO-%' AND f.commit_txn IS NOT NULL"
        ).fetchone()
    assert asked[0] == asked[1] == sum(len(rtset.all()) for rtset in sets)


def test_an_instance_the_archive_lost_is_not_committed_then_sent_again_by_hand(
        network: tuple[OrthancProcess, OrthancProcess], workdir: Path) -> None:
    gateway, archive = network
    rtset = make_rt_set("SC-LOSE", with_dose=False)
    lost = next(ds for ds in rtset.ct if int(ds.InstanceNumber) == 3)
    lost_uid = str(lost.SOPInstanceUID)
    total = len(rtset.all())
    storescu(write_datasets(rtset.all(), workdir / "lose"), gateway.dicom_port, calling="SC")
    wait_until(lambda: commit_settled(gateway, rtset.study_uid, "dead"), 60,
               "the job parked for the instance the archive does not hold")
    job = study_job(gateway, rtset.study_uid)
    # C-STORE said success for every instance; the archive's commitment says otherwise for one.
    assert job["commitment"]["committed"] == total - 1
    assert len(job["commitment"]["not_committed"]) == 1
    reason = job["commitment"]["not_committed"][0]["reason"]
    assert "0x0112" in reason, reason          # DICOM: No such object instance
    assert "not committed by ARCHIVE" in job["last_error"]
    states = item_commit_states(gateway, rtset.study_uid)
    assert states[lost_uid] == ("not-committed", "failed")
    assert sum(1 for state in states.values() if state == ("sent", "committed")) == total - 1
    assert lost_uid not in archive.sop_instance_uids()
    failed = [e for e in gateway_rows(gateway, kind="events", target="ARCHIVE")
              if e["event"] == "commit-failed" and e["job_id"] == job["id"]]
    assert len(failed) == 1 and "0x0112" in failed[0]["detail"]
    stats = gateway.json("/rt-gateway/stats")["by_target"]["ARCHIVE"]
    assert stats["commitment"]["not_committed"] == 1
    assert stats["parked"] >= 1
    wait_until(lambda: prometheus(gateway, "rtgw_instances_not_committed") == 1, 30,
               "Prometheus shows the instance not committed")

    answer = gateway.post(f"/rt-gateway/jobs/{job['id']}/retry", {},
                          headers={"X-Requested-With": "test"})
    assert answer.status_code == 200, answer.text
    wait_until(lambda: commit_settled(gateway, rtset.study_uid, "done"), 60,
               "the lost instance sent again and committed")
    job = study_job(gateway, rtset.study_uid)
    assert job["commitment"] == {"committed": total, "waiting": 0, "not_committed": []}
    assert lost_uid in archive.sop_instance_uids()


def test_a_node_without_storage_commitment_is_reported_not_trusted(
        network: tuple[OrthancProcess, OrthancProcess], nocommit: CountingPeer,
        workdir: Path) -> None:
    gateway, _ = network
    rtset = make_rt_set("SC-NOCOMMIT", with_dose=False)
    total = len(rtset.all())
    storescu(write_datasets(rtset.all(), workdir / "nocommit"), gateway.dicom_port,
             calling="SCNO")
    wait_until(lambda: commit_settled(gateway, rtset.study_uid, "dead"), 60 + TIMEOUT_SECONDS,
               "the job parked: the node never confirmed")
    job = study_job(gateway, rtset.study_uid)
    assert job["sent"] == 0 and len(job["commitment"]["not_committed"]) == total
    assert nocommit.distinct() >= total       # C-STORE succeeded: only commitment is missing
    assert f"no storage commitment from NOCOMMIT within {TIMEOUT_SECONDS} s" in job["last_error"]
    events = gateway_rows(gateway, kind="events", target="NOCOMMIT")
    assert sum(1 for e in events if e["event"] == "commit-request-failed") == 1   # said once


def test_a_report_orthanc_forgot_in_a_restart_is_asked_again(tmp_path: Path) -> None:
    require_orthanc()
    archive = make_archive(tmp_path / "archive")
    gateway = OrthancProcess(
        tmp_path / "gateway", "RTGATEWAY", plugin=True, stable_age=1, rules=RULES,
        modalities={"ARCHIVE": archive, "NOCOMMIT": ("NOCOMMIT", free_port())},
        gateway_settings=commitment_settings(timeout=600))
    # First the archive cannot reach the gateway: its report never arrives (stays Pending).
    archive.add_modality("RTGATEWAY", ("RTGATEWAY", free_port()))
    try:
        archive.start()
        gateway.start()
        rtset = make_rt_set("SC-RESTART", with_dose=False)
        total = len(rtset.all())
        storescu(write_datasets(rtset.all(), tmp_path / "in"), gateway.dicom_port, calling="SC")

        def requested() -> bool:
            states = item_commit_states(gateway, rtset.study_uid)
            return len(states) == total and all(s == ("sent", "requested") for s in states.values())

        wait_until(requested, 60, "commitment requested, its report pending")
        gateway.stop()
        archive.stop()
        archive.add_modality("RTGATEWAY", gateway)
        archive.start()
        gateway.start()
        wait_until(lambda: commit_settled(gateway, rtset.study_uid, "done"), 60,
                   "asked again after the restart and committed")
        events = gateway_rows(gateway, kind="events", target="ARCHIVE")
        assert any(e["event"] == "commit-report-lost" for e in events)
        assert study_job(gateway, rtset.study_uid)["commitment"]["committed"] == total
    finally:
        gateway.stop()
        archive.stop()
        keep_logs(gateway, "commitment-restart-gateway")
