"""Destination failover on real processes (issue 26, item 2): one gateway Orthanc, two counting
pynetdicom receivers, storescu as the planning system.

PRIMARY is down: the plan goes wholly to BACKUP once its job has failed to reach PRIMARY for the
failover time, recorded as a failover; PRIMARY back, new work goes to PRIMARY again."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.helpers import counting_peers, gateway_to_peers
from tests.support.orthanc import OrthancProcess, storescu, wait_until
from tests.support.peers import CountingPeer
from tests.support.rtset import make_rt_set, write_datasets

RULES = """
groups:
  TREATMENT: [PRIMARY]
destinations:
  PRIMARY: {failover: BACKUP, failover_after: 3s}
rules:
  - name: plans to the linac
    on: stable-study
    match: {calling_aet: TPS}
    actions:
      - forward: TREATMENT
"""


@pytest.fixture(scope="module")
def peers() -> Iterator[dict[str, CountingPeer]]:
    yield from counting_peers("PRIMARY", "BACKUP")


@pytest.fixture(scope="module")
def gateway(workdir: Path, peers: dict[str, CountingPeer]) -> Iterator[OrthancProcess]:
    yield from gateway_to_peers(workdir, peers, RULES, "failover-gateway")


def test_primary_down_the_plan_goes_wholly_to_the_failover(
        gateway: OrthancProcess, peers: dict[str, CountingPeer], tmp_path: Path) -> None:
    primary, backup = peers["PRIMARY"], peers["BACKUP"]
    primary.stop()   # down until the next test starts it again
    plan = make_rt_set("FAIL-1", "Over^Otto", n_slices=6)
    uids = {str(ds.SOPInstanceUID) for ds in plan.all()}
    storescu(write_datasets(plan.all(), tmp_path), gateway.dicom_port, calling="TPS",
             called="RTGATEWAY")
    wait_until(lambda: backup.distinct() == len(uids), 90, "the plan delivered to BACKUP")
    assert set(backup.stores) == uids and backup.duplicates() == {}
    assert primary.distinct() == 0
    jobs = gateway.json("/rt-gateway/jobs", params={"state": "cancelled"})
    (moved,) = [job for job in jobs if job["patient_id"] == "FAIL-1"]
    assert moved["target"] == "PRIMARY" and moved["last_status"] == "failed-over"
    assert "failed over to BACKUP" in moved["last_error"]
    events = gateway.json("/rt-gateway/audit", params={"kind": "events", "patient": "FAIL-1"})
    (event,) = [e for e in events if e["event"] == "failed-over"]
    assert "moved whole to BACKUP" in event["detail"] and event["target"] == "PRIMARY"
    (state,) = [d for d in gateway.json("/rt-gateway/stats")["destinations"]
                if d["name"] == "PRIMARY"]
    assert state["failover"] == "BACKUP" and "fails over to BACKUP" in state["policy"]


def test_primary_back_new_work_returns_to_it(
        gateway: OrthancProcess, peers: dict[str, CountingPeer], tmp_path: Path) -> None:
    primary, backup = peers["PRIMARY"], peers["BACKUP"]
    primary.start()
    before = backup.distinct()
    plan = make_rt_set("FAIL-2", "Back^Bea", n_slices=4)
    uids = {str(ds.SOPInstanceUID) for ds in plan.all()}
    storescu(write_datasets(plan.all(), tmp_path), gateway.dicom_port, calling="TPS",
             called="RTGATEWAY")
    wait_until(lambda: primary.distinct() == len(uids), 60, "the plan delivered to PRIMARY")
    assert set(primary.stores) == uids
    assert backup.distinct() == before
    events = gateway.json("/rt-gateway/audit", params={"kind": "events", "patient": "FAIL-2"})
    assert not [e for e in events if e["event"] == "failed-over"]
