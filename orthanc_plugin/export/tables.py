"""The FileTransfer table, with the old DRAW tool's columns (plus the source AE and content hash).

Its names are mixed case, as the DRAW tool wrote them: quoted in the schema and in every statement,
so that PostgreSQL keeps them as written (it folds unquoted names to lower case; SQLite keeps them
either way) and the rows read back carry the same names on both engines."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from orthanc_plugin.audit.clock import now_iso
from orthanc_plugin.db_engine import POSTGRESQL, DbConnection, StateDatabase
from orthanc_plugin.export.model import Claim

SCHEMA = """
CREATE TABLE IF NOT EXISTS "FileTransfer"(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    "PatientUID" TEXT,
    "PatientName" TEXT,
    "SOPInstanceUID" TEXT NOT NULL,
    "SourcePath" TEXT,
    "SourceAET" TEXT,
    "StudyDate" TEXT,
    "ModifiedFileName" TEXT NOT NULL,
    "DestinationPath" TEXT NOT NULL,
    "ExportDate" TEXT NOT NULL,
    "ContentSHA256" TEXT NOT NULL,
    "Rule" TEXT
);
CREATE INDEX IF NOT EXISTS FileTransfer_sop ON "FileTransfer"("SOPInstanceUID", "DestinationPath");
-- One row per file name in a folder, taken before the file is written: of several workers (on
-- one node or on several sharing the folder) exporting the same file at once, the holder alone
-- writes it and records it (done_at, with its FileTransfer row). A name stays bound to the one
-- content (sha256) first claimed under it. token: the holder's claim, changed by a takeover.
CREATE TABLE IF NOT EXISTS export_claims(
    destination TEXT NOT NULL,
    name TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    node TEXT NOT NULL,
    token TEXT NOT NULL,
    claimed_until REAL NOT NULL,
    claimed_at TEXT NOT NULL,
    done_at TEXT,
    PRIMARY KEY(destination, name)
);
"""

FILTERS = {"patient": "PatientUID", "sop": "SOPInstanceUID", "destination": "DestinationPath",
           "rule": "Rule"}


def previous_exports(db: StateDatabase, sop_instance_uid: str,
                     folder: str) -> list[tuple[str, str]]:
    rows = db.query(
        'SELECT "ContentSHA256", "ModifiedFileName" FROM "FileTransfer" WHERE '
        '"SOPInstanceUID"=? AND "DestinationPath"=? ORDER BY id',
        (sop_instance_uid, folder),
    )
    return [(row["ContentSHA256"], row["ModifiedFileName"]) for row in rows]


def record_export(db: StateDatabase, row: dict[str, Any]) -> int:
    """The row (column name -> value, the names the schema's) added; its id."""
    with db.transaction() as connection:
        return _insert_export(connection, row)


def _insert_export(connection: DbConnection, row: dict[str, Any]) -> int:
    columns = ", ".join(f'"{name}"' for name in row)
    marks = ", ".join("?" * len(row))
    return int(connection.execute(
        f'INSERT INTO "FileTransfer"({columns}) VALUES({marks}) RETURNING id',
        tuple(row.values())).fetchall()[0]["id"])


@dataclass(frozen=True)
class FileClaim:
    """Who asks for a file name: the node (for people), the claim's own token (what fences it:
    two threads of one node are two claims) and until when it holds without being finished."""

    node: str
    token: str
    until: float


def claim_file(db: StateDatabase, destination: str, name: str, sha256: str, claim: FileClaim,
               now: float) -> tuple[Claim, float]:
    """Takes the name for this content, or says who has it; with the time the holder's claim
    runs out (for HELD). A claim that ran out unfinished (its worker paused or its node died)
    is taken over (compare-and-set on its token: of two takers, one wins)."""
    with db.transaction() as connection:
        if connection.execute(
                "INSERT INTO export_claims(destination, name, sha256, node, token, claimed_until,"
                " claimed_at) VALUES(?,?,?,?,?,?,?) ON CONFLICT DO NOTHING",
                (destination, name, sha256, claim.node, claim.token, claim.until,
                 now_iso())).rowcount == 1:
            return Claim.MINE, claim.until
        # PostgreSQL: a row locked by publish_claimed is being put in place right now.
        skip = " FOR UPDATE SKIP LOCKED" if db.dialect == POSTGRESQL else ""
        row = connection.execute(
            "SELECT sha256, token, claimed_until, done_at FROM export_claims"
            f" WHERE destination=? AND name=?{skip}", (destination, name)).fetchone()
        if row is None:
            return Claim.HELD, now
        if row["sha256"] != sha256:
            return Claim.OTHER, now
        if row["done_at"]:
            return Claim.DONE, now
        if float(row["claimed_until"]) >= now:
            return Claim.HELD, float(row["claimed_until"])
        taken = connection.execute(
            "UPDATE export_claims SET node=?, token=?, claimed_until=?, claimed_at=?"
            " WHERE destination=? AND name=? AND token=? AND done_at IS NULL",
            (claim.node, claim.token, claim.until, now_iso(), destination, name,
             row["token"])).rowcount == 1
        return (Claim.MINE, claim.until) if taken else (Claim.HELD, now)


def publish_claimed(db: StateDatabase, destination: str, name: str, token: str,
                    put_in_place: Callable[[], object], row: dict[str, Any]) -> bool:
    """If the claim `token` still holds the name: the file put in place, its FileTransfer row
    added and the claim marked done, all under the claim's row lock, so no takeover slips
    between the check and the rename. False (nothing done) when the claim was taken over."""
    lock = " FOR UPDATE" if db.dialect == POSTGRESQL else ""  # SQLite: the one writer
    with db.transaction() as connection:
        if connection.execute(
                "SELECT 1 FROM export_claims WHERE destination=? AND name=? AND token=?"
                f" AND done_at IS NULL{lock}", (destination, name, token)).fetchone() is None:
            return False
        put_in_place()
        _insert_export(connection, row)
        connection.execute("UPDATE export_claims SET done_at=? WHERE destination=? AND name=?",
                           (now_iso(), destination, name))
        return True


def release_claim(db: StateDatabase, destination: str, name: str, token: str) -> None:
    """The holder gave up (the folder went away): anyone may claim the name at once."""
    with db.transaction() as connection:
        connection.execute(
            "DELETE FROM export_claims WHERE destination=? AND name=? AND token=?"
            " AND done_at IS NULL", (destination, name, token))


def export_claims(db: StateDatabase) -> list[dict[str, Any]]:
    return [dict(row) for row in db.query(
        "SELECT destination, name, sha256, node, token, claimed_until, claimed_at, done_at"
        " FROM export_claims ORDER BY destination, name")]


def transfers(db: StateDatabase, query: dict[str, str],
              limit: int = 1000) -> list[dict[str, Any]]:
    """Rows filtered by ?patient=&sop=&destination=&rule=; unknown filters are refused."""
    unknown = [key for key in query if key not in FILTERS and key not in ("format", "limit")]
    if unknown:
        raise KeyError(f"unknown filter '{unknown[0]}' (expected one of: {', '.join(FILTERS)})")
    where = [f'"{FILTERS[key]}" = ?' for key in query if key in FILTERS]
    values = [query[key] for key in query if key in FILTERS]
    sql = 'SELECT * FROM "FileTransfer"'
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY id LIMIT ?"
    return [dict(row) for row in db.query(sql, (*values, limit))]
