"""Destination policies (issue 26, items 3, 4 and 6): priorities, caps and time windows, applied
in the queue's claim, against the fake Orthanc with the real gateway; the windows' clock and the
pace's minute are set by the test, never waited for."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from orthanc_plugin.capabilities import load_rules_text
from orthanc_plugin.destinations import admission
from orthanc_plugin.destinations.model import WindowError, parse_window, window_state
from orthanc_plugin.rules import RulesError
from tests.support.fake_orthanc import FakeOrthanc
from tests.support.gateway_site import GatewaySite, build_site
from tests.support.rtset import make_rt_set

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
"""
SiteFor = Callable[..., GatewaySite]


@pytest.fixture
def orthanc() -> FakeOrthanc:
    return FakeOrthanc({"ARCHIVE": "ARCHIVE_AE"})


@pytest.fixture
def site_for(tmp_path: Path, orthanc: FakeOrthanc) -> Iterator[SiteFor]:
    built: list[GatewaySite] = []

    def build(policy: str, **settings: Any) -> GatewaySite:
        built.append(build_site(tmp_path, policy + RULES, orthanc, settings))
        return built[-1]

    yield build
    assert orthanc.unsupported == []
    for site in built:
        assert site.errors_logged() == []


def arrive(site: GatewaySite, calling: str, patient: str, slices: int) -> list[str]:
    rtset = make_rt_set(patient, f"{patient}^Pat", n_slices=slices, rows=8, columns=8)
    ids = [site.orthanc.receive(ds, calling_aet=calling) for ds in rtset.all()]
    site.note_stored(*ids)
    site.take_in()
    site.orthanc.mark_stable(site.orthanc.study_of(ids[0]))
    site.take_in()
    return ids


def destinations(site: GatewaySite) -> dict[str, dict[str, Any]]:
    response = site.gateway.router.dispatch("GET", "/rt-gateway/destinations", {}, b"")
    assert response.status == 200, response.body
    return {d["name"]: d for d in json.loads(response.body)}


def test_an_urgent_plan_passes_a_research_export_queued_before_it(
        site_for: SiteFor, monkeypatch: pytest.MonkeyPatch) -> None:
    site = site_for("destinations: {ARCHIVE: {max_associations: 1}}\n",
                    MaxInstancesPerAssociation=4)
    research = arrive(site, "RESEARCH", "RESEARCH-1", 30)
    urgent: list[str] = []
    storing = site.orthanc.post_json

    def urgent_arrives_during_the_export(uri: str, body: Any) -> Any:
        answer = storing(uri, body)
        if uri.endswith("/store") and not urgent:   # after the export's first association
            urgent.extend(arrive(site, "TPS", "URGENT-1", 3))
            assert destinations(site)["ARCHIVE"]["waiting_by_priority"] == {"urgent": 1}
        return answer

    monkeypatch.setattr(site.orthanc, "post_json", urgent_arrives_during_the_export)
    site.run_queue()

    received = site.orthanc.modality("ARCHIVE").received
    assert sorted(received) == sorted(research + urgent)          # both complete, once each
    first_research, last_urgent = received.index(research[0]), max(map(received.index, urgent))
    # The export's first association went; then the whole urgent study; then the rest.
    assert received[:4] == research[:4] and last_urgent == 4 + len(urgent) - 1
    assert first_research == 0
    (export,) = [job for job in site.jobs() if job["rule"] == "research export"]
    assert export["state"] == "done" and export["attempts"] == 1  # giving way cost no attempt


def test_a_low_priority_job_is_not_starved(site_for: SiteFor) -> None:
    site = site_for("")
    research = arrive(site, "RESEARCH", "RESEARCH-2", 2)
    with site.gateway.db.transaction() as connection:   # queued two hours ago
        connection.execute("UPDATE jobs SET created_epoch=created_epoch-7200")
    urgent = arrive(site, "TPS", "URGENT-2", 2)
    site.run_queue()
    received = site.orthanc.modality("ARCHIVE").received
    assert received.index(research[0]) < received.index(urgent[0])


def test_a_pace_of_n_per_minute_is_never_passed_and_the_rest_follows_next_minute(
        site_for: SiteFor) -> None:
    site = site_for("destinations: {ARCHIVE: {max_instances_per_minute: 7}}\n",
                    MaxInstancesPerAssociation=4)
    ids = arrive(site, "RESEARCH", "PACED-1", 14)   # 17 instances
    archive = site.orthanc.modality("ARCHIVE")
    minutes = []
    while len(archive.received) < len(ids):
        before = len(archive.received)
        site.run_queue()
        minutes.append(len(archive.received) - before)
        (job,) = site.jobs()
        if job["state"] != "done":
            assert job["last_status"] == "paced" and "7 instances per minute" in job["last_error"]
        with site.gateway.db.transaction() as connection:   # a minute passes
            connection.execute("UPDATE job_items SET sent_at='2000-01-01T00:00:00.000+00:00' "
                               "WHERE sent_at IS NOT NULL")
        site.time_passes()
        assert len(minutes) < 10
    assert minutes == [7, 7, 3]
    assert sorted(archive.received) == sorted(ids)
    (job,) = site.jobs()
    assert job["state"] == "done" and job["attempts"] <= 3


def test_a_closed_window_holds_jobs_and_opening_it_releases_them(
        site_for: SiteFor, monkeypatch: pytest.MonkeyPatch) -> None:
    saturday_noon = datetime(2026, 12, 5, 12, 0, tzinfo=UTC).timestamp()
    monkeypatch.setattr(admission, "CLOCK", lambda: saturday_noon)
    site = site_for("destinations:\n  ARCHIVE: {windows: ['Mo-Fr 19:00-06:00'], "
                    "time_zone: UTC}\n")
    ids = arrive(site, "TPS", "WINDOW-1", 2)
    assert site.run_queue() == []
    (job,) = site.jobs()
    assert job["state"] == "pending" and job["last_status"] == "window"
    assert "opens Mon 19:00" in job["last_error"]
    state = destinations(site)["ARCHIVE"]
    assert state["window_open"] is False and state["held"] == job["last_error"]

    monday_evening = datetime(2026, 12, 7, 19, 30, tzinfo=UTC).timestamp()
    monkeypatch.setattr(admission, "CLOCK", lambda: monday_evening)
    site.time_passes()
    site.run_queue()
    assert sorted(site.orthanc.modality("ARCHIVE").received) == sorted(ids)
    assert destinations(site)["ARCHIVE"]["window_open"] is True


@pytest.mark.parametrize(("text", "when", "is_open"), [
    ("Mo-Fr 19:00-06:00", "2026-12-07T19:00", True),    # Monday evening
    ("Mo-Fr 19:00-06:00", "2026-12-05T05:59", True),    # Saturday early: Friday's night
    ("Mo-Fr 19:00-06:00", "2026-12-05T06:00", False),
    ("Mo-Fr 19:00-06:00", "2026-12-07T05:00", False),   # Monday early: Sunday opened nothing
    ("Sa-Su", "2026-12-06T23:59", True),
    ("Sa-Su", "2026-12-07T00:00", False),
    ("22:00-05:00", "2026-12-08T03:00", True),
    ("Fr-Mo 08:00-09:00", "2026-12-07T08:30", True),   # wraps over the weekend
    ("Fr-Mo 08:00-09:00", "2026-12-08T08:30", False),
])
def test_windows_open_and_close_as_written(text: str, when: str, is_open: bool) -> None:
    moment = datetime.fromisoformat(when).replace(tzinfo=UTC)
    assert window_state((parse_window(text),), moment).open is is_open


def test_when_a_window_next_changes() -> None:
    windows = (parse_window("Mo-Fr 19:00-06:00"), parse_window("Sa-Su"))
    friday_night = datetime(2026, 12, 4, 23, 0, tzinfo=UTC)
    # Friday's night runs into the weekend, which runs to Monday 00:00: one span.
    assert window_state(windows, friday_night).changes_at == datetime(2026, 12, 7, 0, 0, tzinfo=UTC)
    monday_noon = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
    assert window_state(windows, monday_noon).changes_at == datetime(2026, 12, 7, 19, 0, tzinfo=UTC)


@pytest.mark.parametrize(("section", "message"), [
    ("{ARCHIVE: {windows: ['Mo-Xx 10:00-11:00']}}", "destinations.ARCHIVE.windows[0]: unknown days"),
    ("{ARCHIVE: {windows: ['10:00-10:00']}}", "opens and closes at the same time"),
    ("{ARCHIVE: {max_associations: 0}}", "destinations.ARCHIVE.max_associations: expected a whole"),
    ("{ARCHIVE: {time_zone: Mars/Olympus}}", "destinations.ARCHIVE.time_zone: unknown time zone"),
    ("{ARCHIVE: {speed: 3}}", "destinations.ARCHIVE.speed: unknown option"),
    ("{NOWHERE: {max_associations: 1}}", "destinations.NOWHERE: unknown destination 'NOWHERE'"),
    ("{ARCHIVE: {failover: ARCHIVE}}", "destinations.ARCHIVE.failover: a destination cannot fail"),
    ("{ARCHIVE: {failover: MARS}}", "destinations.ARCHIVE.failover: unknown destination 'MARS'"),
    ("{ARCHIVE: {failover_after: 5m}}", "failover_after needs a failover destination"),
    ("{ARCHIVE: {failover: BACKUP, failover_after: soon}}", "ARCHIVE.failover_after: expected a dur"),
    ("{ARCHIVE: {failover: BACKUP}, BACKUP: {failover: ARCHIVE}}",
     "failovers go round in a circle (ARCHIVE -> BACKUP -> ARCHIVE)"),
])
def test_a_bad_policy_is_refused_with_its_place(section: str, message: str) -> None:
    with pytest.raises(RulesError) as error:
        load_rules_text(f"destinations: {section}\n" + RULES, {"ARCHIVE", "BACKUP"})
    assert message in str(error.value)


def test_a_bad_window_says_what_is_expected() -> None:
    with pytest.raises(WindowError, match="expected a window such as"):
        parse_window("Mo 25:00-26:00")
    with pytest.raises(WindowError, match="unknown days 'evenings'"):
        parse_window("evenings")
