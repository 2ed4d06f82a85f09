"""The forward action: send claimed instances through Orthanc's own SCU, record every outcome."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from orthanc_plugin.audit.recorder import AuditRecorder
from orthanc_plugin.db_engine import DbConnection
from orthanc_plugin.forwarding import store
from orthanc_plugin.forwarding.model import (
    FailureKind,
    StoreFailure,
    answer_unknown,
    classify_failure,
    delivered_before_failure,
)
from orthanc_plugin.forwarding.store import JobStudy
from orthanc_plugin.forwarding.stow import StowClient, StowError, sop_instance_uid
from orthanc_plugin.forwarding.verify import InFlightVerifier
from orthanc_plugin.jobs.queue import Claim, ClaimedItem, JobQueue
from orthanc_plugin.jobs.records import Job
from orthanc_plugin.ports import Host, HostError
from orthanc_plugin.transform.copy import CopyMaker, CopyRefused, MadeCopy
from orthanc_plugin.transform.record import CopyRecorder
from orthanc_plugin.transform.resolve import CopySpecs
from orthanc_plugin.transform.spec import CopySpec

# A store job cannot be done before its bytes have crossed: the first poll waits for them at a
# rate no sender here beats (measured: about 135 MB/s for 512x512 CT on these machines), then
# polls come every 10-15 ms, so the end of a job is seen within a few ms and each poll (a REST
# call Orthanc answers) is not spent asking too early.
POLL_SECONDS = 0.01
POLL_MAX_SECONDS = 0.015
FASTEST_SEND_BYTES_PER_SECOND = 400e6


@dataclass
class _JobTally:
    sent: int = 0
    bytes: int = 0
    refused: int = 0
    error: str | None = None
    orthanc_job: str | None = None
    started_at: str = ""
    failure: StoreFailure | None = None
    refusals: list[str] = field(default_factory=list)


class Forwarder:
    def __init__(
        self,
        host: Host,
        queue: JobQueue,
        recorder: AuditRecorder,
        file_sizes: Callable[[Sequence[str]], dict[str, int]],
        max_per_association: int,
        verifier: InFlightVerifier | None = None,
        copies: CopyMaker | None = None,
        copy_specs: CopySpecs | None = None,
        copy_record: CopyRecorder | None = None,
        stow: StowClient | None = None,
        *,
        after_settle: Callable[[], None] = lambda: None,
        stopping: threading.Event | None = None,
        label_study: Callable[[JobStudy, str, int], None] = lambda job, state, sent: None,
        commit_wanted: Callable[[str], bool] = lambda target: False,
    ) -> None:
        self.host = host
        # A destination (or rule) that wants its own copy (transform/): each instance is made by
        # the worker and sent on its own with Orthanc's store-straight.
        self.copies = copies
        self.copy_specs = copy_specs
        self.copy_record = copy_record
        # DICOMweb destinations (Orthanc's DicomWeb.Servers): STOW-RS by the worker.
        self.stow = stow
        self.verifier = verifier
        self.queue = queue
        self.recorder = recorder
        self.file_sizes = file_sizes
        self.max_per_association = max_per_association
        self.max_items_per_claim = max_per_association * 5
        # The gateway's: refreshes the queue gauges once jobs change state.
        self.after_settle = after_settle
        # The gateway's: a stop ends a claim at the next association boundary, so nothing in
        # flight is cut (a cut chunk would be sent again after the restart). None (a test's
        # forwarder): never stopped.
        self.stopping = stopping if stopping is not None else threading.Event()
        # Labels the job's study by its outcome (Orthanc 1.12+).
        self.label_study = label_study
        # Targets whose receiver is asked for storage commitment.
        self.commit_wanted = commit_wanted

    # -- forwarding's records of the items, with the queue's -------------------------------------
    def _mark_sent(self, items: Sequence[ClaimedItem], sizes: dict[str, int],
                   status: str | None = None, commit_target: str | None = None) -> None:
        """Delivered, in one transaction with what forwarding keeps of them: no longer in flight,
        and due for storage commitment when the target gives it."""
        since = (time.time() if commit_target is not None and self.commit_wanted(commit_target)
                 else None)
        self.queue.mark_sent(items, sizes, status,
                             also=lambda connection, sent: store.note_delivered(
                                 connection, sent, since))

    def _mark_in_flight(self, items: Sequence[ClaimedItem], orthanc_job: str) -> None:
        """An Orthanc store job now carries these items, in this order."""
        def write() -> None:
            with self.queue.db.transaction() as connection:
                store.mark_in_flight(connection, items, orthanc_job, time.time())
                self.queue.note_orthanc_job(connection, [item.job_id for item in items],
                                            orthanc_job)
        self.queue.db.durable(write, "noting what a store job carries")

    def _clear_in_flight(self, items: Sequence[ClaimedItem]) -> None:
        """The receiver's answer for these is known: not delivered, to be sent again."""
        def write() -> None:
            with self.queue.db.transaction() as connection:
                store.clear_in_flight(connection, items)
        self.queue.db.durable(write, "clearing what a store job carried")

    def run(self, claim: Claim) -> None:
        started = self.recorder.now()
        tallies = {job_id: _JobTally(started_at=started) for job_id in claim.job_ids}
        specs = self._copy_specs(claim)
        sizes = self.file_sizes([item.instance_id for item in claim.items])
        remaining = self._after_verifying(claim, tallies, sizes)
        stop_failure: StoreFailure | None = None
        interrupted = yielded = False
        while remaining:
            if self.stopping.is_set():
                interrupted = True
                break
            chunk = remaining[: self.max_per_association]
            if self.stow is not None and self.stow.serves(claim.target):
                failure = self._stow_chunk(claim, chunk, specs, sizes, tallies)
                if failure is None:
                    remaining = remaining[len(chunk):]
                    continue
                stop_failure = failure
                for item in remaining:
                    tallies[item.job_id].failure = failure
                break
            if specs:
                delivered, failure, orthanc_job = self._send_copies(claim, chunk, specs)
            else:
                delivered, failure, orthanc_job = self._send_chunk(
                    claim.target, chunk, sum(sizes.get(item.instance_id, 0) for item in chunk))
            self._mark_sent(chunk[:delivered], sizes, commit_target=claim.target)
            # The instance whose answer never came stays in flight: the next attempt asks the
            # receiver (C-FIND) before sending it again, as after a crash.
            unanswered = 1 if failure is not None and answer_unknown(failure) else 0
            self._clear_in_flight(chunk[delivered + unanswered:])
            for item in chunk[:delivered]:
                tally = tallies[item.job_id]
                tally.sent += 1
                tally.bytes += sizes.get(item.instance_id, 0)
            for item in chunk:
                tallies[item.job_id].orthanc_job = orthanc_job
            if failure is not None and failure.kind is FailureKind.SOURCE_GONE:
                gone = self._skip_gone(claim, chunk[delivered:], tallies)
                if gone:
                    remaining = [item for item in remaining[delivered:] if item not in gone]
                    continue
                failure = StoreFailure(FailureKind.UNKNOWN_TARGET, "unknown-target",
                                       failure.message)
            if failure is None:
                remaining = remaining[len(chunk):]
                if remaining and self.queue.outranked(claim):
                    # Between associations: a higher-priority job for this destination goes
                    # first; what remains here waits for the next claim, no attempt spent.
                    yielded = True
                    break
                continue
            if failure.kind in (FailureKind.REFUSED, FailureKind.NOT_MADE):
                # Park only the refused instance; the rest of the queue goes on.
                bad = chunk[delivered]
                self._park_refused(claim.target, bad, failure, tallies[bad.job_id])
                remaining = remaining[delivered + 1:]
                continue
            stop_failure = failure
            for item in remaining[delivered:]:
                tallies[item.job_id].failure = failure
            break
        self._settle(claim, tallies, stop_failure,
                     "yielded" if yielded else "paced" if claim.partial else "")
        if interrupted:
            self.queue.resume_soon(claim.job_ids, "interrupted by a stop of the gateway")

    def _copy_specs(self, claim: Claim) -> dict[int, CopySpec]:
        """The copy each job sends; {} when every job sends the instances as stored (then the
        claim goes the fast way, through Orthanc's store jobs)."""
        if self.copies is None or self.copy_specs is None:
            return {}
        specs = {job.id: self.copy_specs.for_job(job, claim.target) for job in claim.jobs}
        return specs if any(specs.values()) else {}

    def _send_copies(
        self, claim: Claim, chunk: Sequence[ClaimedItem], specs: dict[int, CopySpec]
    ) -> tuple[int, StoreFailure | None, str | None]:
        """Each instance of the chunk made into the destination's copy and stored by Orthanc's
        store-straight, in order; stops at the first that fails, as a store job would. In flight
        under a label Orthanc does not know: after a crash the receiver is asked (C-FIND)."""
        assert self.copies is not None
        label = f"copy-{uuid.uuid4().hex[:12]}"
        self._mark_in_flight(chunk, label)
        made_list: list[tuple[ClaimedItem, MadeCopy]] = []
        failure: StoreFailure | None = None
        for item in chunk:
            try:
                made = self.copies.make(item.instance_id, specs[item.job_id])
            except CopyRefused as refusal:
                failure = StoreFailure(FailureKind.NOT_MADE, "not-made", str(refusal))
                break
            except HostError as error:
                failure = (StoreFailure(FailureKind.SOURCE_GONE, "missing", str(error))
                           if error.missing else classify_failure(str(error)))
                break
            try:
                self.host.post_bytes(f"/modalities/{claim.target}/store-straight", made.data)
            except HostError as error:
                # The copy was just read: a 404 here is the destination, not the instance.
                failure = (StoreFailure(FailureKind.UNKNOWN_TARGET, "unknown-target", str(error))
                           if error.missing else classify_failure(str(error)))
                break
            made_list.append((item, made))
        if self.copy_record is not None and made_list:
            self.copy_record.sent(claim, made_list)
        return len(made_list), failure, label

    def _stow_chunk(
        self, claim: Claim, chunk: Sequence[ClaimedItem], specs: dict[int, CopySpec],
        sizes: dict[str, int], tallies: dict[int, _JobTally],
    ) -> StoreFailure | None:
        """One STOW-RS request for the chunk; each instance's outcome from the response: stored
        ones recorded sent, refused ones parked with the server's reason, the rest go on. A
        failure of the request as a whole is returned (nothing of the chunk recorded sent)."""
        assert self.stow is not None
        label = f"stow-{uuid.uuid4().hex[:12]}"
        self._mark_in_flight(chunk, label)
        parts: list[tuple[ClaimedItem, bytes, str]] = []
        made_list: list[tuple[ClaimedItem, MadeCopy]] = []
        for item in chunk:
            spec = specs.get(item.job_id)
            try:
                if spec and self.copies is not None:
                    made = self.copies.make(item.instance_id, spec)
                    made_list.append((item, made))
                    data = made.data
                else:
                    data = self.host.get_bytes(f"/instances/{item.instance_id}/file")
            except CopyRefused as refusal:
                self._park_refused(claim.target, item, StoreFailure(
                    FailureKind.NOT_MADE, "not-made", str(refusal)), tallies[item.job_id])
                continue
            except HostError as error:
                if not error.missing:
                    self._clear_in_flight(chunk)
                    return classify_failure(str(error))
                self._skip_gone(claim, [item], tallies)
                continue
            parts.append((item, data, sop_instance_uid(data)))
        if not parts:
            return None
        try:
            outcome = self.stow.store(claim.target, [data for _, data, _ in parts])
        except StowError as error:
            self._clear_in_flight([item for item, _, _ in parts])
            return StoreFailure(FailureKind.RETRYABLE if error.retryable
                                else FailureKind.UNKNOWN_TARGET, "stow-rs", str(error))
        stored = [item for item, _, uid in parts if uid in outcome.stored]
        self._mark_sent(stored, sizes)
        for item in stored:
            tallies[item.job_id].sent += 1
            tallies[item.job_id].bytes += sizes.get(item.instance_id, 0)
            tallies[item.job_id].orthanc_job = label
        unanswered = []
        for item, _, uid in parts:
            if uid in outcome.refused:
                self._park_refused(claim.target, item, StoreFailure(
                    FailureKind.NOT_MADE, "stow-refused",
                    f"STOW-RS refused by {claim.target}: {outcome.refused[uid]}"),
                    tallies[item.job_id])
            elif uid not in outcome.stored:
                unanswered.append(item)
        if self.copy_record is not None and made_list:
            done = {item.instance_id for item in stored}
            self.copy_record.sent(claim, [pair for pair in made_list
                                          if pair[0].instance_id in done])
        if unanswered:
            self._clear_in_flight(unanswered)
            return StoreFailure(FailureKind.RETRYABLE, "stow-rs",
                                f"STOW-RS to {claim.target}: {len(unanswered)} instance(s) "
                                "neither stored nor refused in the response")
        return None

    def _after_verifying(
        self, claim: Claim, tallies: dict[int, _JobTally], sizes: dict[str, int]
    ) -> list[ClaimedItem]:
        """Items left in flight by a stopped or dead worker: what the receiver confirmed is
        recorded as sent and left out; the rest is sent again (verify.py)."""
        flights = store.in_flight_of(self.queue.db, claim.items)
        uncertain = [item for item in claim.items if item in flights]
        if not uncertain or self.verifier is None:
            return list(claim.items)
        verdict = self.verifier.verify(claim.target, {item: flights[item] for item in uncertain})
        self._mark_sent(verdict.delivered, sizes, status="verified", commit_target=claim.target)
        self._clear_in_flight(verdict.resend)
        for item in verdict.delivered:
            tallies[item.job_id].sent += 1
            tallies[item.job_id].bytes += sizes.get(item.instance_id, 0)
        self.recorder.event(
            "in-flight-verified", status="ok", target=claim.target,
            job_id=claim.job_ids[0],
            detail=f"{len(verdict.delivered)} of {len(uncertain)} already at {claim.target}, "
                   f"{len(verdict.resend)} sent again ({verdict.how})")
        done = {(item.job_id, item.instance_id) for item in verdict.delivered}
        return [item for item in claim.items if (item.job_id, item.instance_id) not in done]

    def _skip_gone(
        self, claim: Claim, chunk: Sequence[ClaimedItem], tallies: dict[int, _JobTally]
    ) -> list[ClaimedItem]:
        """Orthanc answered 404 to the store: the instances deleted meanwhile are skipped, each
        with an audit line; the others go on. None gone means the target itself is unknown."""
        gone = []
        for item in chunk:
            try:
                self.host.get_json(f"/instances/{item.instance_id}")
            except HostError as error:
                if error.missing:
                    gone.append(item)
        for item in gone:
            reason = "source instance deleted from Orthanc before it was sent"
            self.queue.mark_gone(item, reason, also=store.clear_in_flight)
            self.recorder.event("source-gone", status="skipped", target=claim.target,
                                job_id=item.job_id, resource_id=item.instance_id, detail=reason)
        return gone

    def _send_chunk(
        self, target: str, chunk: Sequence[ClaimedItem], chunk_bytes: int = 0
    ) -> tuple[int, StoreFailure | None, str | None]:
        body = {
            "Resources": [item.instance_id for item in chunk],
            "Synchronous": False,
            "Permissive": False,
        }
        try:
            answer = self.host.post_json(f"/modalities/{target}/store", body)
        except HostError as error:
            if error.missing:  # an instance or the modality: _skip_gone tells which
                return 0, StoreFailure(FailureKind.SOURCE_GONE, "missing", str(error)), None
            return 0, classify_failure(str(error), None), None
        orthanc_job = str(answer["ID"])
        self._mark_in_flight(chunk, orthanc_job)
        time.sleep(chunk_bytes / FASTEST_SEND_BYTES_PER_SECOND)
        poll = POLL_SECONDS
        while True:
            try:
                job = self.host.get_json(f"/jobs/{orthanc_job}")
            except HostError as error:
                return 0, classify_failure(str(error)), orthanc_job
            state = job.get("State")
            if state == "Success":
                return len(chunk), None, orthanc_job
            if state in ("Failure", "Paused"):
                details = job.get("ErrorDetails") or job.get("ErrorDescription") or state
                delivered = delivered_before_failure(float(job.get("Progress", 0)), len(chunk))
                return delivered, classify_failure(str(details)), orthanc_job
            time.sleep(poll)
            poll = min(poll * 1.5, POLL_MAX_SECONDS)

    def _park_refused(
        self, target: str, item: ClaimedItem, failure: StoreFailure, tally: _JobTally
    ) -> None:
        message = (
            failure.message + f" (instance {item.instance_id})"
            if failure.status == "stow-refused" else
            f"not sent to {target}: {failure.message} (instance {item.instance_id})"
            if failure.kind is FailureKind.NOT_MADE else
            f"C-STORE refused by {target} with status {failure.status} "
            f"for instance {item.instance_id}"
        )
        if (failure.kind is FailureKind.NOT_MADE and failure.status == "not-made"
                and self.copy_record is not None):
            self.copy_record.not_made(item, target, failure.message)
        tally.refused += 1
        tally.refusals.append(message)
        self.queue.mark_refused(item, failure.status, also=store.clear_in_flight)
        self.queue.note_refusal(item.job_id, message, failure.status)

    def _settle(
        self, claim: Claim, tallies: dict[int, _JobTally], stop_failure: StoreFailure | None,
        unfinished: str = "",
    ) -> None:
        error = stop_failure.message if stop_failure else None
        status = stop_failure.status if stop_failure else None
        if stop_failure and stop_failure.kind is FailureKind.UNKNOWN_TARGET:
            # Retrying cannot create a modality: park at once with the reason.
            for job_id in claim.job_ids:
                self.queue.policy_exhaust(job_id)
        jobs = {job.id: job for job in claim.jobs}
        written: dict[int, list[int]] = {}

        def write_transfers(connection: DbConnection, _: object) -> None:
            written.clear()  # a full disk makes the whole settle run again
            for job_id, tally in tallies.items():
                written[job_id] = self._write_transfers(connection, jobs[job_id], tally)

        outcome = self.queue.settle(claim.job_ids, error, status, unfinished=unfinished,
                                    with_outcome=write_transfers)
        self.after_settle()
        for job_id, transfer_ids in written.items():
            for transfer_id in transfer_ids:
                self.recorder.log_transfer(transfer_id, outcome.get(job_id, ""))
        # Labels last: a REST call per study (Orthanc 1.12), which made every later job's rows
        # wait behind it while the jobs already showed as done.
        for job_id, tally in tallies.items():
            self.label_study(JobStudy.of(jobs[job_id]), outcome.get(job_id, ""), tally.sent)

    def _write_transfers(self, connection: DbConnection, job: Job,
                         tally: _JobTally) -> list[int]:
        """The attempt's rows, in the settle's transaction with the deliveries they count: a success row
        for every delivery of the job not counted yet (this attempt's, and those a dead worker
        established or a restart verified), and a refused or failed row for what went wrong.
        Each delivered instance is so counted by exactly one success row."""
        if tally.refused:
            problem: tuple[str, str] | None = ("refused", "; ".join(tally.refusals))
        elif tally.failure is not None:
            problem = ("failed", tally.failure.message)
        else:
            problem = None
        written: list[int] = []
        delivered, delivered_bytes = self.queue.take_unreported(connection, job.id)
        common: dict[str, Any] = {"job": job, "attempt": job.attempts + 1,
                                  "started_at": tally.started_at,
                                  "orthanc_job": tally.orthanc_job,
                                  "writer": self.queue.claimant}
        if delivered or problem is None:
            written.append(self.recorder.insert_transfer(
                connection, status="success", instances=delivered,
                bytes_sent=delivered_bytes, error=None, **common))
        if problem is not None:
            written.append(self.recorder.insert_transfer(
                connection, status=problem[0], instances=0, bytes_sent=0, error=problem[1],
                **common))
        return written
