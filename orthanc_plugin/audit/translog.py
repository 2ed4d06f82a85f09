"""The daily transaction log: one tab-separated line per event, a file per UTC day."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path

COLUMNS = ("time", "source_ip", "calling_aet", "study_uid", "rule", "destination", "outcome")


class TransactionLog:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def path_for(self, moment: datetime) -> Path:
        return self.folder / f"transactions-{moment:%Y-%m-%d}.log"

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
        path = self.path_for(moment)
        with self._lock:
            is_new = not path.exists()
            with path.open("a", encoding="utf-8") as handle:
                if is_new:
                    handle.write("\t".join(COLUMNS) + "\n")
                handle.write(line)


def _clean(value: str | None) -> str:
    return "-" if value in (None, "") else str(value).replace("\t", " ").replace("\n", " ")
