"""Decide at arrival, record after (issue 22, item 3).

Pure: which rules a stored-instance note can decide, and the facts it gives. Contracts, on the
fake Orthanc (tests/support/gateway_site.py): a forward rule the note answers is queued before
the instance is described (no REST call for it); delivery may come first; the description then
completes the same records (evaluation row and its log line, the jobs' and transfers' patient
and study, the transaction log) once, and what the note cannot answer waits for the description.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from orthanc_plugin.audit.recorder import LOG_AWAITS_DESCRIPTION
from orthanc_plugin.capabilities import load_rules_text
from orthanc_plugin.rules.arrival import (
    answers,
    arrival_facts,
    decidable_at_arrival,
)
from tests.support.fake_orthanc import FakeOrthanc
from tests.support.gateway_site import GatewaySite, build_site
from tests.support.rtset import make_rt_set

KNOWN = {"ARCHIVE", "PACS"}
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
NOTE = {"calling_aet": "TPS", "called_aet": "RTGW", "remote_ip": "10.1.2.3",
        "origin": "DicomProtocol", "sop_class_uid": CT_IMAGE}

RULES = """
rules:
  - name: by calling AE
    on: instance
    match: {calling_aet: TPS}
    actions: [{forward: [ARCHIVE]}]
  - name: plans by modality
    on: instance
    match: {any: [{modality: RTPLAN}, {calling_aet: [SIM*], sop_class: RT Plan Storage}]}
    actions: [{forward: [PACS]}]
  - name: by plan label
    on: instance
    match: {plan_label: {contains: ADP}}
    actions: [{forward: [PACS]}]
  - name: by a tag
    on: instance
    match: {calling_aet: TPS, tags: {StudyDescription: Prostate}}
    actions: [{forward: [PACS]}]
  - name: whole study
    on: stable-study
    match: {calling_aet: TPS}
    actions: [{forward: [ARCHIVE]}]
  - name: research copy
    on: instance
    match: {calling_aet: TPS}
    actions: [{anonymize: {profile: full}}, {forward: [PACS]}]
"""


def rules_by_name() -> dict[str, object]:
    return {rule.name: rule for rule in load_rules_text(RULES, KNOWN).rules}


# -- pure ------------------------------------------------------------------------------------------
def test_only_forward_rules_that_read_note_facts_are_decided_at_arrival() -> None:
    decidable = {name for name, rule in rules_by_name().items()
                 if decidable_at_arrival(rule)}  # type: ignore[arg-type]
    # Plan labels and tags need the description; a stable-study rule waits for the study; an
    # anonymization needs the study too.
    assert decidable == {"by calling AE", "plans by modality"}


def test_a_note_stands_for_the_description_only_for_dicom_arrivals_with_a_sop_class() -> None:
    facts = arrival_facts("i1", NOTE)
    assert facts is not None
    assert (facts.calling_aet, facts.called_aet, facts.remote_ip, facts.source, facts.modality) \
        == ("TPS", "RTGW", "10.1.2.3", "DICOM", "CT")
    assert arrival_facts("i1", {**NOTE, "origin": "RestApi"}) is None  # perhaps an import folder
    assert arrival_facts("i1", {**NOTE, "sop_class_uid": ""}) is None


def test_a_modality_is_read_from_the_sop_class_only_where_the_iod_fixes_it() -> None:
    rule = rules_by_name()["plans by modality"]
    plan = arrival_facts("i1", {**NOTE, "sop_class_uid": "1.2.840.10008.5.1.4.1.1.481.5"})
    capture = arrival_facts("i2", {**NOTE, "sop_class_uid": SECONDARY_CAPTURE})
    assert plan is not None and capture is not None
    assert plan.modality == "RTPLAN" and answers(rule, plan)  # type: ignore[arg-type]
    # Secondary capture may carry any modality: a rule naming one waits for the description.
    assert capture.modality == "" and not answers(rule, capture)  # type: ignore[arg-type]
    assert answers(rules_by_name()["by calling AE"], capture)  # type: ignore[arg-type]


# -- contracts on the fake Orthanc --------------------------------------------------------------
FORWARD_BY_AE = """
rules:
  - name: plans from the TPS
    on: instance
    match: {calling_aet: TPS, modality: [RTSTRUCT, RTPLAN]}
    actions:
      - forward: [ARCHIVE]
"""
BY_PLAN_LABEL = """
rules:
  - name: plans by label
    on: instance
    match: {plan_label: {contains: ADP}}
    actions:
      - forward: [ARCHIVE]
"""


@pytest.fixture
def site_for(tmp_path: Path) -> Iterator[object]:
    orthanc = FakeOrthanc({"ARCHIVE": "ARCHIVE_AE", "PACS": "PACS_AE"})
    built: list[GatewaySite] = []

    def build(rules: str) -> GatewaySite:
        built.append(build_site(tmp_path, rules, orthanc))
        return built[-1]

    yield build
    assert orthanc.unsupported == []
    for site in built:
        assert site.errors_logged() == []


def log_text(site: GatewaySite) -> str:
    folder = site.gateway.config.transaction_log_folder
    return "".join(path.read_text() for path in sorted(folder.glob("*.log")))


def test_a_forward_is_queued_and_sent_before_the_instance_is_described_and_recorded_after(
        site_for) -> None:  # type: ignore[no-untyped-def]
    site: GatewaySite = site_for(FORWARD_BY_AE)
    rtset = make_rt_set("P-ARRIVE", "Arrive^Anna", n_slices=2)
    ids = [site.orthanc.receive(ds, calling_aet="TPS") for ds in rtset.all()]
    structures, plan = ids[2], ids[3]
    site.note_stored(*ids)
    site.take_in_while_arriving()

    # Queued from the notes alone: no instance described yet, nothing recorded yet.
    assert not [uri for uri in site.orthanc.calls_to("GET", "/instances/")
                if uri.rstrip("/").count("/") == 2]
    jobs = site.jobs("forward")
    assert sorted(job["resource_id"] for job in jobs) == sorted([structures, plan])
    assert {(job["awaits_description"], job["study_uid"] or "") for job in jobs} == {(1, "")}
    assert site.rows("SELECT * FROM evaluations") == []

    site.run_queue()  # delivered while the burst still arrives
    assert set(site.orthanc.modality("ARCHIVE").received) == {structures, plan}
    transfers = site.transfers("success")
    assert {row["logged"] for row in transfers} == {LOG_AWAITS_DESCRIPTION}
    assert "transfer " not in log_text(site)

    site.take_in()  # the notes pause: described, and the records completed
    jobs = site.jobs("forward")
    assert {(job["awaits_description"], job["study_uid"], job["patient_id"]) for job in jobs} \
        == {(0, rtset.study_uid, "P-ARRIVE")}
    transfers = site.transfers("success")
    assert {(row["logged"], row["study_uid"]) for row in transfers} == {(1, rtset.study_uid)}
    evaluations = site.rows("SELECT * FROM evaluations WHERE matched=1")
    assert sorted(row["resource_id"] for row in evaluations) == sorted([structures, plan])
    assert {(row["study_uid"], row["new_instances"]) for row in evaluations} \
        == {(rtset.study_uid, 1)}
    # Each transfer logged once, with the study; each decision's "queued" line too.
    text = log_text(site)
    for row in transfers:
        assert text.count(f"transfer {row['id']}\n") == 1
    transfer_lines = [line for line in text.splitlines() if "transfer " in line]
    assert transfer_lines and all(rtset.study_uid in line for line in transfer_lines)
    assert text.count("queued 1 instance(s)") == 2
    assert site.rows("SELECT * FROM arrival_decisions") == []
    # The CT and dose did not match: their evaluations are recorded too, with the reason.
    unmatched = site.rows("SELECT * FROM evaluations WHERE matched=0")
    assert len(unmatched) == len(ids) - 2
    assert {row["failed_condition"] for row in unmatched} == {"match.modality"}


def test_a_description_before_delivery_leaves_nothing_waiting(site_for) -> None:  # type: ignore[no-untyped-def]
    site: GatewaySite = site_for(FORWARD_BY_AE)
    rtset = make_rt_set("P-EARLY", n_slices=1)
    ids = [site.orthanc.receive(ds, calling_aet="TPS") for ds in rtset.all()]
    site.note_stored(*ids)
    site.take_in()
    site.run_queue()
    transfers = site.transfers("success")
    assert transfers and {(row["logged"], row["study_uid"]) for row in transfers} \
        == {(1, rtset.study_uid)}
    text = log_text(site)
    assert all(text.count(f"transfer {row['id']}\n") == 1 for row in transfers)


def test_a_duplicate_store_decides_nothing_again(site_for) -> None:  # type: ignore[no-untyped-def]
    site: GatewaySite = site_for(FORWARD_BY_AE)
    rtset = make_rt_set("P-TWICE", n_slices=1)
    ids = [site.orthanc.receive(ds, calling_aet="TPS") for ds in rtset.all()]
    site.note_stored(*ids)
    site.take_in()
    site.run_queue()
    site.note_stored(*ids)  # the modality sends the same instances again
    site.take_in()
    assert len(site.jobs("forward")) == 2
    assert len(site.rows("SELECT * FROM evaluations WHERE matched=1")) == 2


def test_what_the_note_cannot_answer_waits_for_the_description(site_for) -> None:  # type: ignore[no-untyped-def]
    site: GatewaySite = site_for(BY_PLAN_LABEL)
    rtset = make_rt_set("P-LABEL", plan_label="ADP3", n_slices=1)
    ids = [site.orthanc.receive(ds, calling_aet="TPS") for ds in rtset.all()]
    site.note_stored(*ids)
    site.take_in_while_arriving()
    assert site.jobs() == []
    site.take_in()
    jobs = site.jobs("forward")
    assert jobs and {(job["awaits_description"], job["study_uid"]) for job in jobs} \
        == {(0, rtset.study_uid)}


def test_a_file_whose_modality_contradicts_its_sop_class_is_audited(site_for) -> None:  # type: ignore[no-untyped-def]
    site: GatewaySite = site_for(FORWARD_BY_AE)
    rtset = make_rt_set("P-ODD", n_slices=1)
    odd = rtset.rtplan
    assert odd is not None
    odd.Modality = "OT"  # an RT Plan whose Modality says otherwise (a faulty exporter)
    odd.SeriesInstanceUID = generate_uid()
    plan = site.orthanc.receive(odd, calling_aet="TPS")
    site.note_stored(plan)
    site.take_in()
    (event,) = site.events("arrival-decision-differs")
    assert event["resource_id"] == plan and "modality OT" in event["detail"]
    # What was queued from the note stands (it may already have been sent) and is recorded.
    assert [job["resource_id"] for job in site.jobs("forward")] == [plan]


def test_an_instance_deleted_before_its_description_completes_its_records(site_for) -> None:  # type: ignore[no-untyped-def]
    site: GatewaySite = site_for(FORWARD_BY_AE)
    rtset = make_rt_set("P-GONE", n_slices=1)
    plan = site.orthanc.receive(rtset.rtplan, calling_aet="TPS")  # type: ignore[arg-type]
    site.note_stored(plan)
    site.take_in_while_arriving()
    site.orthanc.delete_instance(plan)
    site.take_in()
    assert site.rows("SELECT * FROM arrival_decisions") == []
    (evaluation,) = site.rows("SELECT * FROM evaluations")
    assert evaluation["resource_id"] == plan and evaluation["matched"] == 1
    assert {job["awaits_description"] for job in site.jobs("forward")} == {0}


def test_a_delivered_webhook_waits_for_the_description_and_names_the_study(
        tmp_path: Path) -> None:
    from orthanc_plugin.webhooks.store import WebhookStore

    url = "https://ops.example.org/rtgw"
    site = build_site(tmp_path, FORWARD_BY_AE, FakeOrthanc({"ARCHIVE": "ARCHIVE_AE"}), {
        "Webhooks": [{"Url": url, "Secret": "s" * 24, "Events": ["delivered"]}]})
    rtset = make_rt_set("P-HOOK", n_slices=1)
    plan = site.orthanc.receive(rtset.rtplan, calling_aet="TPS")  # type: ignore[arg-type]
    site.note_stored(plan)
    site.take_in_while_arriving()
    site.run_queue()
    store = WebhookStore(site.gateway.db)
    assert site.rows("SELECT study_uid FROM webhook_outbox") == [{"study_uid": ""}]
    assert store.next_due(url, now=1e12) is None  # the study is not known yet: it waits
    site.take_in()
    due = store.next_due(url, now=1e12)
    assert due is not None and due.study_uid == rtset.study_uid
    assert due.patient_id == "P-HOOK" and due.event == "delivered"
