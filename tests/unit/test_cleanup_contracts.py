"""Clean-up of Orthanc's storage (issue 26, item 5), against the fake Orthanc: the real gateway
decides which studies go, deletes them through the host port and audits each deletion; the dry
run says why every other study stays. Ages are set in the gateway's own record of arrival (the
clock the policy reads), never waited for.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from orthanc_plugin.cleanup.model import CleanupPolicy, StorageUse
from orthanc_plugin.jobs.queue import JobSpec
from tests.support.fake_orthanc import FakeOrthanc
from tests.support.gateway_site import GatewaySite, build_site
from tests.support.rtset import RtSet, make_rt_set

DAY = 86400.0
JSON = {"content-type": "application/json", "x-requested-with": "test"}
POLICY = """
cleanup:
  older_than: 30d
  quiet_for: 10m
"""
PLANS_TO_ARCHIVE = """
rules:
  - name: studies to the archive
    on: stable-study
    match: {calling_aet: TPS}
    actions:
      - forward: [ARCHIVE]
  - name: plans held until complete
    on: plan-complete
    complete_within: 0s
    then: hold
    match: {}
    actions:
      - forward: [PACS]
"""
RELAY = """
rules:
  - name: relay CT to the archive
    on: instance
    match: {modality: CT}
    actions:
      - forward: ARCHIVE
      - delete_after: forwarded
"""

SiteFor = Callable[[str], GatewaySite]


@pytest.fixture
def orthanc() -> FakeOrthanc:
    return FakeOrthanc({"ARCHIVE": "ARCHIVE_AE", "PACS": "PACS_AE"})


@pytest.fixture
def site_for(tmp_path: Path, orthanc: FakeOrthanc) -> Iterator[SiteFor]:
    built: list[GatewaySite] = []

    def build(rules: str) -> GatewaySite:
        built.append(build_site(tmp_path, rules, orthanc))
        return built[-1]

    yield build
    assert orthanc.unsupported == []
    for site in built:
        assert site.errors_logged() == []


def arrive(site: GatewaySite, rtset: RtSet, *, stable: bool = True) -> str:
    """The study arrives from the TPS and is taken in (and made stable); returns its Orthanc ID."""
    ids = [site.orthanc.receive(ds, calling_aet="TPS") for ds in rtset.all()]
    site.note_stored(*ids)
    site.take_in()
    study_id = site.orthanc.study_of(ids[0])
    if stable:
        site.orthanc.mark_stable(study_id)
        site.take_in()
    return study_id


def age(site: GatewaySite, study_id: str, days: float) -> None:
    """The study arrived `days` ago, as the gateway's record of arrival says."""
    with site.gateway.db.transaction() as connection:
        connection.execute("UPDATE study_progress SET last_received_at=last_received_at-? "
                           "WHERE study_id=?", (days * DAY, study_id))


def review(site: GatewaySite) -> dict[str, Any]:
    response = site.gateway.router.dispatch("GET", "/rt-gateway/cleanup", {"limit": "100"}, b"")
    assert response.status == 200, response.body
    answer: dict[str, Any] = json.loads(response.body)
    return answer


def run_round(site: GatewaySite, user: str = "physicist") -> dict[str, Any]:
    response = site.gateway.router.dispatch("POST", "/rt-gateway/cleanup/run", {},
                                            b'{"confirm": true}', {**JSON, "x-rtgw-user": user})
    assert response.status == 200, response.body
    answer: dict[str, Any] = json.loads(response.body)
    return answer


def test_a_delivered_old_study_goes_and_each_other_one_stays_with_its_reason(
        site_for: SiteFor) -> None:
    site = site_for(POLICY + PLANS_TO_ARCHIVE)
    delivered = arrive(site, make_rt_set("P-DONE", "Done^Dora"))
    parked = arrive(site, make_rt_set("P-PARK", "Parked^Paul"))
    incomplete = arrive(site, make_rt_set("P-HOLD", "Held^Hanna", with_dose=False))
    arriving = arrive(site, make_rt_set("P-NEW", "New^Nina"), stable=False)
    site.orthanc.modality("ARCHIVE").instances_before_drop = None
    for instance_id in site.orthanc.studies[parked].series_ids[:1]:
        for member in site.orthanc.series[instance_id].instance_ids:
            site.orthanc.modality("ARCHIVE").refused_with[member] = "0xA700"
    site.run_queue()
    for study_id in (delivered, parked, incomplete):
        age(site, study_id, 40)

    answer = review(site)
    verdicts = {study["id"]: study for study in answer["studies"]}
    assert answer["would_delete"] == 1 and answer["would_keep"] == 3
    assert verdicts[delivered]["verdict"] == "delete"
    assert "older than 30 days" in verdicts[delivered]["reason"]
    assert verdicts[delivered]["patient_name"] == "Done^Dora"
    assert "parked" in verdicts[parked]["reason"] and "forward to ARCHIVE" in verdicts[parked]["reason"]
    assert "plan 'ADP1' of this patient is incomplete" in verdicts[incomplete]["reason"]
    assert "held by rule 'plans held until complete'" in verdicts[incomplete]["reason"]
    assert "still arriving" in verdicts[arriving]["reason"] or \
        "stable-study rules" in verdicts[arriving]["reason"]
    # A dry run deletes nothing.
    assert set(site.orthanc.studies) == {delivered, parked, incomplete, arriving}

    result = run_round(site)
    assert [study["id"] for study in result["deleted"]] == [delivered]
    assert set(site.orthanc.studies) == {parked, incomplete, arriving}
    (event,) = site.events("study-deleted")
    assert event["resource_id"] == delivered and event["patient_id"] == "P-DONE"
    assert "older than 30 days" in event["detail"] and "physicist" in event["detail"]


def test_a_job_queued_since_the_listing_keeps_the_study(site_for: SiteFor,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The guard is looked at again just before each deletion: a send queued while the round
    lists the studies keeps the study."""
    site = site_for(POLICY + PLANS_TO_ARCHIVE)
    study_id = arrive(site, make_rt_set("P-LATE", "Late^Lars"))
    site.run_queue()
    age(site, study_id, 40)
    assert review(site)["would_delete"] == 1
    listing = site.orthanc.get_json

    def list_then_queue(uri: str) -> Any:
        answer = listing(uri)
        if uri.startswith("/studies?expand"):
            instance_id = site.orthanc.studies[study_id].series_ids[0]
            first = site.orthanc.series[instance_id].instance_ids[0]
            spec = JobSpec("by hand", "forward", "manual", "study", study_id, "PACS",
                           study_uid=site.orthanc.studies[study_id].main_tags["StudyInstanceUID"])
            with site.gateway.db.transaction() as connection:
                site.gateway.queue.enqueue(connection, spec, [first])
        return answer

    monkeypatch.setattr(site.orthanc, "get_json", list_then_queue)
    assert run_round(site)["deleted"] == []
    assert study_id in site.orthanc.studies
    monkeypatch.undo()
    assert "job" in review(site)["studies"][0]["reason"]


def test_over_the_storage_threshold_the_oldest_go_first_until_under(site_for: SiteFor) -> None:
    threshold = """
cleanup:
  storage_above_gb: 0.006      # 6.1 MB; three studies below are 8 MB, 2.7 MB each
  quiet_for: 10m
"""
    site = site_for(threshold + PLANS_TO_ARCHIVE)
    studies = [arrive(site, make_rt_set(f"P-{n}", f"Big^{n}", rows=512, columns=512,
                                         n_slices=4)) for n in range(3)]
    site.run_queue()
    for days, study_id in zip((5, 9, 7), studies, strict=True):
        age(site, study_id, days)
    before = review(site)
    assert before["storage"]["over"] and before["would_delete"] == 1
    assert [s["id"] for s in before["studies"] if s["verdict"] == "delete"] == [studies[1]]

    result = run_round(site)
    assert [study["id"] for study in result["deleted"]] == [studies[1]]   # the oldest (9 days)
    assert result["over_after"] is None
    assert set(site.orthanc.studies) == {studies[0], studies[2]}
    assert "the oldest go first" in site.events("study-deleted")[0]["detail"]


def test_without_a_policy_nothing_is_deleted_and_a_round_is_refused(site_for: SiteFor) -> None:
    site = site_for(PLANS_TO_ARCHIVE)
    study_id = arrive(site, make_rt_set("P-KEEP", "Keep^Kim"))
    site.run_queue()
    age(site, study_id, 4000)
    assert review(site)["would_delete"] == 0
    response = site.gateway.router.dispatch("POST", "/rt-gateway/cleanup/run", {},
                                            b'{"confirm": true}', JSON)
    assert response.status == 409
    unconfirmed = site.gateway.router.dispatch("POST", "/rt-gateway/cleanup/run", {}, b"{}", JSON)
    assert unconfirmed.status == 400
    assert study_id in site.orthanc.studies


def test_a_relay_deletes_its_instances_once_delivered_and_keeps_them_while_parked(
        site_for: SiteFor) -> None:
    site = site_for(RELAY)
    archive = site.orthanc.modality("ARCHIVE")
    rtset = make_rt_set("P-RELAY", "Relay^Rita", n_slices=4)
    refused = make_rt_set("P-REFUSED", "Refused^Rob", n_slices=2)
    ids = [site.orthanc.receive(ds, calling_aet="CT") for ds in rtset.ct]
    kept = [site.orthanc.receive(ds, calling_aet="CT") for ds in refused.ct]
    archive.refused_with[kept[0]] = "0xA700"
    site.note_stored(*ids, *kept)
    site.take_in()
    site.run_queue()
    # Delivered, but the study may still grow: nothing goes before its stable-study rules ran.
    assert all(instance_id in site.orthanc.instances for instance_id in ids)
    for study_id in {site.orthanc.study_of(ids[0]), site.orthanc.study_of(kept[0])}:
        site.orthanc.mark_stable(study_id)
    site.take_in()
    site.time_passes()
    site.run_queue()
    assert sorted(archive.received[:len(ids)]) == sorted(ids)
    assert not any(instance_id in site.orthanc.instances for instance_id in ids)
    # Per instance: the refused one stays for its parked job, its delivered neighbour goes.
    assert kept[0] in site.orthanc.instances and kept[1] not in site.orthanc.instances
    (waiting,) = [job for job in site.jobs("delete-after-forwarded") if job["state"] == "pending"]
    assert "parked" in waiting["last_error"] and waiting["patient_id"] == "P-REFUSED"
    deleted = site.events("instances-deleted-after-forwarding")
    assert sum(int(event["detail"].split()[0]) for event in deleted) == len(ids) + 1


def test_storage_use_over_either_threshold() -> None:
    policy = CleanupPolicy(storage_above_mb=1000, disk_used_above_percent=80)
    assert StorageUse(900, 70, 10_000).over(policy) is None
    assert "above 1000 MB" in (StorageUse(1200, 70, 10_000).over(policy) or "")
    assert "85.0 % full" in (StorageUse(900, 85, 10_000).over(policy) or "")
    # Freeing 600 MB of a 10 GB disk takes 6 points off its use.
    assert StorageUse(1200, 85, 10_000).after_freeing(600) == StorageUse(600, 79, 10_000)
