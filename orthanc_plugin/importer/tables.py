"""What the import folder took: one row per file (and per ZIP member), the instances it stored."""

from __future__ import annotations

from typing import Any

from orthanc_plugin.audit.clock import now_iso
from orthanc_plugin.db_engine import StateDatabase

SCHEMA = """
CREATE TABLE IF NOT EXISTS import_files(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    path TEXT NOT NULL,
    size INTEGER,
    mtime_ns INTEGER,
    sha256 TEXT,
    state TEXT NOT NULL,
    instance_id TEXT,
    detail TEXT,
    at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS import_files_path ON import_files(path, size, mtime_ns);
CREATE INDEX IF NOT EXISTS import_files_sha ON import_files(sha256, state);
CREATE TABLE IF NOT EXISTS import_instances(
    instance_id TEXT PRIMARY KEY,
    at TEXT NOT NULL
);
"""

STATES = ("stored", "duplicate", "quarantined", "taken")


class ImportTables:
    def __init__(self, db: StateDatabase) -> None:
        self.db = db

    def already_taken(self, path: str, size: int, mtime_ns: int) -> bool:
        return bool(self.db.query(
            "SELECT 1 FROM import_files WHERE path=? AND size=? AND mtime_ns=? LIMIT 1",
            (path, size, mtime_ns),
        ))

    def stored_before(self, sha256: str) -> bool:
        return bool(self.db.query(
            "SELECT 1 FROM import_files WHERE sha256=? AND state IN ('stored','taken') LIMIT 1",
            (sha256,),
        ))

    def expect_instance(self, instance_id: str) -> None:
        """Before the store: the intake may describe the instance before the POST returns."""
        with self.db.transaction() as connection:
            connection.execute(
                "INSERT INTO import_instances(instance_id, at) VALUES(?,?) ON CONFLICT DO NOTHING",
                (instance_id, now_iso()),
            )

    def is_imported(self, instance_id: str) -> bool:
        return bool(self.db.query(
            "SELECT 1 FROM import_instances WHERE instance_id=?", (instance_id,)))

    def record(self, path: str, size: int, mtime_ns: int | None, sha256: str | None, state: str,
               instance_id: str = "", detail: str = "") -> None:
        with self.db.transaction() as connection:
            connection.execute(
                "INSERT INTO import_files(path, size, mtime_ns, sha256, state, instance_id, detail,"
                " at) VALUES(?,?,?,?,?,?,?,?)",
                (path, size, mtime_ns, sha256, state, instance_id, detail, now_iso()),
            )

    def progress(self, recent: int = 20) -> dict[str, Any]:
        counts = {row["state"]: row["n"] for row in self.db.query(
            "SELECT state, COUNT(*) AS n FROM import_files GROUP BY state")}
        # CAST: PostgreSQL takes no '' for a missing number (SQLite's || casts the same way).
        files = self.db.query(
            "SELECT COUNT(DISTINCT path || ':' || COALESCE(CAST(size AS TEXT),'') || ':' ||"
            " COALESCE(CAST(mtime_ns AS TEXT),'')) AS n FROM import_files WHERE path NOT LIKE '%!%'"
        )[0]["n"]
        last = [dict(row) for row in self.db.query(
            "SELECT path, state, instance_id, detail, at FROM import_files ORDER BY id DESC LIMIT ?",
            (recent,))]
        return {
            "files_seen": files,
            "stored": counts.get("stored", 0),
            "duplicate": counts.get("duplicate", 0),
            "quarantined": counts.get("quarantined", 0),
            "recent": last,
        }
