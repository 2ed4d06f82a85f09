"""The FileTransfer table, with the old DRAW tool's columns (plus the source AE and content hash).

Its names are mixed case, as the DRAW tool wrote them: quoted in the schema and in every statement,
so that PostgreSQL keeps them as written (it folds unquoted names to lower case; SQLite keeps them
either way) and the rows read back carry the same names on both engines."""

from __future__ import annotations

from typing import Any

from orthanc_plugin.db_engine import StateDatabase

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
    columns = ", ".join(f'"{name}"' for name in row)
    marks = ", ".join("?" * len(row))
    with db.transaction() as connection:
        return int(connection.execute(
            f'INSERT INTO "FileTransfer"({columns}) VALUES({marks}) RETURNING id',
            tuple(row.values())).fetchall()[0]["id"])


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
