"""Pure parts of the process model and of delivery: crash reclaim and poison, generations, notes,
bounded rules input, linear-time regexes, in-flight verification (against a fake Orthanc, named so:
the integration tests run the real one)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from orthanc_plugin.audit.tables import SCHEMA as AUDIT_SCHEMA
from orthanc_plugin.channels import (
    DeletedNote,
    NotedFacts,
    StableStudyNote,
    StoredNote,
    WakeNote,
    channels_for,
    decode_note,
    encode_note,
)
from orthanc_plugin.config import RetryPolicySettings
from orthanc_plugin.db import META_SCHEMA, Database
from orthanc_plugin.forwarding.store import InFlight
from orthanc_plugin.forwarding.verify import InFlightVerifier, InstanceKeys
from orthanc_plugin.in_orthanc.supervisor.processes import exit_reason
from orthanc_plugin.jobs.queue import ClaimedItem, JobQueue, JobSpec
from orthanc_plugin.jobs.tables import SCHEMA as JOBS_SCHEMA
from orthanc_plugin.ports import HostError
from orthanc_plugin.rules import RulesError, load_rules_text

POLICY = RetryPolicySettings(max_attempts=3, base_delay_seconds=0, max_delay_seconds=0)


@pytest.fixture
def queue(tmp_path: Path) -> JobQueue:
    db = Database(tmp_path / "q.sqlite", [META_SCHEMA, AUDIT_SCHEMA, JOBS_SCHEMA])
    return JobQueue(db, POLICY)


def _queue_one(queue: JobQueue) -> int:
    with queue.db.transaction() as connection:
        job_id, _ = queue.enqueue(connection, JobSpec("r", "forward", "instance", "instance", "i",
                                                      "T"), ["i"])
    assert job_id is not None
    return job_id


def test_a_job_that_ends_its_worker_twice_is_parked_as_poison(queue: JobQueue) -> None:
    job_id = _queue_one(queue)
    queue.claimant = "gen1:100"
    assert queue.claim(10) is not None
    assert queue.reclaim_from_crashed("gen1:100", "killed by signal SIGKILL") == ([job_id], [])
    assert queue.get(job_id)["state"] == "pending"      # type: ignore[index]
    queue.claimant = "gen1:101"
    assert queue.claim(10) is not None
    assert queue.reclaim_from_crashed("gen1:101", "memory limit exceeded") == ([], [job_id])
    job = queue.get(job_id)
    assert job is not None and job["state"] == "dead" and job["last_status"] == "poison"
    assert "memory limit exceeded" in job["last_error"]
    assert queue.retry_by_hand(job_id)                   # by hand it gets a fresh chance
    assert queue.get(job_id)["crashes"] == 0             # type: ignore[index]


def test_recovery_takes_back_only_earlier_generations_claims(queue: JobQueue) -> None:
    old, mine = _queue_one(queue), None
    queue.claimant = "old:1"
    assert queue.claim(10) is not None
    with queue.db.transaction() as connection:
        mine, _ = queue.enqueue(connection, JobSpec("r", "forward", "instance", "instance", "j",
                                                    "T"), ["j"])
    queue.claimant = "new:2"
    assert queue.claim(10) is not None
    assert queue.recover_after_crash("new") == 1
    assert queue.get(old)["state"] == "pending"          # type: ignore[index]
    assert queue.get(mine)["state"] == "running"         # type: ignore[arg-type,index]


def test_a_clean_stop_hands_claims_back_without_spending_an_attempt(queue: JobQueue) -> None:
    job_id = _queue_one(queue)
    queue.claimant = "g:1"
    assert queue.claim(10) is not None
    assert queue.release_claims() == 1
    job = queue.get(job_id)
    assert job is not None and job["state"] == "pending" and job["attempts"] == 0


def test_notes_round_trip_and_garbage_is_ignored() -> None:
    stored = StoredNote("id-1", NotedFacts("MY AE", "RTGW", "10.0.0.5", "DicomProtocol",
                                           "1.2.840.10008.5.1.4.1.1.2", 524_288))
    for note in (stored, StoredNote("id-2"), StableStudyNote("study-1"), DeletedNote("id-3"),
                 WakeNote()):
        assert decode_note(encode_note(note)) == note
    # A stored note whose facts are cut short still names its instance (the intake asks Orthanc).
    assert decode_note(b"S id-4 MY\x1fAE RTGW") == StoredNote("id-4")
    for garbage in (b"X nonsense", b"S", b"T ", b""):
        assert decode_note(garbage) is None


def test_long_database_paths_get_a_short_private_socket_folder(tmp_path: Path) -> None:
    deep = tmp_path.joinpath(*["a-rather-long-folder-name"] * 6) / "gateway.sqlite"
    channels = channels_for(deep)
    assert len(str(channels.api_socket)) < 100
    assert channels.folder.stat().st_mode & 0o777 == 0o700


def test_exit_reasons_name_the_cause() -> None:
    assert exit_reason(-9) == "killed by signal SIGKILL"
    assert exit_reason(75) == "job time limit exceeded"
    assert exit_reason(76) == "memory limit exceeded"


def test_pathological_regex_is_matched_in_linear_time() -> None:
    rules = load_rules_text(
        "rules:\n  - name: r\n    on: instance\n    match: {tags: {StudyDescription: "
        "{regex: '^(a+)+$'}}}\n    actions: [{forward: T}]\n", {"T"})
    pattern = rules.rules[0].match.conditions[0].spec.pattern  # type: ignore[attr-defined]
    # The guarantee is the engine, not a stopwatch: RE2 has no backtracking, so this input,
    # which Python's `re` would take centuries over, is answered in one linear pass.
    assert type(pattern).__module__.startswith("re2")
    assert pattern.search("a" * 5000 + "!") is None
    assert pattern.search("a" * 5000) is not None


def test_backreferences_are_refused_at_load_with_the_path() -> None:
    with pytest.raises(RulesError, match=r"rules\[0\]\.match\.plan_label\.regex: .*RE2"):
        load_rules_text("rules:\n  - name: r\n    on: instance\n    match: {plan_label: "
                        "{regex: '(a)\\1'}}\n    actions: [{forward: T}]\n", {"T"})


def test_alias_bomb_and_deep_nesting_are_refused_before_they_grow() -> None:
    bomb = "a: &a [{calling_aet: X}, {calling_aet: Y}]\n" + "".join(
        f"{n}: &{n} [{', '.join(['*' + p] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi",
                                                                   strict=True))
    bomb += "rules:\n  - name: b\n    on: instance\n    match: {any: *i}\n" \
            "    actions: [{forward: T}]\n"
    nested = ("rules:\n  - name: n\n    on: instance\n    match: " + "{not: " * 3000
              + "{calling_aet: A}" + "}" * 3000 + "\n    actions: [{forward: T}]\n")
    # Refused by counting what the loader expands, before the document is built: without the
    # checks the bomb grows to 9^8 nodes and the test never ends rather than passing.
    for text, words in ((bomb, "aliases are expanded"), (nested, "nested deeper")):
        with pytest.raises(RulesError, match=words):
            load_rules_text(text, {"T"})


class FakeOrthanc:
    """A stand-in for Orthanc's REST API (the real one runs in tests/integration)."""

    def __init__(self, jobs: dict[str, list[dict[str, Any]]], held: set[str]) -> None:
        self.jobs = jobs          # job id -> successive answers of GET /jobs/{id}
        self.held = held          # SOP Instance UIDs the destination answers to C-FIND
        self.cancelled: list[str] = []
        self.queries: list[dict[str, Any]] = []

    def get_json(self, uri: str) -> Any:
        if uri.startswith("/jobs/"):
            job_id = uri.split("/")[2]
            if job_id not in self.jobs:
                raise HostError(uri, missing=True)
            answers = self.jobs[job_id]
            return answers.pop(0) if len(answers) > 1 else answers[0]
        if uri.startswith("/queries/"):
            wanted = self.queries[-1]["Query"]["SOPInstanceUID"].split("\\")
            return [{"SOPInstanceUID": uid} for uid in wanted if uid in self.held]
        raise AssertionError(uri)

    def post_json(self, uri: str, body: Any) -> Any:
        if uri.endswith("/cancel"):
            self.cancelled.append(uri.split("/")[2])
            return {}
        self.queries.append(body)
        return {"ID": "q1"}


def _items(job: str, count: int) -> dict[ClaimedItem, InFlight]:
    """count items the Orthanc store job `job` carried, in order."""
    return {ClaimedItem(1, f"i{job}{n}"): InFlight(job, n) for n in range(count)}


def _keys(ids: Any) -> dict[str, InstanceKeys]:
    return {iid: InstanceKeys("1.2", "1.2.3", f"sop-{iid}") for iid in ids}


def test_in_flight_items_of_a_finished_job_are_delivered_without_asking() -> None:
    fake = FakeOrthanc({"A": [{"State": "Success"}]}, set())
    verdict = InFlightVerifier(fake, _keys, lambda _: "c-find").verify("T", _items("A", 5))
    assert len(verdict.delivered) == 5 and not verdict.resend and not fake.queries


def test_a_resumed_job_is_cancelled_and_its_position_counts() -> None:
    running = {"State": "Running", "Progress": 20}
    failed = {"State": "Failure", "Progress": 40, "Content": {"InstancesCount": 5}}
    fake = FakeOrthanc({"A": [running, running, failed]}, {"sop-iA3"})
    verdict = InFlightVerifier(fake, _keys, lambda _: "c-find").verify("T", _items("A", 5))
    assert fake.cancelled == ["A"]
    # 2 confirmed by the job's position, the 4th found at the destination, the last sent again.
    assert sorted(i.instance_id for i in verdict.delivered) == ["iA0", "iA1", "iA3"]
    assert [i.instance_id for i in verdict.resend] == ["iA2", "iA4"]


def test_a_job_orthanc_forgot_is_settled_by_c_find_or_resent_by_setting() -> None:
    fake = FakeOrthanc({}, {"sop-iB0", "sop-iB2"})
    verdict = InFlightVerifier(fake, _keys, lambda _: "c-find").verify("T", _items("B", 3))
    assert sorted(i.instance_id for i in verdict.delivered) == ["iB0", "iB2"]
    assert fake.queries[0]["Level"] == "Instance"
    resend = InFlightVerifier(FakeOrthanc({}, set()), _keys, lambda _: "resend").verify(
        "T", _items("B", 3))
    assert not resend.delivered and len(resend.resend) == 3


def test_health_reports_queue_disk_and_workers_and_says_why_not(tmp_path: Path) -> None:
    import os

    from orthanc_plugin.api.health import HealthProbes, health

    db = Database(tmp_path / "h.sqlite", [META_SCHEMA, AUDIT_SCHEMA, JOBS_SCHEMA])
    JobQueue(db, POLICY)
    alive = HealthProbes(db, {"storage": tmp_path / "not-yet-created"}, 0,
                         lambda: {0: os.getpid()})
    status, report = health(alive)
    assert status == 200 and report["healthy"] and report["database_writable"]
    assert report["queue"]["pending"] == 0 and report["workers"]["0"]["alive"]
    sick = HealthProbes(db, {"storage": tmp_path}, 1 << 40, lambda: {0: os.getpid(), 1: None})
    status, report = health(sick)
    assert status == 503 and not report["healthy"]
    assert any("MB free" in p for p in report["problems"])
    assert any("worker 1 is not running" in p for p in report["problems"])
