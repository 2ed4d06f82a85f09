"""Plan bundles from the references inside the objects, whatever order they arrive in. Pure.

A bundle is keyed by its RTPLAN:

    RTPLAN  --ReferencedStructureSetSequence-->  RTSTRUCT
    RTSTRUCT --ReferencedFrameOfReferenceSequence / ContourImageSequence-->  images (CT, MR, ...)
    RTDOSE  --ReferencedRTPlanSequence-->  RTPLAN

Timing, studies and series play no part: an adaptive plan stored in its own study still finds the
structure set and the CT of the first study through their SOP Instance UIDs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from orthanc_plugin.jobs.send_order import OutgoingInstance, order_for_sending

RT_MODALITIES = ("RTSTRUCT", "RTPLAN", "RTDOSE")


@dataclass(frozen=True)
class RtObject:
    """An RT object as far as bundles care: who it is and whose SOP Instance UIDs it names."""

    sop_instance_uid: str
    modality: str
    references: tuple[str, ...] = ()   # RTPLAN: structure set(s); RTSTRUCT: images; RTDOSE: plan(s)
    plan_label: str = ""
    dose_summation: str = ""           # RTDOSE: PLAN, BEAM, FRACTION, ...
    beam_count: int = 0                # RTPLAN: beams of its fraction groups


@dataclass(frozen=True)
class StoredInstance:
    """Any stored instance a bundle may contain (images included), with what ordering needs."""

    instance_id: str
    sop_instance_uid: str
    modality: str
    series_uid: str = ""
    instance_number: int = 0


@dataclass(frozen=True)
class Bundle:
    plan_uid: str
    plan_label: str
    structure_set_uid: str                  # "" when the plan names none
    image_uids: tuple[str, ...]             # what the structure set references (once it is known)
    dose_uids: tuple[str, ...]              # stored doses that reference the plan
    members: tuple[StoredInstance, ...]     # what is stored, in sending order
    missing: tuple[str, ...] = field(default=())

    @property
    def complete(self) -> bool:
        return not self.missing

    @property
    def instance_ids(self) -> tuple[str, ...]:
        return tuple(member.instance_id for member in self.members)


def build_bundles(
    objects: Iterable[RtObject],
    stored: Mapping[str, StoredInstance],
    expected_doses: int = 1,
) -> list[Bundle]:
    """One bundle per stored RTPLAN.

    `objects` are the RT objects known (stored); `stored` maps SOP Instance UID -> stored instance
    for every object the bundles may name (images included). A referenced UID missing from
    `stored` is missing from the bundle.
    """
    by_uid = {item.sop_instance_uid: item for item in objects}
    doses_of: dict[str, list[str]] = {}
    for item in by_uid.values():
        if item.modality == "RTDOSE":
            for plan_uid in item.references:
                doses_of.setdefault(plan_uid, []).append(item.sop_instance_uid)
    bundles = []
    for plan in sorted(
        (item for item in by_uid.values() if item.modality == "RTPLAN"),
        key=lambda item: item.sop_instance_uid,
    ):
        bundles.append(_bundle(plan, by_uid, stored, sorted(doses_of.get(plan.sop_instance_uid, [])),
                               expected_doses))
    return bundles


def _bundle(
    plan: RtObject,
    by_uid: Mapping[str, RtObject],
    stored: Mapping[str, StoredInstance],
    dose_uids: list[str],
    expected_doses: int,
) -> Bundle:
    missing: list[str] = []
    structure_set_uid = plan.references[0] if plan.references else ""
    structure_set = by_uid.get(structure_set_uid) if structure_set_uid else None
    image_uids: tuple[str, ...] = ()
    if not structure_set_uid:
        missing.append("RTSTRUCT (the plan references no structure set)")
    elif structure_set is None or structure_set_uid not in stored:
        missing.append(f"RTSTRUCT {structure_set_uid}")
    else:
        image_uids = tuple(dict.fromkeys(structure_set.references))
        absent = [uid for uid in image_uids if uid not in stored]
        if absent:
            missing.append(f"{len(absent)} of {len(image_uids)} referenced images "
                           f"(first {absent[0]})")
    present_doses = [uid for uid in dose_uids if uid in stored]
    summations = {by_uid[uid].dose_summation.upper() for uid in present_doses if uid in by_uid}
    if summations and "PLAN" not in summations and "BEAM" in summations and plan.beam_count:
        # Per-beam doses: the plan's dose is their sum, so every beam's is expected.
        if len(present_doses) < plan.beam_count:
            missing.append(f"RTDOSE ({len(present_doses)} of {plan.beam_count} per-beam doses)")
    elif len(present_doses) < expected_doses:
        missing.append(f"RTDOSE ({len(present_doses)} of {expected_doses} expected)")
    wanted = [*image_uids, structure_set_uid, plan.sop_instance_uid, *present_doses]
    members = [stored[uid] for uid in dict.fromkeys(wanted) if uid and uid in stored]
    return Bundle(
        plan_uid=plan.sop_instance_uid,
        plan_label=plan.plan_label,
        structure_set_uid=structure_set_uid,
        image_uids=image_uids,
        dose_uids=tuple(present_doses),
        members=tuple(sending_order(members)),
        missing=tuple(missing),
    )


def sending_order(members: Iterable[StoredInstance]) -> list[StoredInstance]:
    """Images, RTSTRUCT, RTPLAN, RTDOSE: the order a planning system can import."""
    by_id = {member.instance_id: member for member in members}
    ordered = order_for_sending([
        OutgoingInstance(m.instance_id, m.modality, m.series_uid, m.instance_number)
        for m in by_id.values()
    ])
    return [by_id[item.instance_id] for item in ordered]


__all__ = ["RT_MODALITIES", "Bundle", "RtObject", "StoredInstance", "build_bundles", "sending_order"]
