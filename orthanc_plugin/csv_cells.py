"""CSV cells a spreadsheet cannot run: sites open the gateway's CSV files in Excel, and a DICOM value
such as `=HYPERLINK(...)` or `=cmd|...` in a PatientName would otherwise be a formula there.

OWASP's rule: a text cell starting with =, +, -, @, tab or carriage return gets a leading
apostrophe (shown as text, the value still readable). Numbers stay numbers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value: Any) -> Any:
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def safe_row(values: Iterable[Any]) -> list[Any]:
    return [safe_cell(value) for value in values]


def safe_mapping(row: Mapping[str, Any]) -> dict[str, Any]:
    return {key: safe_cell(value) for key, value in row.items()}
