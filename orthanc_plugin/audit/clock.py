"""One time format for every audit row: UTC ISO 8601, sortable as text."""

from datetime import UTC, datetime


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def iso_at(epoch: float) -> str:
    """The same format for a given time (a cutoff compared with stored stamps as text)."""
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")


def epoch_of(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()
