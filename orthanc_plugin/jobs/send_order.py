"""The order instances are queued in, so that a receiver can import what each one references.

Pure. The queue's, not forwarding's: the intake queues every rule's instances in this order, and a
plan bundle is sent in it, whichever action takes them.
"""

from __future__ import annotations

from dataclasses import dataclass

# A planning system imports a plan only once what it references is there: images, then the
# structure set drawn on them, then the plan, then the dose computed for the plan.
_MODALITY_RANK = {"RTSTRUCT": 1, "RTPLAN": 2, "RTDOSE": 3, "RTIMAGE": 4, "RTRECORD": 5}


def send_rank(modality: str | None) -> int:
    return _MODALITY_RANK.get((modality or "").upper(), 0)


@dataclass(frozen=True)
class OutgoingInstance:
    instance_id: str
    modality: str = ""
    series_uid: str = ""
    instance_number: int = 0


def order_for_sending(instances: list[OutgoingInstance]) -> list[OutgoingInstance]:
    return sorted(
        instances,
        key=lambda item: (send_rank(item.modality), item.series_uid, item.instance_number),
    )
