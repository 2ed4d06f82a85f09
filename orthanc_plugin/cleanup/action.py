"""The clean-up of Orthanc's storage, run by the lead worker: a periodic round (and a round on
request) that deletes the studies the policy and the guard let go, oldest first; and the executor
of `delete_after: forwarded`, which deletes a relay's instances once nothing still needs them.

Every deletion is re-checked against the gateway's database just before it is made, and audited
with its reason (`study-deleted`, `instances-deleted-after-forwarding`).
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from orthanc_plugin.audit.recorder import AuditRecorder
from orthanc_plugin.cleanup.model import (
    CleanupPolicy,
    StorageUse,
    StudyFacts,
    Verdict,
    by_age,
    guard,
    threshold_candidates,
)
from orthanc_plugin.cleanup.store import CleanupStore
from orthanc_plugin.jobs.queue import Claim, ClaimedItem, JobQueue
from orthanc_plugin.ports import Host, HostError

STUDIES_PAGE = 500
# A relay's instances wait this long between looks while something still needs them.
DELETE_AFTER_WAIT_SECONDS = 5.0


@dataclass(frozen=True)
class Review:
    """A dry run: the policy, the storage's state and every study's verdict, oldest first."""

    policy: CleanupPolicy
    usage: StorageUse
    over: str | None
    verdicts: list[Verdict]


@dataclass
class RoundResult:
    at: str
    deleted: list[Verdict] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    kept: int = 0
    over_after: str | None = None


class StorageCleanup:
    def __init__(self, host: Host, store: CleanupStore, recorder: AuditRecorder,
                 storage_directory: Path, log: Callable[[str], None],
                 policy: Callable[[], CleanupPolicy | None],
                 clock: Callable[[], float] = time.time) -> None:
        self.host = host
        self.store = store
        self.recorder = recorder
        self.storage_directory = storage_directory
        self.log = log
        self.clock = clock
        self._policy = policy
        self._policy_seen: CleanupPolicy | None = None
        self.last_round: RoundResult | None = None
        self._next_round_at = 0.0
        # One round at a time: the periodic one and one asked for on the page never overlap.
        self._round_lock = threading.Lock()

    # -- the policy ---------------------------------------------------------------------------
    @property
    def policy(self) -> CleanupPolicy:
        """The rules in force's `cleanup:` section, read afresh: a reload applies at once."""
        return self._policy() or CleanupPolicy()

    def tick(self) -> None:
        """Called every few seconds by the lead's loop: a round when one is due."""
        policy = self.policy
        if policy != self._policy_seen:
            # A new or changed policy deletes nothing at once: its first round comes one
            # check_every later, time enough to read its dry run (or to run it by hand).
            self._policy_seen = policy
            self._next_round_at = self.clock() + policy.check_every_minutes * 60.0
        if not policy.active or self.clock() < self._next_round_at:
            return
        self._next_round_at = self.clock() + policy.check_every_minutes * 60.0
        self.run_round()

    # -- what the storage holds ---------------------------------------------------------------
    def usage(self) -> StorageUse:
        statistics = self.host.get_json("/statistics")
        megabytes = megabytes_of(statistics, "TotalDiskSize")
        try:
            disk = shutil.disk_usage(self.storage_directory)
            return StorageUse(megabytes, 100.0 * disk.used / disk.total if disk.total else 0.0,
                              disk.total / 1048576.0)
        except OSError:
            return StorageUse(megabytes, 0.0, 0.0)

    def studies(self) -> list[StudyFacts]:
        facts: list[StudyFacts] = []
        since = 0
        while True:
            page = self.host.get_json(f"/studies?expand&since={since}&limit={STUDIES_PAGE}")
            facts.extend(self.facts(study) for study in page)
            if len(page) < STUDIES_PAGE:
                return facts
            since += len(page)

    def facts(self, study: dict[str, Any]) -> StudyFacts:
        tags = study.get("MainDicomTags") or {}
        patient = study.get("PatientMainDicomTags") or {}
        study_id = str(study["ID"])
        study_uid = str(tags.get("StudyInstanceUID", ""))
        patient_id = str(patient.get("PatientID", ""))
        arrival, needs = self.store.study_needs(study_id, study_uid, patient_id)
        blockers = [*self.store.open_jobs(study_id, study_uid), *needs]
        last = arrival.last_epoch
        if last is None and study.get("LastUpdate"):
            # Not received while the gateway kept a record: Orthanc's own time (UTC) of its last
            # change stands in for the arrival.
            try:
                last = datetime.strptime(str(study["LastUpdate"]), "%Y%m%dT%H%M%S").replace(
                    tzinfo=UTC).timestamp()
            except ValueError:
                last = None
        return StudyFacts(
            study_id=study_id, study_uid=study_uid, patient_id=patient_id,
            patient_name=str(patient.get("PatientName", "")),
            description=str(tags.get("StudyDescription", "")),
            study_date=str(tags.get("StudyDate", "")), last_arrival_epoch=last,
            blockers=tuple(blockers))

    # -- a dry run ----------------------------------------------------------------------------
    def review(self) -> Review:
        now = self.clock()
        verdicts = by_age(self.studies(), self.policy, now)
        usage = self.usage()
        over = usage.over(self.policy)
        if over:
            verdicts = self._threshold_preview(verdicts, usage, now, over)
        return Review(self.policy, usage, over, verdicts)

    def _threshold_preview(self, verdicts: list[Verdict], usage: StorageUse, now: float,
                           over: str) -> list[Verdict]:
        """Which of the oldest studies the threshold mode would take, from each one's size."""
        freed = sum(self._size_mb(v.study.study_id) for v in verdicts if v.delete)
        chosen: dict[str, Verdict] = {}
        for study in threshold_candidates(verdicts, self.policy, now):
            if usage.after_freeing(freed).over(self.policy) is None:
                break
            freed += self._size_mb(study.study_id)
            chosen[study.study_id] = Verdict(study, True, f"{over}: the oldest go first")
        return [chosen.get(v.study.study_id, v) for v in verdicts]

    def _size_mb(self, study_id: str) -> float:
        try:
            return megabytes_of(self.host.get_json(f"/studies/{study_id}/statistics"), "DiskSize")
        except HostError:
            return 0.0

    # -- a round that deletes -----------------------------------------------------------------
    def run_round(self, user: str = "") -> RoundResult:
        with self._round_lock:
            result = RoundResult(at=datetime.now(UTC).isoformat(timespec="seconds"))
            now = self.clock()
            verdicts = by_age(self.studies(), self.policy, now)
            budget = self.policy.max_deletions_per_round
            for verdict in verdicts:
                if verdict.delete and len(result.deleted) < budget:
                    self._delete_study(verdict, user, result)
            over = self.usage().over(self.policy)
            for study in threshold_candidates(verdicts, self.policy, now):
                if over is None or len(result.deleted) >= budget:
                    break
                self._delete_study(Verdict(study, True, f"{over}: the oldest go first"), user,
                                   result)
                over = self.usage().over(self.policy)
            result.over_after = over
            result.kept = len(verdicts) - len(result.deleted)
            if over:
                self.recorder.event("cleanup-still-over", status="warning", detail=(
                    f"{over} after {len(result.deleted)} deletion(s): every other study is "
                    "still needed or too recent"))
            self.last_round = result
            if result.deleted:
                self.log(f"cleanup: deleted {len(result.deleted)} study(ies) from Orthanc's "
                         "storage (audit: study-deleted)")
            return result

    def _delete_study(self, verdict: Verdict, user: str, result: RoundResult) -> None:
        study = verdict.study
        # Looked at again just before: a job queued or an instance received since the listing.
        try:
            fresh = self.facts(self.host.get_json(f"/studies/{study.study_id}"))
        except HostError as error:
            if not error.missing:
                result.failed.append(f"{study.study_id}: {error}")
            return
        blockers = guard(fresh, self.policy, self.clock())
        if blockers:
            return
        try:
            self.host.delete(f"/studies/{study.study_id}")
        except HostError as error:
            if not error.missing:
                result.failed.append(f"{study.study_id}: {error}")
                self.recorder.event("study-delete-failed", status="error", detail=str(error),
                                    resource_id=study.study_id, patient_id=study.patient_id,
                                    study_uid=study.study_uid)
            return
        result.deleted.append(verdict)
        self.recorder.event(
            "study-deleted", status="ok", resource_id=study.study_id,
            patient_id=study.patient_id, study_uid=study.study_uid,
            detail=f"{verdict.reason}" + (f"; round asked for by {user}" if user else ""))


def megabytes_of(statistics: Any, key: str) -> float:
    """Orthanc's size in MB from its exact byte count ("TotalDiskSize", as text), not its rounded
    "...MB" field: a study of 0.4 MB rounded to 0 would seem to free nothing."""
    if not isinstance(statistics, dict):
        return 0.0
    try:
        return int(str(statistics[key])) / 1048576.0
    except (KeyError, ValueError):
        return float(statistics.get(key + "MB", 0) or 0)


class DeleteAfterForwarded:
    """Runs `delete_after: forwarded` jobs: each instance leaves Orthanc once no other job still
    carries it and its study and patient need nothing more (cleanup/store.py); until then the
    job waits, shown as waiting with the reason."""

    max_items_per_claim = 500

    def __init__(self, host: Host, queue: JobQueue, store: CleanupStore,
                 recorder: AuditRecorder) -> None:
        self.host = host
        self.queue = queue
        self.store = store
        self.recorder = recorder

    def run(self, claim: Claim) -> None:
        waiting: dict[int, str] = {}
        deleted: dict[int, int] = {}
        error = ""
        for item in claim.items:
            if item.job_id in waiting:
                continue
            reasons = self.blockers(item)
            if reasons:
                waiting[item.job_id] = "; ".join(reasons)
                continue
            try:
                self.host.delete(f"/instances/{item.instance_id}")
            except HostError as problem:
                if not problem.missing:
                    error = f"Orthanc: {problem}"
                    break
                self.queue.mark_gone(item, "already deleted from Orthanc")
                continue
            self.queue.mark_sent([item], {})
            deleted[item.job_id] = deleted.get(item.job_id, 0) + 1
        ready = [job_id for job_id in claim.job_ids if job_id not in waiting]
        if ready:
            self.queue.settle(ready, error or None, "host" if error else None)
        for job_id, reason in waiting.items():
            self.queue.postpone([job_id], DELETE_AFTER_WAIT_SECONDS, f"kept: {reason}")
        for job in claim.jobs:
            if deleted.get(job.id):
                self.recorder.event(
                    "instances-deleted-after-forwarding", status="ok", rule=job.rule,
                    job_id=job.id, resource_id=job.resource_id,
                    patient_id=job.patient_id or "", study_uid=job.study_uid or "",
                    detail=f"{deleted[job.id]} instance(s) deleted from Orthanc's storage: "
                           "delivered, and nothing else needs them")

    def blockers(self, item: ClaimedItem) -> list[str]:
        reasons = self.store.instance_jobs(item.instance_id)
        study = self.store.study_of(item.instance_id)
        if study is None:
            return [*reasons, "not yet described by the gateway"]
        return reasons + self.store.study_needs(*study)[1]
