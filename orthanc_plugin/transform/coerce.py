"""Tag coercion: what a destination's copy has set, replaced, removed or kept.

    coerce:
      set: {InstitutionName: "Clinique Sud RT"}           # written whether present or not
      replace: {StationName: "{StationName}-{Modality}"}  # only where present; {Keyword} templates
      remove: [OperatorsName, "(0009,xxxx)", private]     # a keyword, a tag, a group, every private
      keep: ["(3249,xxxx)"]                               # spared by remove (a TPS's private group)
      uids: keyed                                         # every UID through the site's keyed map

Checked when the rules load, not when a plan is on its way: an unknown keyword, a value its VR
cannot hold, a UID or an RT reference changed or removed (the RTPLAN -> RTSTRUCT -> CT links would
break at the receiver), pixel description or data touched. The one way to change UIDs is
`uids: keyed`: every instance UID, referenced ones included, goes through the keyed mapping
de-identification uses (deid/keys.py), so the copies of one plan still point at each other.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydicom import Dataset
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.tag import BaseTag, Tag

KEYS = ("set", "replace", "remove", "keep", "uids")
KEYED = "keyed"
_TAG = re.compile(r"^\(?([0-9A-Fa-f]{4}),\s*([0-9A-Fa-f]{4}|[xX]{4})\)?$")
_TEMPLATE = re.compile(r"\{([A-Za-z][A-Za-z0-9]*)\}")
# Sequences through which RT objects point at each other: removing one unlinks the plan.
RT_LINKS = frozenset({
    "ReferencedFrameOfReferenceSequence", "ReferencedRTPlanSequence",
    "ReferencedStructureSetSequence", "ReferencedSOPSequence", "ReferencedImageSequence",
    "ReferencedSeriesSequence", "RTReferencedStudySequence", "RTReferencedSeriesSequence",
    "ContourImageSequence", "ReferencedDoseSequence", "FrameOfReferenceUID",
})
# Image pixel description and data: a coerced value there corrupts the image.
PIXEL_GROUPS = (0x0028, 0x7FE0)
MAX_LENGTH = {"AE": 16, "AS": 4, "CS": 16, "DA": 8, "DS": 16, "IS": 12, "LO": 64, "PN": 324,
              "SH": 16, "ST": 1024, "TM": 14, "LT": 10240, "UT": 1 << 20}
_DA = re.compile(r"^\d{8}$")
_TM = re.compile(r"^\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?$")
_CS = re.compile(r"^[A-Z0-9 _]*$")
_DS = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
_IS = re.compile(r"^[+-]?\d+$")


class CoercionError(ValueError):
    """A coercion that cannot be applied safely; the text says which entry and why."""


@dataclass(frozen=True)
class Selector:
    """A keyword or tag (element is None for a whole group), or every private element."""

    group: int = 0
    element: int | None = None
    every_private: bool = False
    text: str = ""

    def selects(self, tag: BaseTag) -> bool:
        if self.every_private:
            return tag.is_private
        if tag.group != self.group:
            return False
        return self.element is None or tag.element == self.element


@dataclass(frozen=True)
class Coercion:
    assign: tuple[tuple[str, str], ...] = ()   # `set:` as written
    replace: tuple[tuple[str, str], ...] = ()
    remove: tuple[Selector, ...] = ()
    keep: tuple[Selector, ...] = ()
    keyed_uids: bool = False

    def __bool__(self) -> bool:
        return bool(self.assign or self.replace or self.remove or self.keyed_uids)

    def apply(self, ds: Dataset, uid_key: Callable[[str], str] | None = None) -> list[str]:
        """Changes `ds` in place; returns what changed, in words for the audit. `uid_key` is the
        keyed UID mapping, needed when the coercion has `uids: keyed`."""
        source = {keyword: _text(ds, keyword) for keyword in self._template_keywords()}
        changes: list[str] = []
        for keyword, template in self.assign:
            value = _fill(template, source, keyword)
            setattr(ds, keyword, value)
            changes.append(f"{keyword} set")
        for keyword, template in self.replace:
            if keyword in ds:
                setattr(ds, keyword, _fill(template, source, keyword))
                changes.append(f"{keyword} replaced")
        for selector in self.remove:
            doomed = [element.tag for element in ds
                      if selector.selects(element.tag)
                      and not any(kept.selects(element.tag) for kept in self.keep)]
            for tag in doomed:
                del ds[tag]
            if doomed:
                changes.append(f"{selector.text} removed ({len(doomed)} element"
                               f"{'s' if len(doomed) != 1 else ''})")
        if self.keyed_uids:
            if uid_key is None:
                raise CoercionError("uids: keyed needs the site's keyed UID mapping")
            mapped = _map_uids(ds, uid_key)
            meta = getattr(ds, "file_meta", None)
            if meta is not None and "MediaStorageSOPInstanceUID" in meta:
                meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            changes.append(f"UIDs keyed ({mapped})")
        return changes

    def _template_keywords(self) -> set[str]:
        return {name for _, template in self.assign + self.replace
                for name in _TEMPLATE.findall(template)}


def parse_coercion(raw: Any, path: str) -> Coercion:
    if not isinstance(raw, dict):
        raise CoercionError(f"{path}: expected a mapping with set, replace, remove or keep")
    for key in raw:
        if key not in KEYS:
            raise CoercionError(f"{path}.{key}: unknown option (expected one of: "
                                f"{', '.join(KEYS)})")
    uids = raw.get("uids")
    if uids is not None and uids != KEYED:
        raise CoercionError(f"{path}.uids: expected keyed (the keyed UID mapping), got {uids!r}")
    coercion = Coercion(
        keyed_uids=uids == KEYED,
        assign=_values(raw.get("set"), f"{path}.set"),
        replace=_values(raw.get("replace"), f"{path}.replace"),
        remove=_selectors(raw.get("remove"), f"{path}.remove", removing=True),
        keep=_selectors(raw.get("keep"), f"{path}.keep", removing=False),
    )
    if not coercion:
        raise CoercionError(f"{path}: nothing to set, replace, remove or key")
    return coercion


def _values(raw: Any, path: str) -> tuple[tuple[str, str], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, Mapping):
        raise CoercionError(f"{path}: expected a mapping of keyword: value")
    values = []
    for keyword, value in raw.items():
        here = f"{path}.{keyword}"
        vr = _writable_vr(str(keyword), here)
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise CoercionError(f"{here}: expected text or a number")
        text = str(value)
        for name in _TEMPLATE.findall(text):
            if tag_for_keyword(name) is None:
                raise CoercionError(f"{here}: unknown keyword {{{name}}} in the template")
        if not _TEMPLATE.search(text):
            check_value(vr, text, here)
        values.append((str(keyword), text))
    return tuple(values)


def _writable_vr(keyword: str, path: str) -> str:
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise CoercionError(f"{path}: unknown DICOM keyword '{keyword}'")
    vr = dictionary_VR(tag)
    if vr == "UI" or keyword in RT_LINKS:
        raise CoercionError(f"{path}: changing {keyword} would break the links between RTPLAN, "
                            "RTSTRUCT, RTDOSE and CT at the receiver (de-identify with "
                            "anonymize's keyed UIDs instead)")
    if vr == "SQ":
        raise CoercionError(f"{path}: {keyword} is a sequence; only single values can be set")
    if Tag(tag).group in PIXEL_GROUPS:
        raise CoercionError(f"{path}: {keyword} describes the pixels; changing it corrupts them")
    return vr


def check_value(vr: str, text: str, path: str) -> None:
    """Raises CoercionError when `text` cannot be a value of this VR."""
    limit = MAX_LENGTH.get(vr)
    if limit is not None and len(text) > limit:
        raise CoercionError(f"{path}: '{text}' is longer than {vr} allows ({limit} characters)")
    rules = {"DA": _DA, "TM": _TM, "CS": _CS, "DS": _DS, "IS": _IS}
    pattern = rules.get(vr)
    if pattern is not None and text and not pattern.match(text.strip()):
        raise CoercionError(f"{path}: '{text}' is not a valid {vr} value")
    if vr in ("US", "SS", "UL", "SL"):
        if not _IS.match(text):
            raise CoercionError(f"{path}: '{text}' is not a whole number ({vr})")
        low, high = {"US": (0, 65535), "SS": (-32768, 32767), "UL": (0, 2**32 - 1),
                     "SL": (-(2**31), 2**31 - 1)}[vr]
        if not low <= int(text) <= high:
            raise CoercionError(f"{path}: {text} is out of range for {vr}")
    if vr in ("OB", "OW", "OF", "OD", "OL", "UN", "AT", "FL", "FD"):
        raise CoercionError(f"{path}: values of VR {vr} cannot be written as text here")


def _selectors(raw: Any, path: str, *, removing: bool) -> tuple[Selector, ...]:
    if raw is None:
        return ()
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list):
        raise CoercionError(f"{path}: expected a list of keywords, tags or groups")
    selectors = []
    for index, item in enumerate(raw):
        here = f"{path}[{index}]"
        if not isinstance(item, str) or not item.strip():
            raise CoercionError(f"{here}: expected a keyword, (gggg,eeee), (gggg,xxxx) or private")
        selector = _selector(item.strip(), here)
        if removing:
            _check_removable(selector, here)
        selectors.append(selector)
    return tuple(selectors)


def _selector(text: str, path: str) -> Selector:
    if text == "private":
        return Selector(every_private=True, text="every private element")
    match = _TAG.match(text)
    if match:
        group = int(match.group(1), 16)
        element = None if match.group(2).lower() == "xxxx" else int(match.group(2), 16)
        what = (f"group {group:04X}" if element is None else
                f"({group:04X},{element:04X})")
        return Selector(group, element, text=("private " if group % 2 else "") + what)
    tag = tag_for_keyword(text)
    if tag is None:
        raise CoercionError(f"{path}: unknown DICOM keyword '{text}'")
    tag = Tag(tag)
    return Selector(tag.group, tag.element, text=text)


def _check_removable(selector: Selector, path: str) -> None:
    if selector.every_private:
        return
    whole_group = selector.element is None
    if selector.group in PIXEL_GROUPS or (selector.group in (0x0002, 0x0008) and whole_group):
        raise CoercionError(f"{path}: removing {selector.text} would leave the instance unreadable")
    if selector.element is None:
        return
    tag = Tag(selector.group, selector.element)
    keyword = keyword_for_tag(tag)
    if keyword and (keyword in RT_LINKS or dictionary_VR(tag) == "UI"):
        raise CoercionError(f"{path}: removing {keyword} would break the links between RTPLAN, "
                            "RTSTRUCT, RTDOSE and CT at the receiver")


STANDARD_UID_ROOT = "1.2.840.10008."   # SOP classes, transfer syntaxes: the same everywhere


def _map_uids(ds: Dataset, uid_key: Callable[[str], str]) -> int:
    """Every UI value of the dataset and its sequences through the keyed mapping, except the
    standard's own UIDs; returns how many values changed."""
    changed = 0
    for element in ds:
        if element.VR == "SQ":
            for item in element.value:
                changed += _map_uids(item, uid_key)
            continue
        if element.VR != "UI" or element.value in (None, ""):
            continue
        values = element.value if element.VM > 1 else [element.value]
        new = [value if str(value).startswith(STANDARD_UID_ROOT) else uid_key(str(value))
               for value in values]
        changed += sum(1 for old, value in zip(values, new, strict=True) if old != value)
        element.value = new if element.VM > 1 else new[0]
    return changed


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value)


def _fill(template: str, source: Mapping[str, str], keyword: str) -> str:
    text = _TEMPLATE.sub(lambda match: source.get(match.group(1), ""), template)
    vr = dictionary_VR(tag_for_keyword(keyword) or 0)
    # A template's value is only known per instance: one too long for its VR is refused (the
    # instance parks with this reason) rather than cut short.
    check_value(vr, text, keyword)
    return text
