"""Pure forwarding logic: what a failed Orthanc store job means. (The order a plan is sent in is the
queue's: jobs/send_order.py.)"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from enum import StrEnum


class FailureKind(StrEnum):
    REFUSED = "refused"          # the receiver answered the C-STORE with a failure status
    RETRYABLE = "retryable"      # no association, dropped connection, timeout
    UNKNOWN_TARGET = "unknown-target"
    SOURCE_GONE = "source-gone"  # Orthanc answered 404: an instance, or the target, is missing
    NOT_MADE = "not-made"        # the destination's copy could not be made (transform/copy.py)


@dataclass(frozen=True)
class StoreFailure:
    kind: FailureKind
    status: str
    message: str


_DIMSE_STATUS = re.compile(r"DIMSE status (0x[0-9A-Fa-f]{4})")


def classify_failure(details: str, http_status: int | None = None) -> StoreFailure:
    match = _DIMSE_STATUS.search(details or "")
    if match:
        return StoreFailure(FailureKind.REFUSED, match.group(1).upper().replace("0X", "0x"), details)
    if http_status == 404 or "Inexistent" in (details or "") or "Unknown modality" in details:
        return StoreFailure(FailureKind.UNKNOWN_TARGET, "unknown-target", details)
    return StoreFailure(FailureKind.RETRYABLE, "network", details)


def answer_unknown(failure: StoreFailure) -> bool:
    """The instance a store failed at may be at the receiver all the same: the association was
    up and its C-STORE under way (Orthanc names the C-STORE, not the connecting) when the link
    dropped or the answer timed out. A PACS that commits after the sender's timeout holds it."""
    return failure.kind is FailureKind.RETRYABLE and "C-STORE to AET" in failure.message


MAX_EXACT_CHUNK = 40


def delivered_before_failure(progress_percent: float, chunk_size: int) -> int:
    """The position of the instance that failed a store job (Permissive false): the count of
    instances the receiver confirmed before it.

    Orthanc's job progress is position / size as a whole percent (rounded to nearest: iround, or
    truncated in other versions). Either way the error is below size / 100 instances, under 0.5
    for a size of at most 40, so rounding to the nearest whole instance gives the position
    exactly (tested for every size and position); it is no estimate. The earlier ceil() was
    wrong by one whenever Orthanc rounded up.
    """
    if chunk_size <= 0:
        return 0
    if chunk_size > MAX_EXACT_CHUNK:
        raise ValueError(f"a store job of {chunk_size} instances cannot be resolved exactly")
    position = math.floor(progress_percent * chunk_size / 100.0 + 0.5)
    return max(0, min(chunk_size, position))
