"""Harvest of a remote archive, the pure part: the definition, the request slots, the item state
machine, slice-count validation and file names. No `orthanc`, no SQL.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

LEVELS = ("patient", "study", "series")
SELECTION_KEYS = ("PatientID", "PatientName", "StudyDate", "ModalitiesInStudy")
STUDY_FILTER_KEYS = ("StudyDate", "ModalitiesInStudy")
DEFINITION_KEYS = (
    "name", "source", "patients", "studies", "modalities", "levels", "concurrency",
    "max_requests_per_minute", "max_attempts", "retry_delay_seconds", "retry_max_delay_seconds",
)
_DATE_RANGE = re.compile(r"^(\d{8})?(-(\d{8})?)?$")
_MODALITY = re.compile(r"^[A-Z0-9_]{1,16}$")
MAX_CONCURRENCY = 16
MAX_REQUESTS_PER_MINUTE = 100_000


class HarvestError(ValueError):
    """A harvest definition is invalid; `path` names the field (e.g. `patients.regex`)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class SelectionKind(StrEnum):
    IDS = "ids"          # an explicit PatientID list: no selection query
    REGEX = "regex"      # C-FIND all patients, keep the PatientIDs the regex matches in full
    QUERY = "query"      # one study-level C-FIND with wildcards, date range, modalities in study


@dataclass(frozen=True)
class Selection:
    kind: SelectionKind
    patient_ids: tuple[str, ...] = ()
    regex: str = ""
    query: tuple[tuple[str, str], ...] = ()      # C-FIND keys of a QUERY selection

    def matches(self, patient_id: str) -> bool:
        if self.kind is SelectionKind.IDS:
            return patient_id in self.patient_ids
        if self.kind is SelectionKind.REGEX:
            return re.fullmatch(self.regex, patient_id) is not None
        return True  # the source applied the query itself


@dataclass(frozen=True)
class HarvestDefinition:
    source: str
    selection: Selection
    name: str = ""
    study_filters: tuple[tuple[str, str], ...] = ()   # added to every study-level C-FIND
    modalities: tuple[str, ...] = ()                 # series to keep; empty keeps all
    levels: tuple[str, ...] = LEVELS                 # without "series": an inventory, no C-MOVE
    concurrency: int = 2
    max_requests_per_minute: int = 600
    max_attempts: int = 10
    retry_delay_seconds: float = 30.0
    retry_max_delay_seconds: float = 600.0

    @property
    def retrieves(self) -> bool:
        return "series" in self.levels

    def keeps_modality(self, modality: str) -> bool:
        return not self.modalities or modality.upper() in self.modalities

    def to_json(self) -> dict[str, Any]:
        patients: Any
        if self.selection.kind is SelectionKind.IDS:
            patients = list(self.selection.patient_ids)
        elif self.selection.kind is SelectionKind.REGEX:
            patients = {"regex": self.selection.regex}
        else:
            patients = dict(self.selection.query)
        return {
            "name": self.name, "source": self.source, "patients": patients,
            "studies": dict(self.study_filters), "modalities": list(self.modalities),
            "levels": list(self.levels), "concurrency": self.concurrency,
            "max_requests_per_minute": self.max_requests_per_minute,
            "max_attempts": self.max_attempts, "retry_delay_seconds": self.retry_delay_seconds,
            "retry_max_delay_seconds": self.retry_max_delay_seconds,
        }


def parse_definition(raw: Any, known_sources: Collection[str] | None = None) -> HarvestDefinition:
    """Read a definition as posted (JSON); every error names its field."""
    if not isinstance(raw, dict):
        raise HarvestError("harvest", "expected an object")
    for key in raw:
        if key not in DEFINITION_KEYS:
            raise HarvestError(key, f"unknown field (expected one of: {', '.join(DEFINITION_KEYS)})")
    source = raw.get("source")
    if not isinstance(source, str) or not source.strip():
        raise HarvestError("source", "expected the name of an Orthanc modality")
    if known_sources is not None and source not in known_sources:
        known = ", ".join(sorted(known_sources)) or "none"
        raise HarvestError("source", f"unknown modality '{source}' (known: {known})")
    if "patients" not in raw:
        raise HarvestError("patients", "missing: a PatientID list, {regex: ...} or a C-FIND query")
    selection, selection_filters = _selection(raw["patients"])
    study_filters = _study_filters(raw.get("studies", {}), "studies")
    clash = set(selection_filters) & set(study_filters)
    if clash:
        raise HarvestError(f"studies.{min(clash)}", "also given under patients")
    name = raw.get("name", "")
    if not isinstance(name, str):
        raise HarvestError("name", "expected text")
    return HarvestDefinition(
        source=source,
        selection=selection,
        name=name,
        study_filters=tuple(sorted({**selection_filters, **study_filters}.items())),
        modalities=_modalities(raw.get("modalities", []), "modalities"),
        levels=_levels(raw.get("levels", list(LEVELS))),
        concurrency=_integer(raw, "concurrency", 2, 1, MAX_CONCURRENCY),
        max_requests_per_minute=_integer(
            raw, "max_requests_per_minute", 600, 1, MAX_REQUESTS_PER_MINUTE),
        max_attempts=_integer(raw, "max_attempts", 10, 1, 1000),
        retry_delay_seconds=_seconds(raw, "retry_delay_seconds", 30.0),
        retry_max_delay_seconds=_seconds(raw, "retry_max_delay_seconds", 600.0),
    )


def _selection(raw: Any) -> tuple[Selection, dict[str, str]]:
    if isinstance(raw, list):
        if not raw:
            raise HarvestError("patients", "expected at least one PatientID")
        ids: list[str] = []
        for index, item in enumerate(raw):
            if not isinstance(item, str) or not item.strip():
                raise HarvestError(f"patients[{index}]", "expected a PatientID (text)")
            if item not in ids:
                ids.append(item)
        return Selection(SelectionKind.IDS, patient_ids=tuple(ids)), {}
    if not isinstance(raw, dict) or not raw:
        raise HarvestError("patients", "expected a PatientID list, {regex: ...} or a C-FIND query")
    if "regex" in raw:
        if len(raw) != 1:
            raise HarvestError("patients", "regex cannot be combined with other keys")
        pattern = raw["regex"]
        if not isinstance(pattern, str) or not pattern:
            raise HarvestError("patients.regex", "expected a regular expression")
        try:
            re.compile(pattern)
        except re.error as error:
            raise HarvestError("patients.regex", f"invalid regular expression ({error})") from error
        return Selection(SelectionKind.REGEX, regex=pattern), {}
    query: dict[str, str] = {}
    for key, value in raw.items():
        if key not in SELECTION_KEYS:
            raise HarvestError(f"patients.{key}", f"unknown key (expected regex or one of: "
                                                  f"{', '.join(SELECTION_KEYS)})")
        if key not in STUDY_FILTER_KEYS:
            if not isinstance(value, str) or not value.strip():
                raise HarvestError(f"patients.{key}", "expected text, wildcards * and ? allowed")
            query[key] = value
    filters = _study_filters({k: v for k, v in raw.items() if k in STUDY_FILTER_KEYS}, "patients")
    if not query and not filters:
        raise HarvestError("patients", "expected at least one C-FIND key")
    return Selection(SelectionKind.QUERY, query=tuple(sorted(query.items()))), filters


def _study_filters(raw: Any, path: str) -> dict[str, str]:
    if not isinstance(raw, dict):
        raise HarvestError(path, "expected an object with StudyDate and/or ModalitiesInStudy")
    filters: dict[str, str] = {}
    for key, value in raw.items():
        here = f"{path}.{key}"
        if key == "StudyDate":
            if not isinstance(value, str) or not value or not _DATE_RANGE.match(value):
                raise HarvestError(here, "expected YYYYMMDD, YYYYMMDD-, -YYYYMMDD or YYYYMMDD-YYYYMMDD")
            filters[key] = value
        elif key == "ModalitiesInStudy":
            names = [value] if isinstance(value, str) else value
            filters[key] = "\\".join(_modalities(names, here))
            if not filters[key]:
                raise HarvestError(here, "expected at least one modality")
        else:
            raise HarvestError(here, f"unknown key (expected one of: {', '.join(STUDY_FILTER_KEYS)})")
    return filters


def _modalities(raw: Any, path: str) -> tuple[str, ...]:
    if not isinstance(raw, list):
        raise HarvestError(path, "expected a list of modalities such as [CT, RTSTRUCT]")
    names: list[str] = []
    for index, item in enumerate(raw):
        if not isinstance(item, str) or not _MODALITY.match(item.upper()):
            raise HarvestError(f"{path}[{index}]", f"expected a modality such as CT, got {item!r}")
        if item.upper() not in names:
            names.append(item.upper())
    return tuple(names)


def _levels(raw: Any) -> tuple[str, ...]:
    if not isinstance(raw, list) or not raw:
        raise HarvestError("levels", "expected a list such as [patient, study, series]")
    for index, item in enumerate(raw):
        if item not in LEVELS:
            raise HarvestError(f"levels[{index}]", f"expected one of: {', '.join(LEVELS)}")
    if tuple(raw) != LEVELS[: len(raw)]:
        # A walk cannot skip a level: series are found through their study.
        raise HarvestError("levels", "expected [patient], [patient, study] or [patient, study, series]")
    return tuple(raw)


def _integer(raw: dict[str, Any], key: str, default: int, low: int, high: int) -> int:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise HarvestError(key, f"expected a whole number from {low} to {high}, got {value!r}")
    return value


def _seconds(raw: dict[str, Any], key: str, default: float) -> float:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise HarvestError(key, f"expected a number of seconds >= 0, got {value!r}")
    return float(value)


# -- the request rate ------------------------------------------------------------------------------

RATE_WINDOW_SECONDS = 60.0


def next_slot(recent: Sequence[float], now: float, per_minute: int, burst: int = 1) -> float:
    """When the next request to a source may go: the earliest time from `now` on at which no
    60-second window [s, s + 60) would hold more than `per_minute` requests.

    `recent`: the send times (epoch) of the source's requests from the last minute on, booked
    future ones included, latest first (at least `per_minute` of them when there are). Slots are
    booked in order (never before the latest booked one), so only the windows that end with the
    new one can overflow: it waits until the per_minute-th latest request is 60 s old. Within the
    cap the requests are spread out rather than bunched: at most `burst` of them in any `burst`
    intervals of 60 / (per_minute - 1) s (one request a minute of margin for the jitter between a
    booked slot and the request reaching the source).
    """
    if per_minute < 1:
        raise ValueError("per_minute must be >= 1")
    times = sorted(recent, reverse=True)
    at = max([now, *times[:1]])
    if per_minute == 1:
        burst, interval = 1, RATE_WINDOW_SECONDS
    else:
        burst = max(1, min(burst, per_minute - 1))
        interval = RATE_WINDOW_SECONDS / (per_minute - 1)
    if len(times) >= burst:
        at = max(at, times[burst - 1] + burst * interval)
    if len(times) >= per_minute:
        at = max(at, times[per_minute - 1] + RATE_WINDOW_SECONDS)
    return at


# -- the state machine of a harvest item -----------------------------------------------------------

class ItemLevel(StrEnum):
    SELECTION = "selection"   # the selection query of a harvest (regex or query selections)
    PATIENT = "patient"
    STUDY = "study"
    SERIES = "series"


class ItemState(StrEnum):
    PENDING = "pending"
    QUERYING = "querying"
    MOVING = "moving"
    DONE = "done"             # a query level whose children are recorded
    COMPLETE = "complete"     # a series stored with its expected instance count
    INCOMPLETE = "incomplete"  # a series still short after its retries
    FAILED = "failed"         # retries exhausted on errors (network, refused association)
    SKIPPED = "skipped"       # a series of a modality not kept, or a level not walked


ACTIVE_STATES = (ItemState.PENDING, ItemState.QUERYING, ItemState.MOVING)
IN_FLIGHT_STATES = (ItemState.QUERYING, ItemState.MOVING)
SETTLED_STATES = (ItemState.DONE, ItemState.COMPLETE, ItemState.INCOMPLETE, ItemState.FAILED,
                  ItemState.SKIPPED)


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int
    delay_seconds: float
    max_delay_seconds: float

    def delay(self, attempts: int) -> float:
        return min(self.max_delay_seconds, self.delay_seconds * 2 ** max(attempts - 1, 0))


@dataclass(frozen=True)
class Transition:
    state: ItemState
    retry_in_seconds: float = 0.0
    error: str | None = None


def start_state(level: ItemLevel) -> ItemState:
    return ItemState.MOVING if level is ItemLevel.SERIES else ItemState.QUERYING


def resume_state(state: ItemState) -> ItemState:
    """After a crash or restart an item caught mid-step runs that step again.

    Safe because a query has no effect at the source, and a series is counted in the gateway
    before any C-MOVE: a series that had arrived whole is marked complete without a new move.
    """
    return ItemState.PENDING if state in IN_FLIGHT_STATES else state


def after_query(ok: bool, attempts: int, policy: RetryPolicy, error: str | None = None) -> Transition:
    if ok:
        return Transition(ItemState.DONE)
    return _retry_or(ItemState.FAILED, attempts, policy, error or "query failed")


def after_move(
    moved: bool, expected: int | None, stored: int, attempts: int, policy: RetryPolicy,
    error: str | None = None,
) -> Transition:
    """A C-MOVE ended (moved=False: it failed). Only the stored count decides `complete`."""
    check = check_series_count(expected, stored)
    if check.complete:
        return Transition(ItemState.COMPLETE)
    if not moved:
        return _retry_or(ItemState.FAILED, attempts, policy, error or "C-MOVE failed")
    return _retry_or(ItemState.INCOMPLETE, attempts, policy, check.reason)


def _retry_or(final: ItemState, attempts: int, policy: RetryPolicy, error: str) -> Transition:
    if attempts < policy.max_attempts:
        return Transition(ItemState.PENDING, policy.delay(attempts), error)
    return Transition(final, 0.0, f"{error} (after {attempts} attempt(s))")


# -- slice-count validation ------------------------------------------------------------------------

@dataclass(frozen=True)
class SeriesCount:
    complete: bool
    reason: str


def check_series_count(expected: int | None, stored: int) -> SeriesCount:
    """expected: NumberOfSeriesRelatedInstances from the source's C-FIND, None if not answered."""
    if expected is None:
        if stored > 0:
            return SeriesCount(True, "the source gave no instance count; stored instances found")
        return SeriesCount(False, "nothing stored and no expected count")
    if stored >= expected:
        return SeriesCount(True, f"{stored} of {expected} instance(s) stored")
    return SeriesCount(False, f"{stored} of {expected} instance(s) stored")


def parse_count(value: Any) -> int | None:
    try:
        count = int(str(value).strip())
    except (TypeError, ValueError):
        return None
    return count if count >= 0 else None


# -- file names ------------------------------------------------------------------------------------

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
MAX_STEM = 120


def safe_file_stem(text: str) -> str:
    """A file name part that cannot leave its folder: `../../etc` or `A/B` stay single names.

    Any change to the text adds a short hash of the original, so two PatientIDs that clean up to
    the same text (`A/B`, `A_B`) never share a ZIP.
    """
    cleaned = _UNSAFE.sub("_", text).lstrip(".") or "_"
    cleaned = cleaned[:MAX_STEM]
    if cleaned != text:
        cleaned += "~" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]
    return cleaned


def zip_name(patient_id: str, series_count: int, delimiter: str = "__") -> str:
    return f"{safe_file_stem(patient_id)}{safe_delimiter(delimiter)}seriesCount{series_count}.zip"


def safe_delimiter(delimiter: str) -> str:
    if not delimiter or _UNSAFE.search(delimiter) or delimiter.startswith("."):
        raise ValueError(f"ZIP name delimiter {delimiter!r}: expected letters, digits, '_' or '-'")
    return delimiter


@dataclass
class Progress:
    """Counts per state and what they say about the rest (for the status route)."""

    counts: dict[str, dict[str, int]] = field(default_factory=dict)   # level -> state -> n

    def series(self, state: ItemState) -> int:
        return self.counts.get(ItemLevel.SERIES.value, {}).get(state.value, 0)

    @property
    def active(self) -> int:
        return sum(n for states in self.counts.values() for s, n in states.items()
                   if s in {a.value for a in ACTIVE_STATES})


def eta_seconds(elapsed_seconds: float, settled_series: int, remaining_series: int) -> float | None:
    if settled_series == 0 or remaining_series == 0:
        return None if remaining_series else 0.0
    return elapsed_seconds / settled_series * remaining_series
