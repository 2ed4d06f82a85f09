"""Routing policy on real processes (issue 26, items 3, 4 and 6): one gateway Orthanc, three
counting pynetdicom receivers, storescu as the modalities.

- ARCHIVE takes one association at a time: an urgent plan passes a 2,000-instance research export
  queued before it, and the export still completes, each instance once;
- PACED takes 8 instances a minute: the receiver's own clock sees no 60 s over it;
- NIGHT has a time window: closed, its jobs wait (shown as waiting for the window); the rules
  reloaded with the window open, they go.
Each test waits for the states it needs; only the pace's minute is, by nature, a minute.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import generate_uid

from tests.integration.helpers import counting_peers, gateway_to_peers
from tests.support.orthanc import OrthancProcess, storescu, wait_until
from tests.support.peers import CountingPeer
from tests.support.rtset import make_ct_series, make_rt_set, write_datasets

RULES = """
rules:
  - name: research export
    on: stable-study
    priority: low
    match: {calling_aet: RESEARCH}
    actions:
      - forward: ARCHIVE
  - name: today's treatment
    on: stable-study
    priority: urgent
    match: {calling_aet: TPS}
    actions:
      - forward: ARCHIVE
  - name: paced copy
    on: instance
    match: {calling_aet: PACING}
    actions:
      - forward: PACED
  - name: night copy
    on: instance
    match: {calling_aet: NIGHTLY}
    actions:
      - forward: NIGHT
"""
RESEARCH_SLICES = 2000


def policy(night_window: str) -> str:
    return f"""
destinations:
  ARCHIVE: {{max_associations: 1}}
  PACED: {{max_instances_per_minute: 8}}
  NIGHT: {{windows: ["{night_window}"], time_zone: UTC}}
"""


def closed_window() -> str:
    """One minute twelve hours from now: closed for the whole test."""
    start = datetime.now(UTC) + timedelta(hours=12)
    end = start + timedelta(minutes=1)
    return f"{start:%H:%M}-{end:%H:%M}"


@pytest.fixture(scope="module")
def peers() -> Iterator[dict[str, CountingPeer]]:
    yield from counting_peers("ARCHIVE", "PACED", "NIGHT")


@pytest.fixture(scope="module")
def gateway(workdir: Path, peers: dict[str, CountingPeer]) -> Iterator[OrthancProcess]:
    yield from gateway_to_peers(workdir, peers, policy(closed_window()) + RULES,
                                "routing-policy-gateway")


def destination(gateway: OrthancProcess, name: str) -> dict[str, Any]:
    states: list[dict[str, Any]] = gateway.json("/rt-gateway/destinations")
    return next(state for state in states if state["name"] == name)


def test_an_urgent_plan_passes_a_long_research_export_at_one_association(
        gateway: OrthancProcess, peers: dict[str, CountingPeer], tmp_path: Path) -> None:
    archive = peers["ARCHIVE"]
    research = make_ct_series(patient_id="RESEARCH-1", patient_name="Research^Ray",
                              study_uid=generate_uid(), frame_of_reference_uid=generate_uid(),
                              n_slices=RESEARCH_SLICES, rows=8, columns=8)
    archive.hold_after = 100   # the export's association holds here until the urgent plan waits
    storescu(write_datasets(research, tmp_path / "research"), gateway.dicom_port,
             calling="RESEARCH", called="RTGATEWAY")
    wait_until(archive.holding.is_set, 120, "the export under way at the archive")
    urgent = make_rt_set("URGENT-1", "Urgent^Uma", n_slices=4)
    storescu(write_datasets(urgent.all(), tmp_path / "urgent"), gateway.dicom_port,
             calling="TPS", called="RTGATEWAY")
    wait_until(lambda: destination(gateway, "ARCHIVE")["waiting_by_priority"].get("urgent"), 60,
               "the urgent plan waiting for the archive")
    assert destination(gateway, "ARCHIVE")["associations"] == 1
    archive.release.set()

    urgent_uids = [str(ds.SOPInstanceUID) for ds in urgent.all()]
    research_uids = [str(ds.SOPInstanceUID) for ds in research]
    wait_until(lambda: all(archive.stores[uid] for uid in research_uids + urgent_uids), 300,
               "the export and the urgent plan complete")
    order = list(archive.stores)
    assert max(map(order.index, urgent_uids)) < max(map(order.index, research_uids))
    # The urgent plan went within one association of the release, not after the export.
    assert max(map(order.index, urgent_uids)) < 100 + 40 + len(urgent_uids) + 1
    assert archive.duplicates() == {}
    # The archive answers the last store a moment before the job is settled: wait for that.
    (export,) = wait_until(
        lambda: [job for job in gateway.json("/rt-gateway/jobs", params={"state": "done"})
                 if job["patient_id"] == "RESEARCH-1"], 60, "the export's job done")
    assert export["priority"] == 0 and export["sent"] == RESEARCH_SLICES


def test_a_pace_of_eight_a_minute_is_never_passed(
        gateway: OrthancProcess, peers: dict[str, CountingPeer], tmp_path: Path) -> None:
    paced = peers["PACED"]
    series = make_ct_series(patient_id="PACED-1", patient_name="Paced^Pat", study_uid=generate_uid(),
                            frame_of_reference_uid=generate_uid(), n_slices=12, rows=8, columns=8)
    storescu(write_datasets(series, tmp_path), gateway.dicom_port, calling="PACING",
             called="RTGATEWAY")
    wait_until(lambda: paced.distinct() >= 8, 60, "the first minute's eight delivered")
    held = wait_until(lambda: destination(gateway, "PACED")["held"], 30,
                      "the rest shown as waiting for the pace")
    assert "8 instances per minute" in held
    wait_until(lambda: paced.distinct() == 12, 150, "the rest delivered the next minute")
    times = sorted(paced.stored_at)
    assert all(sum(1 for t in times if start <= t < start + 60) <= 8 for start in times)
    assert paced.duplicates() == {}


def test_a_closed_window_holds_jobs_until_it_opens(
        gateway: OrthancProcess, peers: dict[str, CountingPeer], tmp_path: Path) -> None:
    night = peers["NIGHT"]
    series = make_ct_series(patient_id="NIGHT-1", patient_name="Night^Nell", study_uid=generate_uid(),
                            frame_of_reference_uid=generate_uid(), n_slices=3, rows=8, columns=8)
    storescu(write_datasets(series, tmp_path), gateway.dicom_port, calling="NIGHTLY",
             called="RTGATEWAY")
    state = wait_until(lambda: (s := destination(gateway, "NIGHT"))["held"] and s, 60,
                       "the night copies waiting for their window")
    assert state["window_open"] is False and "time window" in state["held"]
    # "held" shows once one job met the closed window; the others meet it as they are looked at.
    wait_until(lambda: {job["last_status"] for job in gateway.json(
        "/rt-gateway/jobs", params={"state": "pending"}) if job["target"] == "NIGHT"} == {"window"},
        30, "every night job held by the window")
    assert night.distinct() == 0

    gateway.rules_path.write_text(policy("Mo-Su") + RULES)
    assert gateway.post("/rt-gateway/rules/reload").status_code == 200
    wait_until(lambda: night.distinct() == 3, 60, "the night copies delivered once it opened")
    assert destination(gateway, "NIGHT")["window_open"] is True
