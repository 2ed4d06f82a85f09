"""How far the intake may move its cursor in Orthanc's `/changes` log without skipping a change.

One Orthanc on its SQLite index numbers its changes in commit order: a number missing from the log
is a change deleted with its resource, never one still to come. Orthanc on a PostgreSQL index
(one node with concurrent stores, or several nodes sharing the index) does not: a change numbered
41 can become visible after 42 has been read (its transaction committed later), and a reader that
then asks `since=42` has lost 41 for good.

So, on such an index, the cursor moves only through an unbroken run of numbers. At a gap it stops;
the changes after the gap are taken at once, and the log is read again from the cursor every
REREAD_SECONDS (in between, only what is newer than what was read) until the missing number shows
up. A number can also be missing for good (a store that rolled back, a deleted resource's change):
a gap older than `gap_wait_seconds`, longer than any store transaction lasts, cannot fill any more,
and the cursor moves past it after one more read from the cursor.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

# Longer than an instance's store transaction in Orthanc takes (milliseconds; seconds under a
# slow disk), short enough that a lost number holds the cursor back only briefly.
GAP_WAIT_SECONDS = 10.0
# While a gap is open, how often the log is read again from the cursor (a read of up to 1,000
# changes); the passes in between read only what is new.
REREAD_SECONDS = 1.0


@dataclass
class ChangesCursor:
    # 0: Orthanc's own SQLite index, whose gaps never fill: the cursor passes them at once.
    gap_wait_seconds: float = 0.0
    # The first missing number of each open gap -> when it was first seen (monotonic seconds).
    gaps_seen: dict[int, float] = field(default_factory=dict)
    # The highest change number read so far, and the numbers past the cursor already taken in
    # (this process): a re-read takes only what it had not (a new change, or a late one).
    read_through: int = 0
    taken: set[int] = field(default_factory=set)
    last_full_read: float = float("-inf")

    def since(self, cursor: int, now: float) -> int:
        """Where the next read of the log starts: the cursor, unless a gap is open and the last
        read from the cursor is recent (then: past what was read already)."""
        if self.waiting_for(cursor) is None or now - self.last_full_read >= REREAD_SECONDS:
            return cursor
        return max(cursor, self.read_through)

    def take(self, cursor: int, since: int, numbers: Sequence[int],
             now: float) -> tuple[int, set[int]]:
        """After a read from `since`: (the new cursor, the numbers to take in now). A read from
        the cursor may move it; a read from further on only adds what is new."""
        fresh = {number for number in numbers if number > cursor} - self.taken
        self.taken |= fresh
        if numbers:
            self.read_through = max(self.read_through, *numbers)
        if since != cursor:
            return cursor, fresh
        self.last_full_read = now
        advanced = self.advance(cursor, numbers, now)
        self.taken = {number for number in self.taken if number > advanced}
        return advanced, fresh

    def advance(self, cursor: int, numbers: Sequence[int], now: float) -> int:
        """The new cursor after reading `numbers` (the changes' `Seq`, in any order) from
        `cursor`: the end of the unbroken run from cursor + 1, gaps older than the wait
        included."""
        expected = cursor + 1
        for number in sorted(set(numbers)):
            if number < expected:
                continue
            if number > expected:
                first_seen = self.gaps_seen.setdefault(expected, now)
                if now - first_seen < self.gap_wait_seconds:
                    break
            expected = number + 1
        advanced = expected - 1
        self.gaps_seen = {gap: seen for gap, seen in self.gaps_seen.items() if gap > advanced}
        return advanced

    def waiting_for(self, cursor: int) -> int | None:
        """The missing change number the cursor waits at, or None."""
        waiting = [gap for gap in self.gaps_seen if gap > cursor]
        return min(waiting) if waiting else None
