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
-- Several nodes polling one folder on shared storage: the node that holds a file's row reads,
-- stores, quarantines or removes it; the others leave it alone. A file replaced later (another
-- size or time) is another row. A holder that stops renewing (its node died) is taken over
-- once claimed_until has passed; done_at says the file was taken whole.
CREATE TABLE IF NOT EXISTS import_claims(
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    node TEXT NOT NULL,
    claimed_until REAL NOT NULL,
    claimed_at TEXT NOT NULL,
    done_at TEXT,
    PRIMARY KEY(path, size, mtime_ns)
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

    # -- claims: one node per file on shared storage ----------------------------------------------
    def claim(self, path: str, size: int, mtime_ns: int, node: str, until: float,
              now: float) -> bool:
        """True when `node` now holds the file until `until`: it was nobody's, already this
        node's, or its holder's claim ran out without the file being taken (compare-and-set:
        of two nodes asking at once, one gets it)."""
        key = (path, size, mtime_ns)
        with self.db.transaction() as connection:
            if connection.execute(
                    "INSERT INTO import_claims(path, size, mtime_ns, node, claimed_until,"
                    " claimed_at) VALUES(?,?,?,?,?,?) ON CONFLICT DO NOTHING",
                    (*key, node, until, now_iso())).rowcount == 1:
                return True
            return connection.execute(
                "UPDATE import_claims SET node=?, claimed_until=?, claimed_at=? WHERE path=?"
                " AND size=? AND mtime_ns=? AND done_at IS NULL AND (node=? OR claimed_until<?)",
                (node, until, now_iso(), *key, node, now)).rowcount == 1

    def renew(self, path: str, size: int, mtime_ns: int, node: str, until: float) -> bool:
        """Extends the node's claim; False when it is not the node's any more (taken over)."""
        with self.db.transaction() as connection:
            return connection.execute(
                "UPDATE import_claims SET claimed_until=? WHERE path=? AND size=? AND mtime_ns=?"
                " AND node=? AND done_at IS NULL", (until, path, size, mtime_ns, node)).rowcount == 1

    def finish(self, path: str, size: int, mtime_ns: int, node: str) -> None:
        with self.db.transaction() as connection:
            connection.execute(
                "UPDATE import_claims SET done_at=? WHERE path=? AND size=? AND mtime_ns=?"
                " AND node=?", (now_iso(), path, size, mtime_ns, node))

    def release(self, path: str, size: int, mtime_ns: int, node: str) -> None:
        """The file was not taken (Orthanc unreachable, the file vanished): anyone may try it."""
        with self.db.transaction() as connection:
            connection.execute(
                "DELETE FROM import_claims WHERE path=? AND size=? AND mtime_ns=? AND node=?"
                " AND done_at IS NULL", (path, size, mtime_ns, node))

    def claims(self) -> list[dict[str, Any]]:
        return [dict(row) for row in self.db.query(
            "SELECT path, size, mtime_ns, node, claimed_until, claimed_at, done_at"
            " FROM import_claims ORDER BY path, size, mtime_ns")]

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
