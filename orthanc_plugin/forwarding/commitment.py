"""Storage Commitment (DICOM Push Model through Orthanc's own SCU): `committed` means the receiver
took responsibility for an instance, which `sent` (its C-STORE answered success) does not.

For a modality listed in RtGateway.Forwarding.StorageCommitment.Modalities, each instance the
forwarder records as sent (or verified after a crash) is due for commitment. The lead worker's
watcher then, every CheckEverySeconds:
1. asks the receiver for the due ones (POST /modalities/{id}/storage-commitment: the N-ACTION,
   by SOP Class and SOP Instance UID, so the request does not need Orthanc to still hold them);
2. reads Orthanc's record of the receiver's answer (GET /storage-commitment/{uid}: the
   N-EVENT-REPORT the receiver sends back on an association of its own, so the receiver must
   know this Orthanc as a modality);
3. records each instance `committed`, or `not-committed` with the receiver's reason. A job with a
   not-committed instance is parked; a retry by hand sends those instances again.
No answer within TimeoutSeconds (the request refused, no report) is not-committed too: a node that
never confirms must be seen, not trusted. Orthanc keeps reports in memory only, so a report it
no longer knows (Orthanc restarted meanwhile) is asked again.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from orthanc_plugin.audit.counts import running_totals
from orthanc_plugin.audit.recorder import AuditRecorder
from orthanc_plugin.config import SECTION, ConfigError
from orthanc_plugin.db import durable_write
from orthanc_plugin.db_engine import StateDatabase
from orthanc_plugin.forwarding import store
from orthanc_plugin.forwarding.store import (
    DUE,
    FAILED,
    REQUESTED,
    CommitRequest,
    DueItem,
    ItemKey,
)
from orthanc_plugin.forwarding.verify import InstanceKeys
from orthanc_plugin.periodic import PeriodicLoop
from orthanc_plugin.ports import Host, HostError

FAILURES_NAMED_IN_AUDIT = 5
# After a refused request the target is asked again this much later, not every round: a node
# without storage commitment should not get an association every few seconds for an hour.
REQUEST_RETRY_SECONDS = 30.0


@dataclass(frozen=True)
class CommitSettings:
    modalities: frozenset[str] = frozenset()
    timeout_seconds: float = 3600.0
    check_every_seconds: float = 2.0
    batch: int = 500

    def wanted(self, target: str) -> bool:
        return target in self.modalities


def read_settings(forwarding: dict[str, Any]) -> CommitSettings:
    raw = forwarding.get("StorageCommitment") or {}
    where = f"{SECTION}.Forwarding.StorageCommitment"
    if not isinstance(raw, dict):
        raise ConfigError(f'{where}: expected {{"Modalities": [...], "TimeoutSeconds": ...}}')
    names = raw.get("Modalities", [])
    if not isinstance(names, list) or not all(isinstance(name, str) and name for name in names):
        raise ConfigError(f"{where}.Modalities: expected a list of Orthanc modality names")
    numbers: dict[str, float] = {}
    for key, default, minimum in (("TimeoutSeconds", 3600.0, 1.0),
                                  ("CheckEverySeconds", 2.0, 0.1), ("Batch", 500, 1)):
        value = raw.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
            raise ConfigError(f"{where}.{key}: expected a number >= {minimum}, got {value!r}")
        numbers[key] = float(value)
    return CommitSettings(frozenset(names), numbers["TimeoutSeconds"],
                          numbers["CheckEverySeconds"], int(numbers["Batch"]))


class CommitmentWatcher:
    def __init__(self, host: Host, db: StateDatabase, recorder: AuditRecorder,
                 settings: CommitSettings, log: Callable[[str], None],
                 keys_of: Callable[[Sequence[str]], dict[str, InstanceKeys]]) -> None:
        self.host = host
        self.keys_of = keys_of
        self.db = db
        self.recorder = recorder
        self.settings = settings
        self.log = log
        self._request_errors: dict[str, str] = {}   # target -> last refusal, said once
        self._retry_at: dict[str, float] = {}        # target -> when to ask again after one
        self.loop = PeriodicLoop("storage commitment", settings.check_every_seconds,
                                 self.round, log)

    def start(self) -> None:
        if self.settings.modalities:
            self.loop.start()

    def stop(self) -> None:
        self.loop.stop()

    # -- one round ------------------------------------------------------------------------------
    def round(self, now: float | None = None) -> None:
        """Read the reports of earlier requests first, then ask for what is newly due: a request
        and its report never fall in the same round, so a report has a round to arrive."""
        now = time.time() if now is None else now
        self._read_reports(now)
        self._request_due(now)

    def _request_due(self, now: float) -> None:
        by_target: dict[str, list[DueItem]] = defaultdict(list)
        for item in store.due_items(self.db, self.settings.batch):
            by_target[item.target].append(item)
        for target, items in by_target.items():
            self._request(target, items, now)

    def _request(self, target: str, items: list[DueItem], now: float) -> None:
        if now < self._retry_at.get(target, 0.0):
            self._expire(target, items, self._request_errors.get(target, ""), now)
            return
        uids = self._sop_uids([item.instance_id for item in items])
        known = [item for item in items if item.instance_id in uids]
        unknown = [item for item in items if item.instance_id not in uids]
        if unknown:
            self._fail(target, [(item.job_id, item.instance_id) for item in unknown],
                       "its SOP Instance UID is no longer known to the gateway", None)
        if not known:
            return
        body = {"DicomInstances": [
            {"SOPClassUID": uids[item.instance_id][0], "SOPInstanceUID": uids[item.instance_id][1]}
            for item in known]}
        try:
            answer = self.host.post_json(f"/modalities/{target}/storage-commitment", body)
            transaction = str(answer["ID"])
        except (HostError, KeyError, TypeError) as error:
            self._request_refused(target, known, str(error), now)
            return
        self._request_errors.pop(target, None)
        self._retry_at.pop(target, None)
        self._note_requested(target, transaction, known, now)

    def _request_refused(self, target: str, items: list[DueItem], error: str, now: float) -> None:
        self._retry_at[target] = now + REQUEST_RETRY_SECONDS
        if self._request_errors.get(target) != error:
            self._request_errors[target] = error
            self.recorder.event("commit-request-failed", status="failed", target=target,
                                detail=f"storage commitment request to {target} failed, asked "
                                       f"again every {REQUEST_RETRY_SECONDS:g} s until the "
                                       f"time-out: {error}")
        self._expire(target, items, error, now)

    def _expire(self, target: str, items: list[DueItem], error: str, now: float) -> None:
        expired = [(item.job_id, item.instance_id) for item in items
                   if now - (item.since or now) >= self.settings.timeout_seconds]
        if expired:
            self._fail(target, expired, f"no storage commitment from {target} within "
                       f"{self.settings.timeout_seconds:g} s: {error}", None)

    @durable_write
    def _note_requested(self, target: str, transaction: str, items: list[DueItem],
                        now: float) -> None:
        store.note_requested(self.db, target, transaction,
                             [(item.job_id, item.instance_id) for item in items], now)

    def _read_reports(self, now: float) -> None:
        for request in store.pending_requests(self.db):
            transaction, target = request.transaction_uid, request.target
            try:
                report = self.host.get_json(f"/storage-commitment/{transaction}")
            except HostError as error:
                if error.missing:
                    self._ask_again(request, "Orthanc no longer knows the report "
                                             "(restarted meanwhile): asked again")
                continue
            status = report.get("Status") if isinstance(report, dict) else None
            if status == "Pending":
                if now - request.requested_epoch >= self.settings.timeout_seconds:
                    self._settle_report(request, {}, {}, f"no storage commitment report from "
                                        f"{target} within {self.settings.timeout_seconds:g} s")
                continue
            if status not in ("Success", "Failure"):
                continue
            self._settle_report(request, _by_sop(report.get("Success")),
                                _by_sop(report.get("Failures")), "")

    def _settle_report(self, request: CommitRequest, committed: dict[str, Any],
                       failed: dict[str, Any], no_answer: str) -> None:
        transaction, target = request.transaction_uid, request.target
        items = store.requested_items(self.db, transaction)
        uids = self._sop_uids([instance_id for _, instance_id in items])
        good: list[ItemKey] = []
        bad: dict[str, list[ItemKey]] = defaultdict(list)
        for key in items:
            sop = uids.get(key[1], ("", ""))[1]
            if sop in committed:
                good.append(key)
            elif sop in failed:
                bad[_failure_text(failed[sop])].append(key)
            else:
                bad[no_answer or f"{target}'s report does not name this instance"].append(key)
        self._record_committed(transaction, good)
        if good:
            self.recorder.event("committed", status="ok", target=target,
                                job_id=good[0][0],
                                detail=f"{len(good)} of {len(items)} instance(s) committed by "
                                       f"{target} (transaction {transaction})")
        for reason, keys in bad.items():
            self._fail(target, keys, reason, transaction)

    @durable_write
    def _record_committed(self, transaction: str, keys: Sequence[ItemKey]) -> None:
        store.record_committed(self.db, transaction, keys)

    @durable_write
    def _ask_again(self, request: CommitRequest, why: str) -> None:
        transaction = request.transaction_uid
        store.ask_again(self.db, transaction)
        self.recorder.event("commit-report-lost", status="retry", target=request.target,
                            detail=f"transaction {transaction}: {why}")

    def _fail(self, target: str, keys: Sequence[ItemKey], reason: str,
              transaction: str | None) -> None:
        """Not committed: the instance is parked with the reason; its job is parked once nothing
        of it is still being sent (the forwarder's settle does it otherwise)."""
        jobs = sorted({job_id for job_id, _ in keys})
        message = f"{len(keys)} instance(s) not committed by {target}: {reason}"
        self._record_failed(keys, reason, jobs, message, transaction)
        named = ", ".join(instance_id for _, instance_id in keys[:FAILURES_NAMED_IN_AUDIT])
        for job_id in jobs:
            self.recorder.event(
                "commit-failed", status="failed", target=target, job_id=job_id,
                resource_id=keys[0][1] if len(keys) == 1 else "",
                detail=f"{message} (instances {named}{', ...' if len(keys) > 5 else ''})")

    @durable_write
    def _record_failed(self, keys: Sequence[ItemKey], reason: str, jobs: list[int],
                       message: str, transaction: str | None) -> None:
        store.record_not_committed(self.db, keys, reason, jobs, message, transaction)

    def _sop_uids(self, instance_ids: Sequence[str]) -> dict[str, tuple[str, str]]:
        """Orthanc instance ID -> (SOP Class UID, SOP Instance UID)."""
        return {instance_id: (key.sop_class_uid, key.sop_uid)
                for instance_id, key in self.keys_of(instance_ids).items()
                if key.sop_class_uid and key.sop_uid}


def _failure_text(entry: dict[str, Any]) -> str:
    reason = entry.get("FailureReason")
    code = f"0x{int(reason):04X}" if isinstance(reason, int | float) else "unknown reason"
    description = entry.get("Description") or ""
    return f"failure {code}" + (f" ({description})" if description else "")


def _by_sop(entries: Any) -> dict[str, dict[str, Any]]:
    return {str(entry.get("SOPInstanceUID")): entry for entry in entries or []
            if isinstance(entry, dict)}


def commitment_gauges(db: StateDatabase) -> dict[str, float]:
    """Instances by storage commitment state, for Prometheus (an alert on not-committed or on a
    growing waiting count). Committed is a counter: retention carries the committed items of the
    finished jobs it removes, so it never goes down (a rate() over it stays true)."""
    counts = store.commit_state_counts(db)
    return {"rtgw_instances_committed_total": running_totals(db).get("committed", 0),
            "rtgw_instances_commit_waiting": counts.get(DUE, 0) + counts.get(REQUESTED, 0),
            "rtgw_instances_not_committed": counts.get(FAILED, 0)}
