"""The destinations' policies applied inside each claim (JobQueue.claim): a destination outside
its windows, at its association cap or at its pace is not claimed for now; its ready jobs wait
with the reason, and are looked at again when that can change.

Everything is counted from the shared database inside the claim's transaction, so the caps hold
across every worker process.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from orthanc_plugin.db_engine import DbConnection
from orthanc_plugin.destinations.model import DestinationPolicy, window_state
from orthanc_plugin.jobs.queue import Admission, JobQueue

# The wall clock windows are read on; a test sets it (a clock the test controls).
CLOCK: Callable[[], float] = time.time
RATE_WINDOW_SECONDS = 60.0
# Longest wait before a held destination is looked at again (a clock change, a reload).
MAX_WAIT_SECONDS = 30.0
BUSY_WAIT_SECONDS = 0.5


class DestinationAdmission:
    def __init__(self, queue: JobQueue,
                 policies: Callable[[], Mapping[str, DestinationPolicy]]) -> None:
        self.queue = queue
        self.policies = policies

    def __call__(self, connection: DbConnection, action: str, target: str,
                 now: float) -> Admission:
        policy = self.policies().get(target)
        if policy is None:
            return Admission()
        state = window_state(policy.windows, policy.local(CLOCK()))
        if not state.open:
            opens = state.changes_at
            wait = MAX_WAIT_SECONDS if opens is None else min(
                MAX_WAIT_SECONDS, max(0.5, opens.timestamp() - CLOCK()))
            return Admission(False, wait_seconds=wait, status="window", reason=(
                f"waiting for {target}'s time window ({', '.join(w.text for w in policy.windows)})"
                + (f": opens {opens:%a %H:%M}" if opens else "")))
        claims, claimed_items = self.queue.in_claims(connection, target)
        if policy.max_associations is not None and claims >= policy.max_associations:
            return Admission(False, wait_seconds=BUSY_WAIT_SECONDS, status="busy", reason=(
                f"{target} takes {policy.max_associations} association(s) at a time"))
        if policy.max_instances_per_minute is None and policy.max_mb_per_minute is None:
            return Admission()
        sent, sent_bytes, frees_at = self.queue.sent_within(connection, target,
                                                           RATE_WINDOW_SECONDS)
        wait = max(0.2, (frees_at or now + 1.0) - now)
        if policy.max_mb_per_minute is not None and sent_bytes >= policy.max_mb_per_minute * 1e6:
            return Admission(False, wait_seconds=wait, status="paced", reason=(
                f"{target} takes {policy.max_mb_per_minute:g} MB per minute"))
        if policy.max_instances_per_minute is None:
            return Admission()
        # What is held by running claims counts too: they may deliver it within the minute.
        budget = policy.max_instances_per_minute - sent - claimed_items
        if budget <= 0:
            return Admission(False, wait_seconds=wait, status="paced", reason=(
                f"{target} takes {policy.max_instances_per_minute} instances per minute"))
        return Admission(max_items=budget)
