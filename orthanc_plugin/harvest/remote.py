"""Orthanc's own query/retrieve and archive calls, as the harvest uses them.

C-MOVEs and ZIP archives run as Orthanc jobs (`"Synchronous": false`) that are then polled: the
4.0 Python plugin holds the GIL during an SDK call, and a synchronous C-MOVE would hold it while
the very instances it asked for wait on the stored-instance callback.
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
        deadline = time.monotonic() + self.job_timeout_seconds
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
            if self.stopping.wait(self.poll_seconds):
                raise Interrupted(job_id)

    def stored_series(self, series_uid: str) -> tuple[str | None, int]:
        """(Orthanc series id, instances stored) of a series in the gateway's own Orthanc."""
        ids = self.host.post_json(
            "/tools/find", {"Level": "Series", "Query": {"SeriesInstanceUID": series_uid}})
        if not ids:
            return None, 0
        series = self.host.get_json(f"/series/{ids[0]}")
        return str(ids[0]), len(series.get("Instances", []))

    def archive(self, orthanc_series_ids: list[str]) -> bytes:
        answer = self.host.post_json(
            "/tools/create-archive", {"Resources": orthanc_series_ids, "Synchronous": False})
        job_id = str(answer["ID"])
        outcome = self.wait_job(job_id)
        if not outcome.ok:
            raise HostError(f"archive job {job_id}: {outcome.error}")
        return self.host.get_bytes(f"/jobs/{job_id}/archive")
