"""Phrases shared by the error and why-not messages, so they read the same everywhere."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any


def one_of(known: Iterable[str]) -> str:
    return ", ".join(sorted(known))


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """' (did you mean X?)' for a near miss, else ''; typos are the usual cause of unknown names."""
    by_folded = {candidate.casefold(): candidate for candidate in candidates}
    close = difflib.get_close_matches(word.casefold(), list(by_folded), n=1, cutoff=0.8)
    return f" (did you mean {by_folded[close[0]]}?)" if close else ""


def kind_of(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return f"'{value}'"
    return type(value).__name__


def listing(values: Iterable[str], quote: bool, limit: int = 5) -> str:
    """Up to `limit` distinct values, sorted, then how many more there were."""
    distinct = sorted(set(values))
    shown = [f"'{value}'" if quote else value for value in distinct[:limit]]
    more = len(distinct) - limit
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")
