"""The overlay executor: RTSTRUCT + its images from Orthanc -> overlay series stored and forwarded.

A job whose images are not all in Orthanc yet is postponed (the sender thread is free at once)
until the rule's wait_for_images has passed since the job was queued; then the audit says what
was missing and the job is parked. The series is stored through Orthanc's REST API (origin
"Plugins", so rules skip it unless include_gateway_output) and forwarded by queued forward jobs,
which give it the forwarder's retries, transfer rows and metrics.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from io import BytesIO

from orthanc_plugin.audit.recorder import AuditRecorder
from orthanc_plugin.contours.model import ContourError
from orthanc_plugin.contours.overlay import OverlayBuild, build_overlay_series
from orthanc_plugin.contours.rule import OverlayAction
from orthanc_plugin.contours.sources import find_images, read_instance, read_rtstruct
from orthanc_plugin.db import Database
from orthanc_plugin.jobs.executors import action_of_job, jobs_with_items
from orthanc_plugin.jobs.own_output import store_own_instance
from orthanc_plugin.jobs.queue import Claim, ClaimedItem, JobQueue, JobSpec
from orthanc_plugin.ports import Host, HostError
from orthanc_plugin.rules import RuleSet

DEFAULT_WAIT_POLL_SECONDS = 5.0


class Waiting(Exception):
    """The referenced images are not all there yet."""


class OverlayExecutor:
    max_items_per_claim = 1

    def __init__(
        self,
        host: Host,
        db: Database,
        queue: JobQueue,
        recorder: AuditRecorder,
        rules: Callable[[], RuleSet],
        wake_senders: Callable[[], None],
        wait_poll_seconds: float = DEFAULT_WAIT_POLL_SECONDS,
    ) -> None:
        self.host = host
        self.db = db
        self.queue = queue
        self.recorder = recorder
        self.rules = rules
        self.wake_senders = wake_senders
        self.wait_poll_seconds = wait_poll_seconds

    def run(self, claim: Claim) -> None:
        for job, items in jobs_with_items(claim):
            self._run_job(job, items)

    # -- one job -----------------------------------------------------------------------------------
    def _run_job(self, job: sqlite3.Row, items: list[ClaimedItem]) -> None:
        action = self._action(job)
        if action is None:
            reason = (f"rule '{job['rule']}' has no overlay action for {job['target']} any more "
                      "(rules reloaded?)")
            self._event(job, "overlay-failed", "failed", reason)
            self.queue.park(job["id"], reason, "no-action")
            return
        error: str | None = None
        for item in items:
            try:
                self._one(job, item, action)
            except Waiting as waiting:
                waited = time.time() - float(job["created_epoch"])
                if waited < action.wait_for_images_seconds:
                    if job["last_status"] != "waiting":  # one audit row per wait, not per poll
                        self._event(job, "overlay-waiting", "waiting", str(waiting), item)
                    delay = min(self.wait_poll_seconds, action.wait_for_images_seconds - waited)
                    self.queue.postpone([job["id"]], max(delay, 0.0), f"waiting: {waiting}")
                    return
                reason = f"gave up after {waited:.0f} s: {waiting}"
                self._event(job, "overlay-images-missing", "failed", reason, item)
                self._refuse(item, reason, "images-missing")
            except ContourError as problem:
                reason = str(problem)
                self._event(job, "overlay-failed", "failed", reason, item)
                with self.db.transaction() as connection:
                    self.recorder.quarantine(connection, item.instance_id,
                                             f"overlay: {reason}", detail=f"job {job['id']}")
                self._refuse(item, reason, "invalid-input")
            except HostError as problem:  # Orthanc busy or restarting: retry with backoff
                error = f"Orthanc: {problem}"
                self._event(job, "overlay-error", "retry", error, item)
                break
        outcome = self.queue.settle([job["id"]], error, "host" if error else None)
        if outcome.get(job["id"]) == "done":
            self._event(job, "overlay-done", "ok", f"{len(items)} RTSTRUCT(s)")

    def _action(self, job: sqlite3.Row) -> OverlayAction | None:
        return action_of_job(self.rules(), job, OverlayAction)

    def _one(self, job: sqlite3.Row, item: ClaimedItem, action: OverlayAction) -> None:
        modality = self.host.get_json(f"/instances/{item.instance_id}/series")[
            "MainDicomTags"].get("Modality", "")
        if modality != "RTSTRUCT":
            # A stable-study rule hands over the images too: only structure sets make overlays.
            self.queue.mark_sent([item], {})
            return
        rtstruct, structure_set = read_rtstruct(self.host, item.instance_id)
        search = find_images(self.host, structure_set, item.instance_id)
        if not search.complete:
            raise Waiting(search.waiting_for)
        started = time.perf_counter()
        images = [read_instance(self.host, iid) for iid in search.instance_ids]
        build = build_overlay_series(images, rtstruct, action.options)
        self._event(job, "overlay-built", "ok", _describe_build(build, len(images),
                                                                time.perf_counter() - started), item)
        stored, size = self._store(job, item, build)
        self.queue.mark_sent([item], {item.instance_id: size})
        self._queue_forwards(job, action, stored)

    def _store(
        self, job: sqlite3.Row, item: ClaimedItem, build: OverlayBuild
    ) -> tuple[dict[str, list[str]], int]:
        stored: dict[str, list[str]] = {}
        total = 0
        for series in build.series:
            ids: list[str] = []
            for ds in series.datasets:
                buffer = BytesIO()
                ds.save_as(buffer, enforce_file_format=True)
                data = buffer.getvalue()
                answer = store_own_instance(self.host, self.db, ds, data, "overlay")
                if not isinstance(answer, dict) or "ID" not in answer:
                    raise HostError(f"POST /instances answered {answer!r}")
                ids.append(str(answer["ID"]))
                total += len(data)
            stored[series.series_uid] = ids
            self._event(job, "overlay-stored", "ok",
                        f"{series.plane.value} series {series.series_uid}: {len(ids)} instance(s)",
                        item)
        return stored, total

    def _queue_forwards(
        self, job: sqlite3.Row, action: OverlayAction, stored: dict[str, list[str]]
    ) -> None:
        if not action.targets:
            return
        queued = []
        with self.db.transaction() as connection:
            for series_uid, ids in stored.items():
                for target in action.targets:
                    spec = JobSpec(
                        rule=job["rule"], action="forward", trigger=job["trigger"],
                        level="series", resource_id=series_uid, target=target,
                        patient_id=job["patient_id"], study_uid=job["study_uid"],
                        calling_aet=job["calling_aet"], remote_ip=job["remote_ip"],
                    )
                    forward_id, count = self.queue.enqueue(connection, spec, ids)
                    if forward_id is not None:
                        queued.append(f"job {forward_id}: {count} instance(s) to {target}")
        if queued:
            self._event(job, "overlay-forward-queued", "ok", "; ".join(queued))
            self.wake_senders()

    def _refuse(self, item: ClaimedItem, reason: str, status: str) -> None:
        self.queue.mark_refused(item, status)
        self.queue.note_refusal(item.job_id, reason, status)

    def _event(
        self, job: sqlite3.Row, event: str, status: str, detail: str,
        item: ClaimedItem | None = None,
    ) -> None:
        self.recorder.event(
            event, status=status, detail=detail, rule=job["rule"], target=job["target"],
            job_id=job["id"], resource_id=item.instance_id if item else job["resource_id"],
            patient_id=job["patient_id"] or "", study_uid=job["study_uid"] or "",
        )


def _describe_build(build: OverlayBuild, images: int, seconds: float) -> str:
    planes = ", ".join(f"{s.plane.value} ({len(s.datasets)})" for s in build.series)
    text = (
        f"{images} image(s) -> {planes}; ROIs {', '.join(build.rois) or 'none'}; "
        f"ignored {', '.join(build.ignored) or 'none'}; {seconds:.2f} s"
    )
    if build.unplaced:
        examples = "; ".join(f"{u.roi} #{u.contour_number}: {u.reason}" for u in build.unplaced[:5])
        text += f"; {len(build.unplaced)} contour(s) fit no image ({examples})"
    return text
