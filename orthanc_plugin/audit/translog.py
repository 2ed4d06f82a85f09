"""The daily transaction log: one tab-separated line per event, a file per UTC day."""

from __future__ import annotations

import re
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

# Lines held in memory while the log's disk is full; beyond, the oldest are counted as lost.
MAX_WAITING_LINES = 100_000
COLUMNS = ("time", "source_ip", "calling_aet", "study_uid", "rule", "destination", "outcome")


class TransactionLog:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # Lines a full disk refused, written first at the next write that works.
        self._waiting: list[tuple[Path, str]] = []
        self.refused_writes = 0
        self.lost_lines = 0

    def path_for(self, moment: datetime) -> Path:
        return self.folder / f"transactions-{moment:%Y-%m-%d}.log"

    def mentions(self, text: str, around_iso: str) -> bool:
        """Whether the day's file of the moment (or the next day's, for a line written just
        after midnight) holds a line with the text, followed by no further digit."""
        try:
            moment = datetime.fromisoformat(around_iso)
        except ValueError:
            moment = datetime.now(UTC)
        pattern = re.compile(re.escape(text) + r"(?!\d)")
        for day in (moment, moment + timedelta(days=1)):
            path = self.path_for(day)
            with self._lock:
                try:
                    content = path.read_text(encoding="utf-8", errors="replace")
                except OSError:
                    continue
                if pattern.search(content):
                    return True
        return False

    def write(
        self,
        *,
        source_ip: str | None,
        calling_aet: str | None,
        study_uid: str | None,
        rule: str | None,
        destination: str | None,
        outcome: str,
    ) -> None:
        moment = datetime.now(UTC)
        fields = (
            moment.isoformat(timespec="milliseconds"),
            source_ip,
            calling_aet,
            study_uid,
            rule,
            destination,
            outcome,
        )
        # Tabs and newlines inside a value would break the one-line-per-event format.
        line = "\t".join(_clean(value) for value in fields) + "\n"
        with self._lock:
            self._waiting.append((self.path_for(moment), line))
            try:
                self._write_waiting()
            except OSError:  # a full disk: the database row is written; this line waits
                self.refused_writes += 1
                if len(self._waiting) > MAX_WAITING_LINES:
                    self.lost_lines += len(self._waiting) - MAX_WAITING_LINES
                    del self._waiting[:-MAX_WAITING_LINES]

    def _write_waiting(self) -> None:
        while self._waiting:
            path, line = self._waiting[0]
            is_new = not path.exists()
            with path.open("a", encoding="utf-8") as handle:
                if is_new:
                    handle.write("\t".join(COLUMNS) + "\n")
                handle.write(line)
            self._waiting.pop(0)


def _clean(value: str | None) -> str:
    return "-" if value in (None, "") else str(value).replace("\t", " ").replace("\n", " ")
