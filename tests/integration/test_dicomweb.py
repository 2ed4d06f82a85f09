"""DICOMweb destinations on real processes (issue 27, item 4): the gateway sends by STOW-RS to the
servers of Orthanc's own `DicomWeb.Servers` setting, with the same per-instance truth as C-STORE.

- a second Orthanc with Debian's DICOMweb plugin receives a whole plan;
- a counting STOW-RS receiver refuses one instance: that one is parked with the server's reason,
  the others are delivered;
- the gateway is killed with `kill -9` between the receiver's store and its answer: after the
  restart QIDO-RS tells what the receiver holds and nothing is sent twice."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import keep_logs, require_orthanc
from tests.integration.helpers import gateway_rows
from tests.support.orthanc import PASSWORD, USER, OrthancProcess, storescu, wait_until
from tests.support.rtset import make_rt_set, write_datasets
from tests.support.stow_peer import StowPeer

DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
RULES = """
rules:
  - name: plans to the web archive
    on: instance
    match: {calling_aet: TPS}
    actions:
      - forward: WEBPACS
  - name: plans to the counting receiver
    on: instance
    match: {calling_aet: COUNTED}
    actions:
      - forward: WEBCOUNT
"""


@pytest.fixture(scope="module")
def webpacs(workdir: Path) -> Iterator[OrthancProcess]:
    require_orthanc()
    if not DICOMWEB_PLUGIN.exists():
        pytest.fail("Debian's orthanc-dicomweb is not installed (make setup installs it)")
    process = OrthancProcess(workdir / "webpacs", "WEBPACS", extra={
        "Plugins": [str(DICOMWEB_PLUGIN)], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}})
    process.start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def counter() -> Iterator[StowPeer]:
    peer = StowPeer()
    yield peer
    peer.close()


def make_gateway(folder: Path, webpacs: OrthancProcess, counter: StowPeer) -> OrthancProcess:
    return OrthancProcess(folder, "RTGATEWAY", plugin=True, rules=RULES, extra={
        "DicomWeb": {"Servers": {
            "WEBPACS": [f"{webpacs.url}/dicom-web/", USER, PASSWORD],
            "WEBCOUNT": {"Url": counter.url},
        }}}, gateway_settings={"MaxInstancesPerAssociation": 10})


@pytest.fixture(scope="module")
def gateway(workdir: Path, webpacs: OrthancProcess, counter: StowPeer
            ) -> Iterator[OrthancProcess]:
    process = make_gateway(workdir / "gateway", webpacs, counter)
    process.start()
    yield process
    process.stop()
    keep_logs(process, "dicomweb-gateway")


def test_a_plan_reaches_an_orthanc_dicomweb_server_by_stow(
        gateway: OrthancProcess, webpacs: OrthancProcess, tmp_path: Path) -> None:
    plan = make_rt_set("WEB-1", "Web^Wanda", n_slices=12)
    uids = {str(ds.SOPInstanceUID) for ds in plan.all()}
    storescu(write_datasets(plan.all(), tmp_path), gateway.dicom_port, calling="TPS",
             called="RTGATEWAY")
    wait_until(lambda: webpacs.sop_instance_uids() >= uids, 90, "the plan at WEBPACS")
    assert webpacs.sop_instance_uids() == uids

    def success_rows() -> list[dict]:
        # Decided at arrival: a row names its patient once the burst is described.
        rows = [row for row in gateway_rows(gateway, kind="transfers", patient="WEB-1")
                if row["status"] == "success"]
        return rows if sum(row["instances"] for row in rows) >= len(uids) else []
    success = wait_until(success_rows, 30, "the deliveries recorded under the patient")
    assert sum(row["instances"] for row in success) == len(uids)
    assert all(row["target"] == "WEBPACS" for row in success)
    # The destinations' check answers for a DICOMweb server too (QIDO-RS, no C-ECHO there).
    echo = gateway.post("/rt-gateway/targets/WEBPACS/echo", {}).json()
    assert echo["ok"] is True, echo


def test_an_instance_refused_by_stow_is_parked_with_the_reason_and_the_rest_delivered(
        gateway: OrthancProcess, counter: StowPeer, tmp_path: Path) -> None:
    plan = make_rt_set("WEB-2", "Refused^Rita", n_slices=6)
    refused = str(plan.ct[3].SOPInstanceUID)
    counter.refuse.add(refused)
    uids = {str(ds.SOPInstanceUID) for ds in plan.all()}
    storescu(write_datasets(plan.all(), tmp_path), gateway.dicom_port, calling="COUNTED",
             called="RTGATEWAY")
    wait_until(lambda: set(counter.stores) >= uids - {refused}, 90, "the rest delivered")

    def parked() -> list[dict[str, object]]:
        return [job for job in gateway.json("/rt-gateway/jobs", params={"state": "dead"})
                if job["patient_id"] == "WEB-2"]

    wait_until(lambda: len(parked()) == 1, 60, "the refused instance's job parked")
    (job,) = parked()
    assert "STOW-RS refused by WEBCOUNT: out of resources (FailureReason 0xA700)" in \
        str(job["last_error"])
    assert refused not in counter.stores and counter.duplicates() == {}


def test_kill_9_mid_stow_then_restart_sends_nothing_twice(
        workdir: Path, webpacs: OrthancProcess, tmp_path: Path) -> None:
    counter = StowPeer()
    gateway = make_gateway(workdir / "gateway-kill", webpacs, counter)
    counter.hold_request = 2   # the second STOW request: stored, its answer never arrives
    gateway.start()
    try:
        plan = make_rt_set("WEB-3", "Killed^Karl", n_slices=30)
        uids = {str(ds.SOPInstanceUID) for ds in plan.all()}
        storescu(write_datasets(plan.all(), tmp_path), gateway.dicom_port, calling="COUNTED",
                 called="RTGATEWAY")
        wait_until(counter.holding.is_set, 60, "the receiver holding its answer to a STOW")
        gateway.kill9()
        counter.release.set()
        held = counter.distinct()
        assert 0 < held < len(uids)
        gateway.start()
        wait_until(lambda: counter.distinct() == len(uids), 90, "every instance delivered")

        def settled() -> bool:
            return not [j for state in ("pending", "running")
                        for j in gateway.json("/rt-gateway/jobs", params={"state": state})]

        wait_until(settled, 60, "queue drained")
        assert counter.duplicates() == {} and counter.total() == len(uids)
        verified = [e for e in gateway_rows(gateway, kind="events")
                    if e["event"] == "in-flight-verified"]
        assert verified and "QIDO-RS at WEBCOUNT" in verified[0]["detail"]
        success = [r for r in gateway_rows(gateway, kind="transfers") if r["status"] == "success"]
        assert sum(r["instances"] for r in success) == len(uids)
    finally:
        gateway.stop()
        counter.close()
        keep_logs(gateway, "dicomweb-kill9-gateway")
