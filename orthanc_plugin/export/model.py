"""DRAW export, pure: file names from a template, made safe, and what to do with a repeat.

A value such as a PatientID of `../../etc` or `A/B` becomes one harmless file-name component:
only letters, digits, `-`, `_` and single inner dots survive, so no name can leave the folder.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from pydicom.datadict import tag_for_keyword

DEFAULT_TEMPLATE = "DRAW_{HospitalID}_{SOPInstanceUID}.dcm"
# The old DRAW tool's name for the patient's hospital number.
ALIASES = {"HospitalID": "PatientID"}
MAX_COMPONENT = 64
MAX_NAME = 200
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_DOTS = re.compile(r"\.{2,}")


class TemplateError(ValueError):
    """The file-name template is invalid; the message says why."""


def template_keywords(template: str) -> list[str]:
    """The DICOM keywords a template names; refuses anything that is not a plain {Keyword}."""
    if "/" in template or "\\" in template or template.strip(". ") == "":
        raise TemplateError("a file name, not a path: no '/' or '\\'")
    keywords = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as error:
        raise TemplateError(f"bad braces ({error})") from None
    for _, field, spec, conversion in parsed:
        if field is None:
            continue
        if spec or conversion or not field:
            raise TemplateError(f"expected {{Keyword}}, got {{{field}{'!' if conversion else ''}"
                                f"{':' if spec else ''}}}")
        keyword = ALIASES.get(field, field)
        if tag_for_keyword(keyword) is None:
            raise TemplateError(f"unknown DICOM keyword '{field}'")
        keywords.append(field)
    return keywords


def safe_component(value: str) -> str:
    """One file-name component from any text: accents folded, separators and dot runs replaced."""
    folded = unicodedata.normalize("NFKD", value).encode("ascii", "ignore").decode()
    cleaned = _DOTS.sub("_", _UNSAFE.sub("_", folded.strip())).strip("._")
    return cleaned[:MAX_COMPONENT] or "UNKNOWN"


def render_name(template: str, values: Mapping[str, str]) -> str:
    """The template with each {Keyword} replaced by its safe value (missing -> UNKNOWN)."""
    safe = {field: safe_component(values.get(ALIASES.get(field, field), ""))
            for field in template_keywords(template)}
    name = template.format(**safe)
    if len(name) > MAX_NAME:
        stem, dot, suffix = name.rpartition(".")
        name = (stem[: MAX_NAME - len(suffix) - 1] + dot + suffix) if dot else name[:MAX_NAME]
    if name in (".", "..") or "/" in name or "\\" in name:
        raise TemplateError(f"the template made an unusable name {name!r}")
    return name


def versioned_name(name: str, version: int) -> str:
    """DRAW_X_1.2.dcm -> DRAW_X_1.2_v2.dcm: changed content never replaces what was exported."""
    if version <= 1:
        return name
    stem, dot, suffix = name.rpartition(".")
    if not dot or not stem:
        return f"{name}_v{version}"
    return f"{stem}_v{version}.{suffix}"


class Decision(StrEnum):
    WRITE = "write"
    SKIP = "skip"


class Claim(StrEnum):
    """Where a worker stands on one file name in one folder (export_claims): several workers,
    on one node or several, may export the same instance into the same shared folder at once."""

    MINE = "mine"      # this worker holds the name: it writes the file
    DONE = "done"      # this very content is in place under the name already
    HELD = "held"      # another worker holds the name now and has not finished
    OTHER = "other"    # the name is another content's: the next version is tried


@dataclass(frozen=True)
class ExportPlan:
    decision: Decision
    name: str
    version: int


def plan_export(name: str, sha256: str, previous: list[tuple[str, str]]) -> ExportPlan:
    """previous: (content sha256, file name) of this SOP instance already exported to the folder."""
    for old_sha, old_name in previous:
        if old_sha == sha256:
            return ExportPlan(Decision.SKIP, old_name, 0)
    version = len({old_sha for old_sha, _ in previous}) + 1
    return ExportPlan(Decision.WRITE, versioned_name(name, version), version)
