"""The overlay executor: RTSTRUCT + its images from Orthanc -> overlay series stored and forwarded.

A job whose images are not all in Orthanc yet is postponed (the sender thread is free at once)
until the rule's wait_for_images has passed since the job was queued; then the audit says what
was missing and the job is parked. The series is stored through Orthanc's REST API, noted first
as the gateway's own output (rules skip it unless include_gateway_output), and forwarded by queued
forward jobs, which give it the forwarder's retries, transfer rows and metrics. The claim loop,
refusals, quarantine and audit are the shared executor contract's (jobs/executor_base.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from io import BytesIO

from orthanc_plugin.contours.model import DEFAULT_LIMITS, ContourError, ContourLimits
from orthanc_plugin.contours.overlay import OverlayBuild, build_overlay_series
from orthanc_plugin.contours.rule import JOB_ACTION, OverlayAction
from orthanc_plugin.contours.sources import find_images, read_instance, read_rtstruct
from orthanc_plugin.forwarding.rule import JOB_ACTION as FORWARD_ACTION
from orthanc_plugin.jobs.executor_base import ItemExecutor, JobContext, Postpone, Refuse
from orthanc_plugin.jobs.follow_ups import FollowUp
from orthanc_plugin.jobs.own_output import store_own_instance
from orthanc_plugin.jobs.queue import ClaimedItem
from orthanc_plugin.jobs.records import Job
from orthanc_plugin.jobs.states import JobState
from orthanc_plugin.ports import HostError

DEFAULT_WAIT_POLL_SECONDS = 5.0


class OverlayExecutor(ItemExecutor[OverlayAction, int]):
    name = JOB_ACTION
    action_type = OverlayAction
    follow_ups_event = "forward-queued"
    max_items_per_claim = 1

    def __init__(self, context: JobContext,
                 wait_poll_seconds: float = DEFAULT_WAIT_POLL_SECONDS,
                 limits: ContourLimits = DEFAULT_LIMITS,
                 pause: Callable[[], None] = lambda: None) -> None:
        super().__init__(context)
        self.wait_poll_seconds = wait_poll_seconds
        # The site's RtGateway.Contours limits: beyond them a structure set is refused.
        self.limits = limits
        # The worker's reception gate (reception.py): the build holds between ROIs while a
        # modality's instances arrive. Nothing by default (a test's executor).
        self.pause = pause

    def step(self, job: Job, item: ClaimedItem, action: OverlayAction) -> int:
        modality = self.host.get_json(f"/instances/{item.instance_id}/series")[
            "MainDicomTags"].get("Modality", "")
        if modality != "RTSTRUCT":
            # A stable-study rule hands over the images too: only structure sets make overlays.
            return 0
        try:
            rtstruct, structure_set = read_rtstruct(self.host, item.instance_id, self.limits)
            search = find_images(self.host, structure_set, item.instance_id)
            if not search.complete:
                self._wait_or_give_up(job, item, action, search.waiting_for)
            started = time.perf_counter()
            images = [read_instance(self.host, iid) for iid in search.instance_ids]
            build = build_overlay_series(images, rtstruct, action.options,
                                         pause=self.pause, limits=self.limits)
        except ContourError as problem:
            raise Refuse(str(problem), "invalid-input", quarantine=True) from problem
        self.event(job, "overlay-built", "ok", _describe_build(
            build, len(images), time.perf_counter() - started), item)
        stored, size = self._store(job, item, build)
        self._queue_forwards(job, action, stored)
        return size

    def _wait_or_give_up(self, job: Job, item: ClaimedItem, action: OverlayAction,
                         waiting_for: str) -> None:
        waited = time.time() - job.created_epoch
        if waited < action.wait_for_images_seconds:
            if job.last_status != "waiting":  # one audit row per wait, not per poll
                self.event(job, "overlay-waiting", "waiting", waiting_for, item)
            delay = min(self.wait_poll_seconds, action.wait_for_images_seconds - waited)
            raise Postpone(delay, waiting_for)
        raise Refuse(f"gave up after {waited:.0f} s: {waiting_for}", "images-missing",
                     event="images-missing")

    def after_job(self, job: Job, action: OverlayAction,
                  done: Sequence[tuple[ClaimedItem, int]], outcome: str) -> None:
        if outcome == JobState.DONE:
            self.event(job, "overlay-done", "ok", f"{len(done)} RTSTRUCT(s)")

    def _store(
        self, job: Job, item: ClaimedItem, build: OverlayBuild
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
            self.event(job, "overlay-stored", "ok",
                        f"{series.plane.value} series {series.series_uid}: {len(ids)} instance(s)",
                        item)
        return stored, total

    def _queue_forwards(
        self, job: Job, action: OverlayAction, stored: dict[str, list[str]]
    ) -> None:
        self.follow(job, [
            FollowUp(FORWARD_ACTION, target, "series", series_uid, tuple(ids),
                     job.patient_id or "", job.study_uid or "", "{count} instance(s) to {target}")
            for series_uid, ids in stored.items() for target in action.targets])


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
