"""Numbers of the rules file's sections: the rules YAML keeps scalars as written, so a number
arrives as text and is read here, with the place named when it is not one."""

from __future__ import annotations

from typing import Any

from orthanc_plugin.rules.errors import RulesError
from orthanc_plugin.rules.wording import kind_of


def positive_number(raw: dict[str, Any], key: str, path: str, *,
                    whole: bool = False) -> float | None:
    """raw[key] as a number above 0 (a whole one if asked), None when absent or null."""
    if raw.get(key) is None:
        return None
    value = raw[key]
    try:
        number = None if isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        number = None
    if number is None or not number > 0 or (whole and number != int(number)):
        kind = "a whole number" if whole else "a number"
        raise RulesError(f"{path}.{key}", f"expected {kind} above 0, got {kind_of(value)}")
    return number
