"""Folder names from DICOM values that stay inside their root. Pure.

A PatientID is free text: "../../etc", "A/B", "C:\\x" or "" must each become one plain folder
name. Names that had to change get a short hash of the original so "A/B" and "A_B" stay apart.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
MAX_LENGTH = 64


def safe_name(value: str) -> str:
    cleaned = _UNSAFE.sub("_", value).strip("._")[:MAX_LENGTH] or "_"
    if cleaned == value:
        return cleaned
    return f"{cleaned}-{hashlib.sha256(value.encode('utf-8', 'replace')).hexdigest()[:8]}"


def inside(root: Path, *parts: str) -> Path:
    """root/<safe part>/...; raises ValueError should the result ever leave root."""
    base = root.resolve()
    path = base.joinpath(*(safe_name(part) for part in parts)).resolve()
    if not path.is_relative_to(base):
        raise ValueError(f"{path} is outside {base}")
    return path
