"""The Orthanc store jobs the gateway started (forwarding/tables.py `orthanc_store_jobs`), read by the
plugin at Orthanc's start, read-only and before any worker exists (host.py says why it cannot
wait for one). Forwarding writes them (forwarding/store.py mark_in_flight); this reads the file
directly, not through the forwarding package, which Orthanc's process must not import.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path


def gateway_store_jobs(database: Path, candidates: list[str]) -> list[str]:
    """Which of these Orthanc job IDs are store jobs the gateway started; none when the file
    cannot be read (a first start, a locked or damaged file: nothing is cancelled then)."""
    if not database.exists() or not candidates:
        return []
    marks = ",".join("?" * len(candidates))
    try:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=2) as connection:
            rows = connection.execute(
                f"SELECT orthanc_job FROM orthanc_store_jobs WHERE orthanc_job IN ({marks})",
                candidates).fetchall()
    except sqlite3.Error:
        return []
    return [str(row[0]) for row in rows]
