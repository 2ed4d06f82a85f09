"""Priorities of rules and manual sends: which waiting job a destination takes first.

Named levels, ten apart: a job gains one level's worth (10) for each AGING_SECONDS_PER_LEVEL it
has waited, so an urgent plan passes ahead of a research export queued before it, and the
export, however low, is never starved: after a while it outranks newer urgent work.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any

from orthanc_plugin.rules.errors import RulesError
from orthanc_plugin.rules.wording import kind_of, one_of

AGING_SECONDS_PER_LEVEL = 600.0   # ten minutes of waiting is worth one level


class Priority(IntEnum):
    LOW = 0
    NORMAL = 10
    HIGH = 20
    URGENT = 30

    @property
    def word(self) -> str:
        return self.name.lower()


NAMES = tuple(priority.word for priority in Priority)


def parse_priority(raw: Any, path: str) -> Priority:
    if isinstance(raw, str) and raw.strip().lower() in NAMES:
        return Priority[raw.strip().upper()]
    raise RulesError(path, f"unknown priority {kind_of(raw)} (expected one of: {one_of(NAMES)})")


def priority_word(value: int) -> str:
    """The nearest named level at or below a stored number."""
    named = [p for p in Priority if p <= value]
    return (named[-1] if named else Priority.LOW).word
