"""De-identification of one dataset: profile actions, keyed UIDs, shifted dates, private tags.

Pure (pydicom only). The dataset is changed in place, so a 200-slice CT is not copied twice; the
result says what the gateway must remember (the pseudonym, the date offset, the UID pairs).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, timedelta

from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag

from orthanc_plugin.deid.keys import Pseudonymizer
from orthanc_plugin.deid.profile import (
    ACTIONS,
    BASIC_PROFILE_CODE,
    CLASS_UID_KEYWORDS,
    CLINICAL_LABEL_KEYWORDS,
    LABEL_PLACEHOLDER,
    OPTION_CODES,
    TYPE1_LABELS,
    Option,
    Profile,
)

DEFAULT_PATIENT_ID_PATTERN = "ANON-{hash}"
STANDARD_UID_ROOT = "1.2.840.10008."
TEXT_VRS = frozenset({"LO", "SH", "ST", "LT", "UT", "UC"})
DATE_VRS = frozenset({"DA", "DT", "TM"})
# What _handle_by_vr looks at: sequences and UIDs in either profile, names, dates and free text in
# the full one. Any other VR (numbers, code strings, pixel data) is left as read.
ALWAYS_WALKED_VRS = frozenset({"SQ", "UI"})
FULL_PROFILE_VRS = frozenset({"PN"}) | DATE_VRS | TEXT_VRS
UNDECIDED_VRS = frozenset({"UN"})
# Identifiers shorter than this would match ordinary words and numbers in unrelated text.
MIN_IDENTIFIER_LENGTH = 3


class DeidError(ValueError):
    """The dataset cannot be de-identified (e.g. no SOPInstanceUID)."""


@dataclass(frozen=True)
class DeidSettings:
    profile: Profile = Profile.FULL
    options: frozenset[Option] = frozenset()
    keep_private_creators: tuple[str, ...] = ()
    patient_id_pattern: str = DEFAULT_PATIENT_ID_PATTERN

    @property
    def maps_uids(self) -> bool:
        return Option.RETAIN_UIDS not in self.options

    @property
    def shifts_dates(self) -> bool:
        return Option.RETAIN_LONGITUDINAL_MODIFIED_DATES in self.options

    def describe(self) -> str:
        options = ", ".join(sorted(self.options)) or "no options"
        return f"{self.profile.value} ({options})"


@dataclass
class DeidResult:
    original_patient_id: str
    new_patient_id: str
    date_offset_days: int | None
    # original UID -> (new UID, keyword of an element that held it)
    uids: dict[str, tuple[str, str]] = field(default_factory=dict)
    # The object's de-identification report: every attribute changed beyond UIDs and dates,
    # "<path>: <what>" (e.g. "StructureSetROISequence[0].ROIName: kept (clinical label)").
    changes: list[str] = field(default_factory=list)


def deidentify(ds: Dataset, settings: DeidSettings, keys: Pseudonymizer) -> DeidResult:
    """De-identify ds in place (file meta included) and say what was mapped."""
    if "SOPInstanceUID" not in ds:
        raise DeidError("no SOPInstanceUID")
    original_id = str(ds.get("PatientID", "") or "")
    result = DeidResult(
        original_patient_id=original_id,
        new_patient_id=keys.patient_id(original_id, settings.patient_id_pattern),
        date_offset_days=keys.date_offset_days(original_id) if settings.shifts_dates else None,
    )
    walker = _Walker(settings, keys, result, _identifiers(ds))
    walker.walk(ds)
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "MediaStorageSOPInstanceUID" in meta:
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    _record_method(ds, settings)
    return result


def keyed_uid(keys: Pseudonymizer, original: str) -> str:
    """The UID a copy carries for `original`: keyed, except DICOM's own (standard) UIDs."""
    original = original.strip().rstrip("\x00")
    if not original or original.startswith(STANDARD_UID_ROOT):
        return original
    return keys.uid(original)


def copy_keys(original: tuple[str, str, str, str], settings: DeidSettings,
              keys: Pseudonymizer) -> tuple[str, str, str, str]:
    """(PatientID, StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID) of the copy that
    `deidentify` makes of an instance with these keys: known before the file is read, so the
    copy's Orthanc ID can be noted ahead (a guess checked against the copy itself)."""
    patient_id, *uids = original
    new_patient = keys.patient_id(patient_id, settings.patient_id_pattern)
    if settings.maps_uids:
        uids = [keyed_uid(keys, uid) for uid in uids]
    study, series, sop = uids
    return new_patient, study, series, sop


class _Walker:
    def __init__(
        self, settings: DeidSettings, keys: Pseudonymizer, result: DeidResult,
        identifiers: _Identifiers,
    ) -> None:
        self.settings = settings
        self.keys = keys
        self.result = result
        self.identifiers = identifiers
        self.full = settings.profile is Profile.FULL

    def walk(self, ds: Dataset, path: str = "") -> None:
        kept_blocks = self._kept_private_blocks(ds)
        for tag in list(ds.keys()):
            if tag.is_private and not _in_blocks(tag, kept_blocks):
                del ds[tag]
                self._changed(f"{path}{tag}", "removed (private)")
                continue
            if not self._may_change(tag, ds.get_item(tag)):
                continue  # left as read: written back byte for byte, never decoded
            element = ds[tag]
            where = f"{path}{element.keyword or tag}"
            if not tag.is_private and self._handle_by_table(ds, tag, element.keyword, where):
                continue
            self._handle_by_vr(ds, tag, where)

    def _may_change(self, tag: BaseTag, element: DataElement | RawDataElement | None) -> bool:
        """Whether the profile could touch this element, judged without decoding its value.

        Why: decoding every value and encoding it again was half the copy's Python time (bench/deid:
        numbers, code strings and pixel data are most of a CT slice's elements and none of them
        changes). An element whose VR the file does not say (implicit VR) or says is UN is
        decoded, so a name sent as UN is still found by the dictionary's VR."""
        if element is None:
            return False
        if self._action(keyword_for_tag(tag), tag) is not None:
            return True
        vr = element.VR
        if vr is None or vr in UNDECIDED_VRS or vr in ALWAYS_WALKED_VRS:
            return True
        return self.full and vr in FULL_PROFILE_VRS

    def _changed(self, where: str, what: str) -> None:
        self.result.changes.append(f"{where}: {what}")

    # -- the profile's table -------------------------------------------------------------------
    def _handle_by_table(self, ds: Dataset, tag: BaseTag, keyword: str, where: str) -> bool:
        action = self._action(keyword, tag)
        if action is None:
            return False
        if action == "X":
            del ds[tag]
            self._changed(where, "removed")
        elif action == "Z":
            if ds[tag].value not in (None, "", []):
                self._changed(where, "emptied")
            ds[tag].value = None if ds[tag].VR == "SQ" else ""
        elif action in ("P", "N"):
            ds[tag].value = self.result.new_patient_id
            self._changed(where, "replaced by the pseudonym")
        elif action == "C":
            element = ds[tag]
            if element.VR == "SQ":
                return False  # a kept code sequence is walked like any other
            cleaned = self.identifiers.clean(element.value)
            if cleaned != element.value:
                self._changed(where, "cleaned of the patient's identifiers")
            element.value = cleaned
        return True

    def _action(self, keyword: str, tag: BaseTag) -> str | None:
        if not self.full:
            return {"PatientID": "P", "AccessionNumber": "Z"}.get(keyword)
        if tag.group & 0xFF00 == 0x6000 and tag.element in (0x3000, 0x4000):
            return "X"  # overlay data and comments can carry burned-in names
        entry = ACTIONS.get(keyword)
        if entry is None:
            return None
        basic, relaxed_by = entry
        if relaxed_by is not None and relaxed_by in self.settings.options:
            return "C" if relaxed_by is Option.CLEAN_DESCRIPTORS else None
        return basic

    # -- by value representation: UIDs everywhere, and the full profile's safety nets ---------
    def _handle_by_vr(self, ds: Dataset, tag: BaseTag, where: str) -> None:
        element = ds[tag]
        vr = element.VR
        if vr == "SQ":
            for index, item in enumerate(element.value or []):
                self.walk(item, f"{where}[{index}].")
        elif vr == "UI":
            if self.settings.maps_uids and element.keyword not in CLASS_UID_KEYWORDS:
                element.value = _map_values(element.value, lambda v: self._uid(v, element.keyword))
        elif not self.full or element.value in (None, ""):
            return
        elif vr == "PN":
            element.value = ""
            self._changed(where, "emptied (a person's name)")
        elif vr in DATE_VRS:
            element.value = self._date_or_time(element.value, vr)
        elif vr in TEXT_VRS and element.keyword in CLINICAL_LABEL_KEYWORDS:
            self._clinical_label(element, where)
        elif vr in TEXT_VRS and self.identifiers.found_in(element.value):
            element.value = ""
            self._changed(where, "emptied (free text naming the patient)")

    def _clinical_label(self, element: object, where: str) -> None:
        """A label of the treatment stays, unless it is an identifier of the patient as a whole,
        or the rule asks for its name words to be scrubbed too."""
        keyword = getattr(element, "keyword", "")
        value = getattr(element, "value", "")
        if self.identifiers.is_whole_identifier(value):
            replacement = LABEL_PLACEHOLDER if keyword in TYPE1_LABELS else ""
            element.value = replacement  # type: ignore[attr-defined]
            self._changed(where, f"replaced by {replacement!r} (the whole label was an "
                                 "identifier of the patient)")
        elif (Option.SCRUB_CLINICAL_LABELS in self.settings.options
              and self.identifiers.found_in(value)):
            cleaned = self.identifiers.clean(value)
            if keyword in TYPE1_LABELS and not str(cleaned).strip():
                cleaned = LABEL_PLACEHOLDER
            element.value = cleaned  # type: ignore[attr-defined]
            self._changed(where, "cleaned of the patient's name words (scrub-clinical-labels)")

    def _uid(self, original: str, keyword: str) -> str:
        new = keyed_uid(self.keys, original)
        if new != original.strip().rstrip("\x00"):
            self.result.uids.setdefault(original.strip().rstrip("\x00"), (new, keyword))
        return new

    def _date_or_time(self, value: object, vr: str) -> object:
        offset = self.result.date_offset_days
        if offset is None:
            return ""
        if vr == "TM":
            return value  # the modified-dates option moves whole days: times stay true
        return _map_values(value, lambda v: _shift(v, offset, vr))

    def _kept_private_blocks(self, ds: Dataset) -> set[tuple[int, int]]:
        keep = set(self.settings.keep_private_creators)
        if not keep:
            return set()
        blocks = set()
        for element in ds:
            tag = element.tag
            if tag.is_private and 0x10 <= tag.element <= 0xFF and str(element.value).strip() in keep:
                blocks.add((tag.group, tag.element))
        return blocks


def _in_blocks(tag: BaseTag, blocks: set[tuple[int, int]]) -> bool:
    if 0x10 <= tag.element <= 0xFF:
        return (tag.group, tag.element) in blocks
    return (tag.group, tag.element >> 8) in blocks


def _map_values(value: object, change: Callable[[str], str]) -> object:
    if isinstance(value, MultiValue | list | tuple):
        return [change(str(v)) for v in value]
    return change(str(value)) if value is not None else value


def _shift(value: str, offset_days: int, vr: str) -> str:
    text = value.strip()
    if len(text) < 8 or not text[:8].isdigit():
        return ""  # a partial or broken date cannot be shifted safely: drop it
    try:
        day = date(int(text[:4]), int(text[4:6]), int(text[6:8]))
    except ValueError:
        return ""
    moved = (day + timedelta(days=offset_days)).strftime("%Y%m%d")
    return moved + text[8:] if vr == "DT" else moved


class _Identifiers:
    """The patient's own identifying values, searched for in free text the table does not list."""

    def __init__(self, values: Iterable[str], words: Iterable[str],
                 whole: Iterable[str] = ()) -> None:
        self.values = [v.lower() for v in values if len(v) >= MIN_IDENTIFIER_LENGTH]
        # Whole tokens only: ID 4711 is not found in 47110 nor a name "Rose" in "Roseanne".
        value_list = [re.escape(v) for v in self.values]
        self.value_tokens = (re.compile(r"(?<![A-Za-z0-9])(" + "|".join(value_list)
                                        + r")(?![A-Za-z0-9])", re.I) if value_list else None)
        word_list = [re.escape(w) for w in words if len(w) >= MIN_IDENTIFIER_LENGTH]
        self.words = re.compile(r"\b(" + "|".join(word_list) + r")\b", re.I) if word_list else None
        self.whole = {v.strip().lower() for v in whole if v.strip()}

    def found_in(self, value: object) -> bool:
        texts = [str(v) for v in value] if isinstance(value, MultiValue | list) else [str(value)]
        for text in texts:
            if self.value_tokens is not None and self.value_tokens.search(text):
                return True
            if self.words is not None and self.words.search(text):
                return True
        return False

    def is_whole_identifier(self, value: object) -> bool:
        texts = [str(v) for v in value] if isinstance(value, MultiValue | list) else [str(value)]
        return any(text.strip().lower() in self.whole for text in texts)

    def clean(self, value: object) -> object:
        if isinstance(value, MultiValue | list):
            return [self.clean(v) for v in value]
        text = str(value)
        if self.value_tokens is not None:
            text = self.value_tokens.sub("", text)
        if self.words is not None:
            text = self.words.sub("", text)
        return " ".join(text.split())


def _identifiers(ds: Dataset) -> _Identifiers:
    values = [str(ds.get(k, "") or "").strip()
              for k in ("PatientID", "PatientBirthDate", "AccessionNumber", "OtherPatientIDs",
                        "StudyID")]
    words: list[str] = []
    names: list[str] = []
    for keyword in ("PatientName", "OtherPatientNames", "PatientBirthName"):
        name = str(ds.get(keyword, "") or "")
        names += [name, " ".join(part for part in re.split(r"[\^=]+", name) if part)]
        for part in re.split(r"[\^=\s,]+", name):
            words.append(part)
    present = [v for v in values if v]
    return _Identifiers(present, [w for w in words if w], [*present, *names])


def _record_method(ds: Dataset, settings: DeidSettings) -> None:
    full = settings.profile is Profile.FULL
    ds.PatientIdentityRemoved = "YES" if full else "NO"
    methods = [f"RT Gateway {settings.profile.value} profile"]
    methods += [option.value for option in sorted(settings.options)]
    ds.DeidentificationMethod = methods if len(methods) > 1 else methods[0]
    if full:
        codes = [BASIC_PROFILE_CODE] + [OPTION_CODES[o] for o in sorted(settings.options)
                                        if o in OPTION_CODES]
        items = []
        for value, meaning in codes:
            item = Dataset()
            item.CodeValue = value
            item.CodingSchemeDesignator = "DCM"
            item.CodeMeaning = meaning
            items.append(item)
        ds.DeidentificationMethodCodeSequence = items
        ds.LongitudinalTemporalInformationModified = (
            "MODIFIED" if settings.shifts_dates else "REMOVED")
