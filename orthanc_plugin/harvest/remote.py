"""Orthanc's own query/retrieve and archive calls, as the harvest uses them.

C-MOVEs run as Orthanc jobs (`"Synchronous": false`) that are then polled: the
4.0 Python plugin holds the GIL during an SDK call, and a synchronous C-MOVE would hold it while
the very instances it asked for wait on the stored-instance callback. A poll comes soon after the
start and then less and less often (at most every `poll_seconds`): a move of a small series is seen
ended within milliseconds, a move of an hour is not asked about thousands of times.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass
from typing import Any

from orthanc_plugin.ports import Host, HostError


class Interrupted(Exception):
    """The gateway is stopping: the step is left in flight and resumes at the next start."""


@dataclass(frozen=True)
class JobOutcome:
    ok: bool
    error: str | None = None


FIRST_POLL_SECONDS = 0.01
POLL_SHARE = 0.1


def poll_interval(elapsed: float, poll_seconds: float) -> float:
    """How long to wait before asking again about a job running for `elapsed` seconds: a tenth of
    that (at least FIRST_POLL_SECONDS, at most poll_seconds), so the wait after its end is small
    next to its length."""
    return min(poll_seconds, max(FIRST_POLL_SECONDS, elapsed * POLL_SHARE))


class OrthancQueryRetrieve:
    def __init__(self, host: Host, stopping: threading.Event, poll_seconds: float = 0.2,
                 job_timeout_seconds: float = 3600.0) -> None:
        self.host = host
        self.stopping = stopping
        self.poll_seconds = poll_seconds
        self.job_timeout_seconds = job_timeout_seconds
        self._own_aet: str | None = None

    def own_aet(self) -> str:
        if self._own_aet is None:
            self._own_aet = str(self.host.get_json("/system")["DicomAet"])
        return self._own_aet

    def find(self, source: str, level: str, query: dict[str, str]) -> tuple[str, list[dict[str, Any]]]:
        """One C-FIND; returns the Orthanc query id (answers can be retrieved from it) and answers."""
        answer = self.host.post_json(f"/modalities/{source}/query", {"Level": level, "Query": query})
        query_id = str(answer["ID"])
        answers = self.host.get_json(f"/queries/{query_id}/answers?expand&simplify")
        return query_id, list(answers)

    def forget(self, query_id: str) -> None:
        with contextlib.suppress(HostError):   # Orthanc drops old queries by itself anyway
            self.host.delete(f"/queries/{query_id}")

    def answer_series_uid(self, query_id: str, index: int) -> str | None:
        """The series an answer names, or None when Orthanc no longer holds the query."""
        try:
            content = self.host.get_json(f"/queries/{query_id}/answers/{index}/content?simplify")
        except HostError:
            return None
        return str(content.get("SeriesInstanceUID", "")) or None

    def retrieve(self, query_id: str, index: int) -> str:
        """Start the C-MOVE of one answer to the gateway itself; returns the Orthanc job id."""
        answer = self.host.post_json(
            f"/queries/{query_id}/answers/{index}/retrieve",
            {"TargetAet": self.own_aet(), "Synchronous": False},
        )
        return str(answer["ID"])

    def wait_job(self, job_id: str) -> JobOutcome:
        started = time.monotonic()
        deadline = started + self.job_timeout_seconds
        while True:
            job = self.host.get_json(f"/jobs/{job_id}")
            state = job.get("State")
            if state == "Success":
                return JobOutcome(True)
            if state in ("Failure", "Paused"):
                return JobOutcome(False, str(job.get("ErrorDetails") or job.get("ErrorDescription") or state))
            if time.monotonic() > deadline:
                with contextlib.suppress(HostError):
                    self.host.post_json(f"/jobs/{job_id}/cancel", {})
                return JobOutcome(False, f"job {job_id} still {state} after {self.job_timeout_seconds:.0f}s")
            if self.stopping.wait(poll_interval(time.monotonic() - started, self.poll_seconds)):
                raise Interrupted(job_id)

    def stored_series(self, series_uid: str) -> tuple[str | None, int]:
        """(Orthanc series id, instances stored) of a series in the gateway's own Orthanc."""
        found = self.host.post_json("/tools/find", {
            "Level": "Series", "Query": {"SeriesInstanceUID": series_uid}, "Expand": True})
        if not found:
            return None, 0
        series = found[0]   # expanded: the series with its instances, in one request
        return str(series["ID"]), len(series.get("Instances", []))

    def series_archive(self, orthanc_series_id: str) -> bytes:
        """One series as a ZIP (Orthanc's own layout and compression), for the patient's ZIP."""
        return self.host.get_bytes(f"/series/{orthanc_series_id}/archive")
