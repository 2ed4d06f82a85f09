"""Durations as the rules file writes them: `90s`, `10m`, `2h`, `30d` (a bare number is seconds)."""

from __future__ import annotations

import re
from typing import Any

from orthanc_plugin.rules.errors import RulesError
from orthanc_plugin.rules.wording import kind_of

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)?\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def duration_seconds(value: Any, path: str, *, allow_zero: bool = False) -> float:
    match = _DURATION.match(str(value)) if isinstance(value, str | int | float) else None
    if isinstance(value, bool) or match is None:
        raise RulesError(path, f"expected a duration such as 90s, 10m, 2h or 30d, got {kind_of(value)}")
    seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds <= 0 and not allow_zero:
        raise RulesError(path, "expected a duration above zero")
    return seconds
