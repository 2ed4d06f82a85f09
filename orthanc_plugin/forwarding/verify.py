"""What the receiver already holds, asked before anything that was in flight is sent again.

An instance is "in flight" from the moment an Orthanc store job carries it until the gateway has
recorded the receiver's answer. A worker that stops or dies in between leaves it in flight. The
next claim asks, in this order:
1. Orthanc's store job itself: finished with success means delivered; still running (Orthanc's
   `SaveJobs` resumed it after a restart) is cancelled first, so it cannot add a copy, and its
   position then tells which were confirmed;
2. when Orthanc no longer knows the job (restarted without `SaveJobs`), the destination, by a
   C-FIND at IMAGE level for those SOP Instance UIDs (the modality's `Verify` setting: `c-find`,
   the default, or `resend` for a node that answers no C-FIND);
and only what no one can vouch for is sent again.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from orthanc_plugin.forwarding.model import delivered_before_failure
from orthanc_plugin.forwarding.store import InFlight
from orthanc_plugin.forwarding.stow import StowClient
from orthanc_plugin.jobs.queue import ClaimedItem
from orthanc_plugin.ports import Host, HostError

ACTIVE_STATES = ("Pending", "Running", "Retry", "Paused")
CANCEL_WAIT_SECONDS = 30.0
UIDS_PER_QUERY = 40


@dataclass(frozen=True)
class InstanceKeys:
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str = ""


@dataclass
class Verdict:
    delivered: list[ClaimedItem]
    resend: list[ClaimedItem]
    how: str


class InFlightVerifier:
    def __init__(self, host: Host, keys_of: Callable[[Sequence[str]], dict[str, InstanceKeys]],
                 verify_mode: Callable[[str], str], stow: StowClient | None = None) -> None:
        self.host = host
        self.keys_of = keys_of
        self.verify_mode = verify_mode
        # DICOMweb destinations are asked by QIDO-RS instead of C-FIND.
        self.stow = stow

    def verify(self, target: str, items: Mapping[ClaimedItem, InFlight]) -> Verdict:
        """items: each uncertain item with the store job that carried it and its place there."""
        by_job: dict[str, list[ClaimedItem]] = defaultdict(list)
        for item, flight in items.items():
            by_job[flight.orthanc_job].append(item)
        delivered: list[ClaimedItem] = []
        unknown: list[ClaimedItem] = []
        hows: list[str] = []
        for orthanc_job, group in by_job.items():
            outcome = self._job_outcome(orthanc_job,
                                        max(items[item].position for item in group) + 1)
            if outcome is None:
                unknown.extend(group)
                continue
            confirmed = outcome
            delivered.extend(item for item in group if items[item].position < confirmed)
            unknown.extend(item for item in group if items[item].position >= confirmed)
            hows.append(f"Orthanc job {orthanc_job}: {confirmed} confirmed")
        asked = "QIDO-RS" if self.stow is not None and self.stow.serves(target) else "C-FIND"
        if unknown and self.verify_mode(target) == "c-find":
            found = self._held_by(target, unknown)
            if found is not None:
                hows.append(f"{asked} at {target}: {len(found)} of {len(unknown)} held")
                delivered.extend(item for item in unknown if item.instance_id in found)
                unknown = [item for item in unknown if item.instance_id not in found]
            else:
                hows.append(f"{asked} at {target} failed: {len(unknown)} sent again")
        elif unknown:
            hows.append(f"{len(unknown)} sent again (Verify: resend)")
        return Verdict(delivered, unknown, "; ".join(hows))

    def _job_outcome(self, orthanc_job: str, size: int) -> int | None:
        """How many of the job's instances the receiver confirmed, or None when Orthanc no longer
        knows the job."""
        try:
            job = self.host.get_json(f"/jobs/{orthanc_job}")
            if job.get("State") in ACTIVE_STATES:
                self.host.post_json(f"/jobs/{orthanc_job}/cancel", {})
                deadline = time.monotonic() + CANCEL_WAIT_SECONDS
                while job.get("State") in ACTIVE_STATES and time.monotonic() < deadline:
                    time.sleep(0.05)
                    job = self.host.get_json(f"/jobs/{orthanc_job}")
        except HostError:
            return None
        state = job.get("State")
        if state == "Success":
            return size
        if state == "Failure":
            total = int(job.get("Content", {}).get("InstancesCount", size) or size)
            return delivered_before_failure(float(job.get("Progress", 0)), min(total, 40))
        return None

    def _held_by(self, target: str, items: Sequence[ClaimedItem]) -> set[str] | None:
        """Orthanc IDs of the items the destination reports holding; None when it cannot say."""
        keys = self.keys_of([item.instance_id for item in items])
        wanted: dict[tuple[str, str], dict[str, str]] = defaultdict(dict)
        for item in items:
            key = keys.get(item.instance_id)
            if key is None or not key.sop_uid:
                return None
            wanted[(key.study_uid, key.series_uid)][key.sop_uid] = item.instance_id
        held: set[str] = set()
        if self.stow is not None and self.stow.serves(target):
            for (study_uid, series_uid), by_sop in wanted.items():
                present = self.stow.held(target, study_uid, series_uid)
                if present is None:
                    return None
                held.update(by_sop[uid] for uid in present if uid in by_sop)
            return held
        for (study_uid, series_uid), by_sop in wanted.items():
            sops = list(by_sop)
            for start in range(0, len(sops), UIDS_PER_QUERY):
                batch = sops[start : start + UIDS_PER_QUERY]
                answers = self._find(target, study_uid, series_uid, batch)
                if answers is None:
                    return None
                held.update(by_sop[uid] for uid in answers if uid in by_sop)
        return held

    def _find(self, target: str, study_uid: str, series_uid: str, sops: list[str]
              ) -> set[str] | None:
        query = {"Level": "Instance", "Query": {
            "StudyInstanceUID": study_uid, "SeriesInstanceUID": series_uid,
            "SOPInstanceUID": "\\".join(sops)}}
        try:
            answer = self.host.post_json(f"/modalities/{target}/query", query)
            query_id = answer["ID"]
            contents = self.host.get_json(f"/queries/{query_id}/answers?expand&simplify")
        except (HostError, KeyError, TypeError):
            return None
        found: set[str] = set()
        for content in contents or []:
            value = content.get("SOPInstanceUID") if isinstance(content, dict) else None
            if isinstance(value, str):
                found.add(value)
        return found
