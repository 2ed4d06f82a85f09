"""SOP classes written by name in a rule become the UID the instances carry."""

from __future__ import annotations

import re

from pydicom.uid import UID_dictionary

_UID = re.compile(r"^(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))+$")


def _indexes() -> tuple[dict[str, str], dict[str, str]]:
    by_keyword: dict[str, str] = {}
    by_name: dict[str, str] = {}
    for uid, (name, kind, _info, retired, keyword) in UID_dictionary.items():
        if kind != "SOP Class":
            continue
        by_keyword[keyword] = uid
        # A retired class can share its name with a current one; the current one wins.
        if not retired or name not in by_name:
            by_name[name] = uid
    return by_keyword, by_name


_BY_KEYWORD, _BY_NAME = _indexes()


def looks_like_uid(text: str) -> bool:
    return len(text) <= 64 and _UID.match(text) is not None


def sop_class_uid(text: str) -> str | None:
    """The UID for a UID (even a private one), a pydicom keyword or a DICOM name; else None."""
    if looks_like_uid(text):
        return text
    return _BY_KEYWORD.get(text) or _BY_NAME.get(text)


def sop_class_names() -> list[str]:
    return [*_BY_KEYWORD, *_BY_NAME]
