"""Renames ROI names and the plan label of a dataset through a NameTable, in place.

The caller passes the copy a destination receives; the stored original is never touched here.
What is written:

- StructureSetROISequence[*].ROIName (RTSTRUCT): each ROI name through `NameTable.map`.
- RTROIObservationsSequence[*].ROIObservationLabel: only when it repeats its ROI's old name
  exactly (a copy of the name some planning systems write); any other label is the author's free
  text and stays.
- RTPlanLabel (RTPLAN): through the same table (the site lists its plan labels in its table).

Deliberately left alone: DoseReferenceSequence[*].DoseReferenceDescription is free text, and the
plan refers to structures by ROI number, not by this text. ROI numbers, references and UIDs are
never changed.

Conflict rule: a structure set must not end up with two ROIs of the same name. When the name an
ROI would get is already the exact name of another ROI, or several ROIs would get the same name
(``Lt Parotid`` and ``parotid_l``), none of those ROIs is renamed and each is reported as a
conflict. The order of ROIs in the sequence is arbitrary, so picking one would be a guess.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from pydicom import Dataset

from orthanc_plugin.transform.names import NameTable, Via

# Value lengths: ROIName is LO, ROIObservationLabel and RTPlanLabel are SH.
LONG_STRING = 64
SHORT_STRING = 16


class Status(StrEnum):
    KEPT = "kept"  # already the standard name
    RENAMED = "renamed"
    NO_MATCH = "no match"  # the table has nothing for it: a physicist may extend the table
    HELPER = "helper"  # z-prefixed helper structure, never renamed
    CONFLICT = "conflict"  # another ROI has or would get the same name
    TOO_LONG = "too long"  # the standard name does not fit the attribute


@dataclass(frozen=True)
class Renamed:
    """One name before and after; after is None when the name was left unchanged for want of
    a (usable) match, in which case `status` says why."""

    before: str
    after: str | None
    attribute: str = ""
    roi_number: int | None = None
    status: Status = Status.RENAMED
    detail: str = ""

    @property
    def changed(self) -> bool:
        return self.after is not None and self.after != self.before


def normalize_dataset(
    ds: Dataset, table: NameTable, *, roi_names: bool = True, plan_label: bool = True
) -> list[Renamed]:
    """Renames in place and returns every name looked at, in dataset order."""
    results: list[Renamed] = []
    if roi_names and "StructureSetROISequence" in ds:
        results.extend(_rename_rois(ds, table))
    if plan_label and "RTPlanLabel" in ds:
        results.append(_rename_label(ds, table))
    return results


def unmapped(results: Iterable[Renamed]) -> list[str]:
    """Names the table does not know, once each: what a physicist adds to the site table."""
    return sorted({r.before for r in results if r.status is Status.NO_MATCH and r.before.strip()})


def _rename_rois(ds: Dataset, table: NameTable) -> list[Renamed]:
    items = list(ds.StructureSetROISequence)
    befores = [_text(item, "ROIName") for item in items]
    numbers = [_number(item) for item in items]
    matches = [table.explain(before) for before in befores]

    # Names that stay exactly as they are, and the ROIs asking for each new name.
    holders: dict[str, list[int]] = defaultdict(list)
    wanted: dict[str, list[int]] = defaultdict(list)
    for index, (before, match) in enumerate(zip(befores, matches, strict=True)):
        if match.name is None or match.name == before:
            holders[before].append(index)
        else:
            wanted[match.name].append(index)

    results: list[Renamed] = []
    renamed: dict[int, tuple[str, str]] = {}
    for index, item in enumerate(items):
        before, match, number = befores[index], matches[index], numbers[index]
        result = _outcome(before, match.name, match.via, "ROIName", number, LONG_STRING)
        if result.changed:
            target = result.after or ""
            rivals = [i for i in holders.get(target, []) + wanted.get(target, []) if i != index]
            if rivals:
                shown = ", ".join(_roi(numbers[i], befores[i]) for i in rivals)
                result = Renamed(before, None, "ROIName", number, Status.CONFLICT,
                                 f"{result.after} would also name {shown}; left unchanged")
        if result.changed and result.after is not None:
            item.ROIName = result.after
            if number is not None:
                renamed[number] = (before, result.after)
        results.append(result)

    # A number listed twice is ambiguous: its observation labels are left alone.
    duplicated = {n for n in numbers if n is not None and numbers.count(n) > 1}
    for observation in ds.get("RTROIObservationsSequence") or []:
        number = _number(observation, "ReferencedROINumber")
        if number is None or number in duplicated or number not in renamed:
            continue
        old, new = renamed[number]
        if "ROIObservationLabel" not in observation or _text(observation, "ROIObservationLabel") != old:
            continue
        if len(new) > SHORT_STRING:
            results.append(Renamed(old, None, "ROIObservationLabel", number, Status.TOO_LONG,
                                   f"{new} is longer than {SHORT_STRING} characters"))
            continue
        observation.ROIObservationLabel = new
        results.append(Renamed(old, new, "ROIObservationLabel", number, Status.RENAMED))
    return results


def _rename_label(ds: Dataset, table: NameTable) -> Renamed:
    before = _text(ds, "RTPlanLabel")
    match = table.explain(before)
    result = _outcome(before, match.name, match.via, "RTPlanLabel", None, SHORT_STRING)
    if result.changed and result.after is not None:
        ds.RTPlanLabel = result.after
    return result


def _outcome(before: str, after: str | None, via: Via, attribute: str, number: int | None,
             limit: int) -> Renamed:
    if after is None:
        status = Status.HELPER if via is Via.HELPER else Status.NO_MATCH
        return Renamed(before, None, attribute, number, status)
    if after == before:
        return Renamed(before, after, attribute, number, Status.KEPT)
    if len(after) > limit:
        return Renamed(before, None, attribute, number, Status.TOO_LONG,
                       f"{after} is longer than {limit} characters")
    return Renamed(before, after, attribute, number, Status.RENAMED, str(via))


def _text(item: Dataset, keyword: str) -> str:
    value = item.get(keyword)
    return "" if value is None else str(value)


def _number(item: Dataset, keyword: str = "ROINumber") -> int | None:
    try:
        return int(item.get(keyword))
    except (TypeError, ValueError):
        return None


def _roi(number: int | None, name: str) -> str:
    return f"ROI {number} ({name})" if number is not None else f"ROI {name!r}"
