"""Contract tests of the gateway's core against a fake Orthanc (issue 24, item 6).

The real `Gateway` (every capability installed, as the worker's main builds it) runs on the
in-memory `FakeOrthanc`, driven by hand (tests/support/gateway_site.py): the plugin's notes, the
intake's passes, the queue's claims and each action's executor. Each test states one contract:
the intake's step, the forwarder's chunking and failures, every executor outcome (done, refused,
postponed, source gone, quarantined, parked) and the audit's truth (each delivered instance
counted by exactly one success transfer row, across a worker killed mid-claim).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from orthanc_plugin.jobs.own_output import orthanc_instance_id
from orthanc_plugin.labels import orthanc_study_id
from orthanc_plugin.ports import HostError
from tests.support.fake_orthanc import FakeOrthanc, WorkerKilled, orthanc_id
from tests.support.gateway_site import GatewaySite, build_site
from tests.support.rtset import RtSet, make_rt_set

MODALITIES = {"ARCHIVE": "ARCHIVE_AE", "PACS": "PACS_AE"}
PER_ASSOCIATION = 4
SLICES = 8
STUDY_SIZE = SLICES + 3  # CT slices, RTSTRUCT, RTPLAN, RTDOSE

PLANS_TO_ARCHIVE = """
rules:
  - name: plans from the TPS
    on: instance
    match: {calling_aet: TPS, modality: [RTSTRUCT, RTPLAN]}
    actions:
      - forward: [ARCHIVE]
"""
STUDY_TO_ARCHIVE = """
rules:
  - name: whole study to the archive
    on: stable-study
    match: {calling_aet: TPS}
    actions:
      - forward: [ARCHIVE]
"""
EXPORT_TO_FOLDER = """
rules:
  - name: structure sets to DRAW
    on: TRIGGER
    match:
      modality: [RTSTRUCT, CT]
    actions:
      - export:
          folder: FOLDER
"""
OVERLAY_TO_PACS = """
rules:
  - name: contours overlay
    on: instance
    match: {modality: RTSTRUCT}
    actions:
      - overlay: {wait_for_images: WAIT, forward: [PACS]}
"""
RESEARCH_COPY = """
rules:
  - name: research copy
    on: instance
    match: {}
    actions:
      - anonymize: {profile: full, keep_original: KEEP}
      - forward: [PACS]
"""
ORIGINALS_TO_ARCHIVE = """
  - name: originals to the archive
    on: instance
    match: {calling_aet: TPS}
    actions:
      - forward: [ARCHIVE]
"""

SiteFor = Callable[..., GatewaySite]


@pytest.fixture
def orthanc() -> FakeOrthanc:
    return FakeOrthanc(MODALITIES)


@pytest.fixture
def site_for(tmp_path: Path, orthanc: FakeOrthanc) -> Iterator[SiteFor]:
    """build(rules, **RtGateway settings) -> the gateway on the fake; afterwards, the gateway
    made no call the fake lacks and logged no error."""
    built: list[GatewaySite] = []

    def build(rules: str, **settings: Any) -> GatewaySite:
        site = build_site(tmp_path, rules, orthanc, settings)
        built.append(site)
        return site

    yield build
    assert orthanc.unsupported == []
    for site in built:
        assert site.errors_logged() == []


def receive_study(site: GatewaySite, rtset: RtSet) -> list[str]:
    """The study arrives from the TPS in a scrambled order, noted, taken in, made stable and taken
    in again; returns its Orthanc IDs in the order a plan must be sent (CT, RTSTRUCT, RTPLAN,
    RTDOSE)."""
    scrambled = [rtset.rtdose, rtset.rtplan, *reversed(rtset.ct), rtset.rtstruct]
    ids = {str(ds.SOPInstanceUID): site.orthanc.receive(ds, calling_aet="TPS")
           for ds in scrambled if ds is not None}
    site.note_stored(*ids.values())
    site.take_in()
    site.orthanc.mark_stable(site.orthanc.study_of(next(iter(ids.values()))))
    site.take_in()
    return [ids[str(ds.SOPInstanceUID)] for ds in rtset.all()]


def success_counts(site: GatewaySite) -> list[int]:
    return [row["instances"] for row in site.transfers("success")]


def assert_each_delivery_counted_once(site: GatewaySite, job_id: int, delivered: int) -> None:
    assert sum(success_counts(site)) == delivered
    assert {row["reported"] for row in site.items(job_id)} == {1}


# -- the fake itself -------------------------------------------------------------------------------
def test_the_fake_names_resources_with_orthancs_identifiers(orthanc: FakeOrthanc) -> None:
    rtset = make_rt_set(n_slices=1)
    ct = rtset.ct[0]
    instance_id = orthanc.receive(ct)
    keys = (str(ct.PatientID), str(ct.StudyInstanceUID), str(ct.SeriesInstanceUID),
            str(ct.SOPInstanceUID))
    assert instance_id == orthanc_instance_id(*keys) == orthanc_id(*keys)
    assert orthanc.study_of(instance_id) == orthanc_study_id(*keys[:2])


# -- the intake's step ---------------------------------------------------------------------------
def test_a_noted_instance_is_described_evaluated_and_queued(site_for: SiteFor) -> None:
    site = site_for(PLANS_TO_ARCHIVE)
    rtset = make_rt_set(n_slices=2, plan_label="ADP7")
    ids = [site.orthanc.receive(ds, calling_aet="TPS", remote_ip="10.1.2.3") for ds in rtset.all()]
    ct_ids, structures, plan, dose = ids[:2], ids[2], ids[3], ids[4]
    site.note_stored(*ids)
    site.take_in()

    received = {row["instance_id"]: row for row in site.rows("SELECT * FROM received")}
    assert {row["state"] for row in received.values()} == {"ready"}
    assert received[plan]["plan_label"] == "ADP7" and received[plan]["modality"] == "RTPLAN"
    assert received[plan]["calling_aet"] == "TPS" and received[plan]["remote_ip"] == "10.1.2.3"
    assert received[plan]["source"] == "DICOM"
    # The note carried Orthanc's metadata: the intake did not ask for it again.
    assert site.orthanc.calls_to("GET", "/instances/") and not [
        uri for uri in site.orthanc.calls_to("GET", "/instances/") if "/metadata" in uri]

    jobs = site.jobs("forward")
    assert [(job["resource_id"], job["target"], job["rule"]) for job in jobs] == [
        (structures, "ARCHIVE", "plans from the TPS"), (plan, "ARCHIVE", "plans from the TPS")]
    assert [[item["instance_id"] for item in site.items(job["id"])] for job in jobs] == [
        [structures], [plan]]
    assert {job["calling_aet"] for job in jobs} == {"TPS"}
    assert {job["study_uid"] for job in jobs} == {rtset.study_uid}
    matched = {row["resource_id"]: row for row in site.rows("SELECT * FROM evaluations")}
    assert {iid for iid, row in matched.items() if row["matched"]} == {structures, plan}
    assert all(matched[iid]["new_instances"] == 0 for iid in [*ct_ids, dose])
    assert matched[dose]["failed_condition"] == "match.modality"


def test_a_rule_that_does_not_match_queues_nothing_and_says_why(site_for: SiteFor) -> None:
    site = site_for(PLANS_TO_ARCHIVE)
    # No note (the plugin was restarting): the intake finds the instance in /changes.
    plan = site.orthanc.receive(make_rt_set(n_slices=1).rtplan, calling_aet="CT_SIM")
    site.take_in()

    assert site.jobs() == []
    (evaluation,) = site.rows("SELECT * FROM evaluations")
    assert evaluation["resource_id"] == plan and evaluation["matched"] == 0
    assert evaluation["failed_condition"] == "match.calling_aet"
    assert "CT_SIM" in evaluation["reason"]
    assert site.orthanc.calls_to("GET", f"/instances/{plan}/metadata") == [
        f"/instances/{plan}/metadata?expand"]


# -- the forwarder's chunking --------------------------------------------------------------------
def test_a_study_goes_in_ceil_n_over_m_store_calls_in_sending_order(site_for: SiteFor) -> None:
    site = site_for(STUDY_TO_ARCHIVE, MaxInstancesPerAssociation=PER_ASSOCIATION)
    order = receive_study(site, make_rt_set(n_slices=SLICES))
    site.orthanc.modality("ARCHIVE").running_polls = 2  # each store job is polled to its end
    site.run_queue()

    calls = [list(call.resources) for call in site.orthanc.store_calls]
    assert len(calls) == math.ceil(STUDY_SIZE / PER_ASSOCIATION)
    assert calls == [order[0:4], order[4:8], order[8:11]]
    assert len(site.orthanc.calls_to("GET", "/jobs/")) == len(calls) * 3  # Running, Running, end
    assert site.orthanc.modality("ARCHIVE").received == order
    (job,) = site.jobs("forward")
    assert job["state"] == "done"
    sizes = sum(len(site.orthanc.instances[iid].file) for iid in order)
    assert [(row["instances"], row["bytes"]) for row in site.transfers()] == [(STUDY_SIZE, sizes)]


def test_a_failure_mid_chunk_records_what_was_delivered_before_it(site_for: SiteFor) -> None:
    site = site_for(STUDY_TO_ARCHIVE, MaxInstancesPerAssociation=PER_ASSOCIATION)
    order = receive_study(site, make_rt_set(n_slices=SLICES))
    archive = site.orthanc.modality("ARCHIVE")
    archive.instances_before_drop = 6  # the link drops in the middle of the second chunk
    site.run_next()

    (job,) = site.jobs("forward")
    assert archive.received == order[:6]
    assert [item["state"] for item in site.items(job["id"])] == ["sent"] * 6 + ["pending"] * 5
    assert job["state"] == "pending" and job["last_status"] == "network"
    assert "Peer aborted" in job["last_error"]
    assert [(row["status"], row["instances"]) for row in site.transfers()] == [
        ("success", 6), ("failed", 0)]

    archive.instances_before_drop = None
    site.run_queue()
    assert archive.received == order  # nothing sent twice
    assert [list(call.resources) for call in site.orthanc.store_calls[2:]] == [
        order[6:10], order[10:11]]
    assert site.jobs("forward")[0]["state"] == "done"
    assert_each_delivery_counted_once(site, job["id"], STUDY_SIZE)


@pytest.mark.parametrize("stored_anyway", [True, False])
def test_an_instance_whose_answer_timed_out_is_asked_for_before_it_is_sent_again(
        site_for: SiteFor, stored_anyway: bool) -> None:
    """The receiver stored the seventh instance but its answer never came (DicomScuTimeout):
    the retry asks by C-FIND first and does not send it twice; when it was not stored after
    all, the C-FIND says so and it is sent again."""
    site = site_for(STUDY_TO_ARCHIVE, MaxInstancesPerAssociation=PER_ASSOCIATION)
    order = receive_study(site, make_rt_set(n_slices=SLICES))
    archive = site.orthanc.modality("ARCHIVE")
    archive.instances_before_drop = 6
    archive.stores_before_timeout = stored_anyway
    site.run_next()

    (job,) = site.jobs("forward")
    assert archive.received == order[: 7 if stored_anyway else 6]
    assert job["state"] == "pending" and job["last_status"] == "network"
    archive.instances_before_drop = None
    site.run_queue()
    assert archive.received == order  # the seventh once, whichever way
    (verified,) = site.events("in-flight-verified")
    assert verified["detail"].startswith(f"{1 if stored_anyway else 0} of 1 already at ARCHIVE")
    assert "C-FIND" in verified["detail"]
    assert site.jobs("forward")[0]["state"] == "done"
    assert_each_delivery_counted_once(site, job["id"], STUDY_SIZE)


def test_a_refused_instance_is_parked_alone_while_the_rest_is_delivered(site_for: SiteFor) -> None:
    site = site_for(STUDY_TO_ARCHIVE, MaxInstancesPerAssociation=PER_ASSOCIATION)
    order = receive_study(site, make_rt_set(n_slices=SLICES))
    plan = order[9]
    archive = site.orthanc.modality("ARCHIVE")
    archive.refused_with[plan] = "0xA700"
    site.run_queue()

    assert archive.received == [iid for iid in order if iid != plan]
    assert [list(call.resources) for call in site.orthanc.store_calls] == [
        order[0:4], order[4:8], order[8:11], order[10:11]]
    (job,) = site.jobs("forward")
    states = {item["instance_id"]: (item["state"], item["status"]) for item in site.items(job["id"])}
    assert states.pop(plan) == ("refused", "0xA700")
    assert {state for state, _ in states.values()} == {"sent"}
    assert job["state"] == "dead" and "status 0xA700" in job["last_error"]
    assert [(row["status"], row["instances"]) for row in site.transfers()] == [
        ("success", STUDY_SIZE - 1), ("refused", 0)]


def test_a_source_deleted_before_sending_is_skipped_with_source_gone(site_for: SiteFor) -> None:
    site = site_for(STUDY_TO_ARCHIVE, MaxInstancesPerAssociation=PER_ASSOCIATION)
    order = receive_study(site, make_rt_set(n_slices=SLICES))
    deleted = order[2]
    site.orthanc.delete_instance(deleted)
    claims = site.run_queue()

    rest = [iid for iid in order if iid != deleted]
    assert len(claims) == 1
    assert site.orthanc.modality("ARCHIVE").received == rest
    assert [list(call.resources) for call in site.orthanc.store_calls] == [
        rest[0:4], rest[4:8], rest[8:10]]
    (job,) = site.jobs("forward")
    gone = [item for item in site.items(job["id"]) if item["state"] == "gone"]
    assert [item["instance_id"] for item in gone] == [deleted]
    (event,) = site.events("source-gone")
    assert (event["resource_id"], event["status"], event["target"]) == (deleted, "skipped",
                                                                        "ARCHIVE")
    assert job["state"] == "done"
    assert success_counts(site) == [STUDY_SIZE - 1]


def test_a_modality_removed_from_orthanc_parks_the_job_at_once(site_for: SiteFor) -> None:
    site = site_for(STUDY_TO_ARCHIVE, MaxInstancesPerAssociation=PER_ASSOCIATION)
    receive_study(site, make_rt_set(n_slices=SLICES))
    del site.orthanc.modalities["ARCHIVE"]  # its entry was deleted from Orthanc meanwhile
    claims = site.run_queue()

    (job,) = site.jobs("forward")
    # One claim, its attempts counted as exhausted: retrying cannot create a modality.
    assert len(claims) == 1 and job["attempts"] == site.gateway.config.retry.max_attempts
    assert (job["state"], job["last_status"]) == ("dead", "unknown-target")
    assert site.events("source-gone") == []
    assert [(row["status"], row["instances"]) for row in site.transfers()] == [("failed", 0)]


# -- executor outcomes through the executor base ---------------------------------------------------
def export_rules(folder: Path, trigger: str = "instance") -> str:
    return EXPORT_TO_FOLDER.replace("FOLDER", str(folder)).replace("TRIGGER", trigger)


def export_site(site_for: SiteFor, folder: Path, trigger: str = "instance") -> GatewaySite:
    return site_for(export_rules(folder, trigger))


def test_export_done_writes_the_file_and_marks_it_sent(site_for: SiteFor, tmp_path: Path) -> None:
    folder = tmp_path / "draw"
    folder.mkdir()
    site = export_site(site_for, folder)
    rtset = make_rt_set(n_slices=1)
    structures = site.orthanc.receive(rtset.rtstruct, calling_aet="TPS")
    site.note_stored(structures)
    site.take_in()
    site.run_queue()

    (job,) = site.jobs("export")
    assert job["state"] == "done" and job["target"] == str(folder)
    (written,) = folder.iterdir()
    assert written.name == f"DRAW_{rtset.patient_id}_{rtset.rtstruct.SOPInstanceUID}.dcm"
    assert written.read_bytes() == site.orthanc.instances[structures].file
    (item,) = site.items(job["id"])
    assert (item["state"], item["bytes"]) == ("sent", written.stat().st_size)
    assert len(site.events("exported")) == 1
    assert site.rows("SELECT SOPInstanceUID FROM FileTransfer") == [
        {"SOPInstanceUID": str(rtset.rtstruct.SOPInstanceUID)}]


def test_export_of_a_source_deleted_meanwhile_is_source_gone_and_the_rest_goes_on(
        site_for: SiteFor, tmp_path: Path) -> None:
    folder = tmp_path / "draw"
    folder.mkdir()
    site = export_site(site_for, folder, trigger="stable-study")
    rtset = make_rt_set(n_slices=3, with_dose=False)
    ids = [site.orthanc.receive(ds) for ds in [*rtset.ct, rtset.rtstruct]]
    site.orthanc.mark_stable(site.orthanc.study_of(ids[0]))
    site.take_in()
    deleted = ids[0]  # the first of the job's four items
    site.orthanc.delete_instance(deleted)
    claims = site.run_queue()

    (job,) = site.jobs("export")
    assert len(claims) == 1 and job["state"] == "done"
    assert [(item["instance_id"], item["state"]) for item in site.items(job["id"])] == [
        (deleted, "gone"), *((iid, "sent") for iid in ids[1:])]
    assert site.items(job["id"])[0]["status"] == "the source instance is no longer in Orthanc"
    (event,) = site.events("source-gone")
    assert (event["resource_id"], event["status"], event["job_id"]) == (deleted, "skipped",
                                                                        job["id"])
    assert len(list(folder.iterdir())) == len(ids) - 1


def test_an_unreadable_file_is_refused_and_quarantined_alone(site_for: SiteFor,
                                                             tmp_path: Path) -> None:
    folder = tmp_path / "draw"
    folder.mkdir()
    site = export_site(site_for, folder, trigger="stable-study")
    rtset = make_rt_set(n_slices=2, with_dose=False)
    damaged = site.orthanc.receive(rtset.ct[0], file=b"not a DICOM file")
    readable = [site.orthanc.receive(ds) for ds in [rtset.ct[1], rtset.rtstruct]]
    site.orthanc.mark_stable(site.orthanc.study_of(damaged))
    site.take_in()
    claims = site.run_queue()

    (job,) = site.jobs("export")
    assert len(claims) == 1 and job["state"] == "dead"  # parked for the refused one
    assert [(item["instance_id"], item["state"], item["status"]) for item in
            site.items(job["id"])] == [(damaged, "refused", "invalid-input"),
                                       *((iid, "sent", None) for iid in readable)]
    (quarantined,) = site.rows("SELECT instance_id, reason, detail FROM quarantine")
    assert quarantined["instance_id"] == damaged
    assert quarantined["reason"].startswith("export: not a readable DICOM file")
    assert quarantined["detail"] == f"job {job['id']}"
    assert [event["resource_id"] for event in site.events("export-failed")] == [damaged]
    assert [event["resource_id"] for event in site.events("quarantined")] == [damaged]
    assert len(list(folder.iterdir())) == len(readable)


def test_an_orthanc_error_sends_the_job_back_with_backoff(site_for: SiteFor,
                                                          tmp_path: Path) -> None:
    folder = tmp_path / "draw"
    folder.mkdir()
    site = export_site(site_for, folder)
    structures = site.orthanc.receive(make_rt_set(n_slices=1).rtstruct)
    site.take_in()
    site.orthanc.inject("GET", f"/instances/{structures}/file",
                        HostError("HTTP 500 Internal error", missing=False))
    site.run_next()

    (job,) = site.jobs("export")
    assert (job["state"], job["attempts"], job["last_status"]) == ("pending", 1, "host")
    assert [event["status"] for event in site.events("export-error")] == ["retry"]
    site.run_queue()
    assert site.jobs("export")[0]["state"] == "done" and len(list(folder.iterdir())) == 1


def test_an_unavailable_folder_retries_then_parks_and_a_hand_retry_finishes(
        site_for: SiteFor, tmp_path: Path) -> None:
    folder = tmp_path / "share-not-mounted"
    site = export_site(site_for, folder)
    site.orthanc.receive(make_rt_set(n_slices=1).rtstruct)
    site.take_in()
    claims = site.run_queue()

    (job,) = site.jobs("export")
    max_attempts = site.gateway.config.retry.max_attempts
    assert len(claims) == max_attempts == job["attempts"]
    assert (job["state"], job["last_status"]) == ("dead", "destination-unavailable")
    assert [event["status"] for event in site.events("export-waiting")] == ["retry"] * max_attempts
    assert [item["state"] for item in site.items(job["id"])] == ["pending"]

    folder.mkdir()
    assert site.gateway.retry_job(job["id"])
    site.run_queue()
    assert site.jobs("export")[0]["state"] == "done"
    assert len(list(folder.iterdir())) == 1


def test_a_job_whose_rule_action_is_gone_is_parked_with_the_reason(site_for: SiteFor,
                                                                   tmp_path: Path) -> None:
    site = export_site(site_for, tmp_path / "draw")
    site.orthanc.receive(make_rt_set(n_slices=1).rtstruct)
    site.take_in()
    (site.folder / "rules.yaml").write_text(export_rules(tmp_path / "elsewhere"))
    site.gateway.reload_rules()
    site.run_queue()

    (job,) = site.jobs("export")
    assert (job["state"], job["last_status"]) == ("dead", "no-action")
    (event,) = site.events("export-failed")
    assert "has no export action" in event["detail"]


def overlay_site(site_for: SiteFor, wait: str) -> GatewaySite:
    return site_for(OVERLAY_TO_PACS.replace("WAIT", wait))


def test_overlay_waits_for_its_images_then_builds_stores_and_forwards(site_for: SiteFor) -> None:
    site = overlay_site(site_for, "10m")
    rtset = make_rt_set(n_slices=4, with_dose=False)
    for ds in rtset.ct[:2]:
        site.orthanc.receive(ds, calling_aet="TPS")
    structures = site.orthanc.receive(rtset.rtstruct, calling_aet="TPS")
    site.take_in()
    site.run_queue()

    (job,) = site.jobs("overlay")
    assert (job["state"], job["attempts"], job["last_status"]) == ("pending", 0, "waiting")
    assert job["next_attempt_at"] > time.time()
    assert "2 of 4 referenced image(s)" in job["last_error"]
    assert site.run_queue() == []  # not due yet
    site.time_passes()
    site.run_queue()  # still waiting: no attempt spent, one audit row per wait
    assert site.jobs("overlay")[0]["attempts"] == 0
    assert len(site.events("overlay-waiting")) == 1

    for ds in rtset.ct[2:]:
        site.orthanc.receive(ds, calling_aet="TPS")
    site.time_passes()
    site.run_queue()
    assert site.jobs("overlay")[0]["state"] == "done"
    own = [row["instance_id"] for row in site.rows("SELECT instance_id FROM own_output")]
    assert len(own) == 4 and all(site.orthanc.instances[iid].metadata["Origin"] == "RestApi"
                                 for iid in own)
    (forward,) = site.jobs("forward")
    assert forward["target"] == "PACS" and forward["state"] == "done"
    assert sorted(site.orthanc.modality("PACS").received) == sorted(own)
    assert structures not in site.orthanc.modality("PACS").received
    assert len(site.events("overlay-done")) == 1


OVERLAY_THEN_FORWARD = """
rules:
  - name: contours overlay, then forward
    on: instance
    match: {modality: RTSTRUCT}
    actions:
      - overlay: {}
      - forward: [PACS]
"""


def test_a_forward_written_after_an_overlay_sends_the_series_not_the_originals(
        site_for: SiteFor) -> None:
    """The derive-then-forward grammar of anonymize holds for the overlay too."""
    site = site_for(OVERLAY_THEN_FORWARD)
    rtset = make_rt_set(n_slices=3, with_dose=False)
    for ds in rtset.ct:
        site.orthanc.receive(ds, calling_aet="TPS")
    structures = site.orthanc.receive(rtset.rtstruct, calling_aet="TPS")
    site.take_in()
    site.run_queue()

    assert site.jobs("overlay")[0]["state"] == "done"
    own = [row["instance_id"] for row in site.rows("SELECT instance_id FROM own_output")]
    (forward,) = site.jobs("forward")
    assert (forward["target"], forward["state"]) == ("PACS", "done")
    assert sorted(site.orthanc.modality("PACS").received) == sorted(own) and own
    assert structures not in site.orthanc.modality("PACS").received


def test_overlay_that_gives_up_on_missing_images_is_refused_not_quarantined(
        site_for: SiteFor) -> None:
    site = overlay_site(site_for, "0")
    rtset = make_rt_set(n_slices=4, with_dose=False)
    site.orthanc.receive(rtset.ct[0])
    structures = site.orthanc.receive(rtset.rtstruct)
    site.take_in()
    site.run_queue()

    (job,) = site.jobs("overlay")
    assert job["state"] == "dead" and job["last_status"] == "images-missing"
    assert [(item["state"], item["status"]) for item in site.items(job["id"])] == [
        ("refused", "images-missing")]
    (event,) = site.events("overlay-images-missing")
    assert event["resource_id"] == structures and event["detail"].startswith("gave up after")
    assert site.rows("SELECT * FROM quarantine") == []
    assert site.jobs("forward") == []


def test_anonymized_copies_are_stored_forwarded_and_never_anonymized_again(
        site_for: SiteFor) -> None:
    site = site_for(RESEARCH_COPY.replace("KEEP", "true"))
    rtset = make_rt_set(n_slices=2)
    originals = [site.orthanc.receive(ds, calling_aet="TPS") for ds in rtset.ct]
    site.note_stored(*originals)
    site.take_in()
    site.run_queue()

    assert {job["state"] for job in site.jobs("anonymize")} == {"done"}
    copies = {row["original_instance_id"]: row["copy_instance_id"]
              for row in site.rows("SELECT * FROM deid_copies")}
    assert sorted(copies) == sorted(originals)
    for original, copy in copies.items():
        assert site.orthanc.instances[copy].metadata["Origin"] == "RestApi"
        assert site.orthanc.instances[copy].dataset.PatientID != rtset.patient_id
        assert site.orthanc.instances[original].dataset.PatientID == rtset.patient_id
    assert sorted(site.orthanc.modality("PACS").received) == sorted(copies.values())
    assert {job["target"] for job in site.jobs("forward")} == {"PACS"}

    site.take_in()  # the copies come back through /changes: the rule skips its own output
    assert len(site.jobs("anonymize")) == 2
    skipped = site.rows("SELECT * FROM evaluations WHERE resource_id IN (?, ?)",
                        tuple(copies.values()))
    assert {row["failed_condition"] for row in skipped} == {"include_gateway_output"}


def test_originals_are_deleted_only_once_no_other_job_needs_them(site_for: SiteFor) -> None:
    site = site_for(RESEARCH_COPY.replace("KEEP", "false") + ORIGINALS_TO_ARCHIVE,
                    Retry={"MaxAttempts": 3, "BaseDelaySeconds": 60, "MaxDelaySeconds": 60})
    original = site.orthanc.receive(make_rt_set(n_slices=1).ct[0], calling_aet="TPS")
    archive = site.orthanc.modality("ARCHIVE")
    archive.instances_before_drop = 0  # the archive is down: the original waits for it
    site.take_in()
    site.run_queue()

    (delete,) = site.jobs("delete-original")
    assert (delete["state"], delete["attempts"], delete["last_status"]) == (
        "pending", 0, "waiting")
    assert "still queued for other jobs" in delete["last_error"]
    assert original in site.orthanc.instances

    archive.instances_before_drop = None
    site.time_passes()
    site.run_queue()
    assert archive.received == [original]
    assert site.jobs("delete-original")[0]["state"] == "done"
    assert original not in site.orthanc.instances
    (copy,) = site.rows("SELECT * FROM deid_copies")
    assert copy["original_deleted_at"] and copy["copy_instance_id"] in site.orthanc.instances
    assert [event["status"] for event in site.events("original-deleted")] == ["ok"]


# -- the audit's truth: each delivered instance counted by exactly one success row -----------------
@pytest.mark.parametrize("retry_fails_first", [False, True])
def test_deliveries_of_a_killed_worker_are_counted_once_by_the_next_row(
        site_for: SiteFor, retry_fails_first: bool) -> None:
    site = site_for(STUDY_TO_ARCHIVE, MaxInstancesPerAssociation=PER_ASSOCIATION)
    order = receive_study(site, make_rt_set(n_slices=SLICES))
    archive = site.orthanc.modality("ARCHIVE")
    site.orthanc.inject("POST", "/modalities/ARCHIVE/store", WorkerKilled(), skip=2)
    with pytest.raises(WorkerKilled):
        site.run_next()  # killed after two chunks, before its transfer row

    (job,) = site.jobs("forward")
    assert job["state"] == "running" and site.transfers() == []
    assert [(item["state"], item["reported"]) for item in site.items(job["id"])] == (
        [("sent", 0)] * 8 + [("pending", 0)] * 3)
    assert site.restart_workers() == 1

    if retry_fails_first:
        archive.instances_before_drop = 0
        site.run_next()
        # The failed attempt's row pair still counts the dead worker's eight deliveries.
        assert [(row["status"], row["instances"]) for row in site.transfers()] == [
            ("success", 8), ("failed", 0)]
        archive.instances_before_drop = None
    site.run_queue()

    assert archive.received == order
    assert site.jobs("forward")[0]["state"] == "done"
    assert success_counts(site) == ([8, 3] if retry_fails_first else [STUDY_SIZE])
    assert_each_delivery_counted_once(site, job["id"], STUDY_SIZE)


@pytest.mark.parametrize("how", ["job-finished", "job-still-running", "c-find", "resend"])
def test_a_chunk_in_flight_when_the_worker_died_is_verified_before_a_resend(
        site_for: SiteFor, how: str) -> None:
    verify = {"ARCHIVE": "resend"} if how == "resend" else {}
    site = site_for(STUDY_TO_ARCHIVE, MaxInstancesPerAssociation=PER_ASSOCIATION,
                    Forwarding={"Verify": verify})
    order = receive_study(site, make_rt_set(n_slices=SLICES))
    archive = site.orthanc.modality("ARCHIVE")
    # Each store job answers "Running" to its first poll when the job is still running at the
    # restart (Orthanc's SaveJobs resumed it): the verifier must cancel it before it trusts it.
    archive.running_polls = 1 if how == "job-still-running" else 0
    polls_of_first_chunk = 1 + archive.running_polls
    site.orthanc.inject("GET", "/jobs/", WorkerKilled(), skip=polls_of_first_chunk)
    with pytest.raises(WorkerKilled):
        site.run_next()  # the second chunk reached the archive; its answer was never read

    (job,) = site.jobs("forward")
    assert archive.received == order[:8]
    in_flight = [item for item in site.items(job["id"]) if item["in_flight_job"]]
    assert [item["instance_id"] for item in in_flight] == order[4:8]
    site.restart_workers()
    if how in ("c-find", "resend"):
        site.orthanc.forget_jobs()  # Orthanc restarted too, SaveJobs false
    site.run_queue()

    (verified,) = site.events("in-flight-verified")
    if how == "resend":  # nobody can vouch for them: at least once, counted once
        assert archive.received == order[:8] + order[4:]
        assert verified["detail"].startswith("0 of 4 already at ARCHIVE")
    else:
        assert archive.received == order
        assert verified["detail"].startswith("4 of 4 already at ARCHIVE")
        assert ("C-FIND" in verified["detail"]) == (how == "c-find")
    cancelled = site.orthanc.calls_to("POST", f"/jobs/{in_flight[0]['in_flight_job']}/cancel")
    assert bool(cancelled) == (how == "job-still-running")
    assert site.jobs("forward")[0]["state"] == "done"
    assert_each_delivery_counted_once(site, job["id"], STUDY_SIZE)
