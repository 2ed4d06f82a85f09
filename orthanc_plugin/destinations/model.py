"""A destination's policy as pure values: how many associations at once, how fast, and when.

Time windows are written the way sites post opening hours: `"Mo-Fr 19:00-06:00"`, `"Sa-Su"`,
`"22:00-05:00"` (every day), `"Mo,We 12:00-13:00"`. A window whose end is before its start runs
past midnight into the next day: the days name the day it opens.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, time, timedelta, tzinfo

DAYS = ("Mo", "Tu", "We", "Th", "Fr", "Sa", "Su")
_TIME = r"([01]\d|2[0-3]):([0-5]\d)"
_WINDOW = re.compile(rf"^\s*(?:(?P<days>[A-Za-z,\-]+)\s*)?"
                     rf"(?:(?P<start>{_TIME})\s*-\s*(?P<end>{_TIME}|24:00))?\s*$")


class WindowError(ValueError):
    pass


@dataclass(frozen=True)
class Window:
    days: frozenset[int]     # 0 = Monday
    start: time
    end: time | None         # None: until midnight (a whole day, or 24:00)
    text: str

    @property
    def overnight(self) -> bool:
        return self.end is not None and self.end <= self.start and self.end != time(0)

    def slots(self, day: datetime) -> list[tuple[datetime, datetime]]:
        """The open spans that start on this local day (0 or 1)."""
        if day.weekday() not in self.days:
            return []
        opens = day.replace(hour=self.start.hour, minute=self.start.minute, second=0,
                            microsecond=0)
        if self.end is None or self.end == time(0):
            closes = (day + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
        else:
            closes = day.replace(hour=self.end.hour, minute=self.end.minute, second=0,
                                 microsecond=0)
            if self.overnight:
                closes += timedelta(days=1)
        return [(opens, closes)]


def parse_window(text: str) -> Window:
    match = _WINDOW.match(text) if isinstance(text, str) else None
    if match is None or not (match.group("days") or match.group("start")):
        raise WindowError(f"expected a window such as 'Mo-Fr 19:00-06:00', 'Sa-Su' or "
                          f"'22:00-05:00', got {text!r}")
    days = _days(match.group("days")) if match.group("days") else frozenset(range(7))
    if match.group("start"):
        start = time.fromisoformat(match.group("start"))
        end_text = match.group("end")
        end = None if end_text == "24:00" else time.fromisoformat(end_text)
        if end == start:
            raise WindowError(f"window {text!r} opens and closes at the same time")
    else:
        start, end = time(0), None
    return Window(days, start, end, text.strip())


def _days(text: str) -> frozenset[int]:
    chosen: set[int] = set()
    for part in text.split(","):
        ends = part.split("-")
        if len(ends) > 2 or any(end.capitalize() not in DAYS for end in ends):
            raise WindowError(f"unknown days {part!r} (expected Mo, Tu, We, Th, Fr, Sa, Su, "
                              "a range such as Mo-Fr, or a list such as Mo,We)")
        first, last = (DAYS.index(end.capitalize()) for end in (ends[0], ends[-1]))
        day = first
        while True:  # Fr-Mo wraps over the weekend
            chosen.add(day)
            if day == last:
                break
            day = (day + 1) % 7
    return frozenset(chosen)


@dataclass(frozen=True)
class WindowState:
    open: bool
    changes_at: datetime | None   # when it next opens (closed) or closes (open); None: never


def window_state(windows: tuple[Window, ...], now: datetime) -> WindowState:
    """Whether `now` (an aware local time) is inside a window, and when that next changes."""
    if not windows:
        return WindowState(True, None)
    spans = sorted(span for days_back in range(-1, 9) for window in windows
                   for span in window.slots(now + timedelta(days=days_back)))
    inside = any(opens <= now < closes for opens, closes in spans)
    if inside:
        # The end of the run of overlapping or touching spans that holds now.
        end = max(closes for opens, closes in spans if opens <= now < closes)
        for opens, closes in spans:
            if opens <= end < closes:
                end = closes
        return WindowState(True, end)
    upcoming = [opens for opens, _ in spans if opens > now]
    return WindowState(False, min(upcoming) if upcoming else None)


@dataclass(frozen=True)
class DestinationPolicy:
    name: str
    max_associations: int | None = None
    max_instances_per_minute: int | None = None
    max_mb_per_minute: float | None = None
    windows: tuple[Window, ...] = ()
    time_zone: tzinfo | None = None     # None: the machine's local time
    zone_name: str = ""
    # Where its jobs go instead once they have failed to reach it for failover_after_seconds, or
    # parked ('' : nowhere). Each job moves whole, so a plan never goes half to each.
    failover: str = ""
    failover_after_seconds: float = 600.0
    # What its copy is made of (orthanc_plugin/transform): a transfer syntax by name and a tag
    # coercion (opaque here), applied to every forward to it, by rule or by hand.
    transfer_syntax: str = "as-received"
    coercion: object | None = None
    transfer_syntax_title: str = ""

    def local(self, epoch: float) -> datetime:
        return datetime.fromtimestamp(epoch, self.time_zone).astimezone(self.time_zone)

    def summary(self) -> str:
        """The policy as a person reads it, for the page."""
        parts = []
        if self.max_associations is not None:
            parts.append(f"{self.max_associations} association(s) at a time")
        if self.max_instances_per_minute is not None:
            parts.append(f"{self.max_instances_per_minute} instances per minute")
        if self.max_mb_per_minute is not None:
            parts.append(f"{self.max_mb_per_minute:g} MB per minute")
        if self.windows:
            parts.append("only " + ", ".join(w.text for w in self.windows)
                         + (f" ({self.zone_name})" if self.zone_name else ""))
        if self.failover:
            parts.append(f"fails over to {self.failover} after "
                         f"{_minutes(self.failover_after_seconds)} unreachable or when parked")
        if self.transfer_syntax_title:
            parts.append(f"sent as {self.transfer_syntax_title}")
        if self.coercion is not None:
            parts.append("tags changed on its copy")
        return "; ".join(parts) or "no limits"


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:g} min" if seconds >= 60 else f"{seconds:g} s"


def failover_cycle(policies: dict[str, DestinationPolicy]) -> list[str] | None:
    """A chain of failovers that comes back to where it started (A -> B -> A), if any."""
    for start in policies:
        seen = [start]
        current = policies[start].failover
        while current:
            if current in seen:
                return [*seen, current]
            seen.append(current)
            nxt = policies.get(current)
            current = nxt.failover if nxt else ""
    return None
