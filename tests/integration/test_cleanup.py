"""Clean-up of Orthanc's storage on real processes (issue 26, item 5): a real gateway Orthanc, a
counting pynetdicom archive that refuses one chosen instance, storescu as the modality.

The relay runs first, with no age policy; then the rules are reloaded with one whose ages are
seconds (`older_than: 1s`): the policy's clock is the gateway's record of arrival, and each test
waits for the state it needs (a study gone, an audit row), never for a time.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import keep_logs, require_orthanc
from tests.integration.helpers import gateway_rows
from tests.support.orthanc import OrthancProcess, storescu, wait_until
from tests.support.peers import CountingPeer
from tests.support.rtset import make_rt_set, write_datasets

AGE_POLICY = """
cleanup:
  older_than: 1s
  quiet_for: 0s
  check_every: 1s
"""
RULES = """
rules:
  - name: studies to the archive
    on: stable-study
    match: {calling_aet: [PLANNING, REFTEST]}
    actions:
      - forward: ARCHIVE
  - name: CT relay
    on: instance
    match: {calling_aet: RELAY}
    actions:
      - forward: ARCHIVE
      - delete_after: forwarded
"""


@pytest.fixture(scope="module")
def archive() -> Iterator[CountingPeer]:
    peer = CountingPeer("ARCHIVE")
    yield peer
    peer.close()


@pytest.fixture(scope="module")
def gateway(workdir: Path, archive: CountingPeer) -> Iterator[OrthancProcess]:
    require_orthanc()
    process = OrthancProcess(workdir / "gateway", "RTGATEWAY", plugin=True, rules=RULES,
                             modalities={"ARCHIVE": ("ARCHIVE", archive.port)})
    process.start()
    yield process
    process.stop()
    keep_logs(process, "cleanup-gateway")


def study_id(gateway: OrthancProcess, study_uid: str) -> str | None:
    found = gateway.post("/tools/lookup", study_uid).json()
    return found[0]["ID"] if found else None


def test_a_relay_deletes_what_it_forwarded(gateway: OrthancProcess, archive: CountingPeer,
                                           tmp_path: Path) -> None:
    relayed = make_rt_set("RELAY-1", "Relay^Rolf", n_slices=6)
    storescu(write_datasets(relayed.ct, tmp_path), gateway.dicom_port, calling="RELAY",
             called="RTGATEWAY")
    wait_until(lambda: study_id(gateway, relayed.study_uid) is None, 90,
               "the relayed CT deleted once forwarded")
    assert all(archive.stores[str(ds.SOPInstanceUID)] == 1 for ds in relayed.ct)
    # Each deletion is audited just after Orthanc's DELETE: wait for the rows, not one read.
    def deleted_count() -> int:
        return sum(int(row["detail"].split()[0])
                   for row in gateway_rows(gateway, kind="events", patient="RELAY-1")
                   if row["event"] == "instances-deleted-after-forwarding")
    wait_until(lambda: deleted_count() >= len(relayed.ct), 30, "the deletions audited")
    assert deleted_count() == len(relayed.ct)


def test_a_delivered_study_leaves_and_a_parked_one_stays_with_its_reason(
        gateway: OrthancProcess, archive: CountingPeer, tmp_path: Path) -> None:
    gateway.rules_path.write_text(AGE_POLICY + RULES)
    assert gateway.post("/rt-gateway/rules/reload").status_code == 200
    delivered = make_rt_set("CLEAN-1", "Clean^Carla")
    parked = make_rt_set("CLEAN-2", "Parked^Pia")
    archive.refuse.add(str(parked.ct[0].SOPInstanceUID))
    storescu(write_datasets(parked.all(), tmp_path / "parked"), gateway.dicom_port,
             calling="REFTEST", called="RTGATEWAY")
    storescu(write_datasets(delivered.all(), tmp_path / "delivered"), gateway.dicom_port,
             calling="PLANNING", called="RTGATEWAY")
    parked_id = study_id(gateway, parked.study_uid)

    # The delivered study goes once every instance reached the archive, and is audited.
    wait_until(lambda: study_id(gateway, delivered.study_uid) is None, 90,
               "the delivered study deleted from the gateway's storage")
    assert all(archive.stores[str(ds.SOPInstanceUID)] == 1 for ds in delivered.all())
    (deleted,) = wait_until(lambda: [row for row in gateway_rows(gateway, kind="events",
                                                                 patient="CLEAN-1")
                                     if row["event"] == "study-deleted"], 30,
                            "the deletion audited")
    assert "older than" in deleted["detail"] and deleted["patient_id"] == "CLEAN-1"

    # The parked one stays, and the dry run says why.
    wait_until(lambda: gateway.json("/rt-gateway/jobs", params={"state": "dead"}), 60,
               "the refused study's job parked")
    review = gateway.json("/rt-gateway/cleanup", params={"verdict": "keep"})
    (kept,) = [study for study in review["studies"] if study["id"] == parked_id]
    assert "parked" in kept["reason"] and kept["patient_name"] == "Parked^Pia"
    round_now = gateway.post("/rt-gateway/cleanup/run", {"confirm": True}).json()
    assert parked_id not in [study["id"] for study in round_now["deleted"]]
    assert study_id(gateway, parked.study_uid) == parked_id


HOLD_RULE = """
  - name: held for a physicist
    on: stable-study
    match: {calling_aet: HOLDER}
    actions:
      - hold: {expires: 7d}
      - forward: ARCHIVE
"""


def test_over_the_storage_threshold_the_oldest_free_study_goes_first(
        gateway: OrthancProcess, archive: CountingPeer, tmp_path: Path) -> None:
    """Oldest first, skipping what is still needed: the parked study of the test before and a
    study awaiting approval are older than OLD, yet OLD is the one deleted, and only it."""
    gateway.rules_path.write_text(RULES + HOLD_RULE)
    assert gateway.post("/rt-gateway/rules/reload").status_code == 200
    held = make_rt_set("THRESH-HELD", "Held^Hugo")
    storescu(write_datasets(held.all(), tmp_path / "held"), gateway.dicom_port, calling="HOLDER",
             called="RTGATEWAY")
    wait_until(lambda: gateway.json("/rt-gateway/approvals")["total"] == 1, 60,
               "the study held for approval")
    made = {}
    for name in ("OLD", "MID", "NEW"):
        study = make_rt_set(f"THRESH-{name}", f"Thresh^{name.title()}")
        storescu(write_datasets(study.all(), tmp_path / name), gateway.dicom_port,
                 calling="PLANNING", called="RTGATEWAY")
        wait_until(lambda s=study: all(archive.stores[str(ds.SOPInstanceUID)] for ds in s.all()),
                   60, f"{name} delivered")
        made[name] = study
    ids = {name: study_id(gateway, study.study_uid) for name, study in made.items()}
    total = int(gateway.json("/statistics")["TotalDiskSize"])
    old_size = int(gateway.json(f"/studies/{ids['OLD']}/statistics")["DiskSize"])
    threshold_gb = (total - old_size / 2) / 1048576 / 1024
    gateway.rules_path.write_text(
        f"cleanup: {{storage_above_gb: {threshold_gb:.12f}, quiet_for: 0s, check_every: 1s}}\n"
        + RULES + HOLD_RULE)
    assert gateway.post("/rt-gateway/rules/reload").status_code == 200
    try:
        wait_until(lambda: study_id(gateway, made["OLD"].study_uid) is None, 60,
                   "the oldest free study deleted")
        (deleted,) = wait_until(lambda: [row for row in gateway_rows(gateway, kind="events",
                                                                     patient="THRESH-OLD")
                                         if row["event"] == "study-deleted"], 30,
                                "the deletion audited")
        assert "the oldest go first" in deleted["detail"]
        review = gateway.json("/rt-gateway/cleanup")
        assert review["storage"]["over"] is None
        reasons = {study["patient_id"]: study["reason"] for study in review["studies"]}
        assert "awaiting approval" in reasons["THRESH-HELD"]
        assert "parked" in reasons["CLEAN-2"]
        for name in ("MID", "NEW"):
            assert study_id(gateway, made[name].study_uid) == ids[name]
        assert study_id(gateway, held.study_uid) is not None
    finally:
        gateway.rules_path.write_text(RULES)
        gateway.post("/rt-gateway/rules/reload")
