"""The copy names' store (tables.py): the names each copy sent carried, before and after. SQL
only here; the copy recorder owns the transaction (its audit event commits with the names), so
the writer takes the caller's connection.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from orthanc_plugin.db_engine import DbConnection, StateDatabase

CHUNK = 500   # SQLite caps the number of parameters of one statement


@dataclass(frozen=True)
class CopyName:
    """One name of one instance's copy for one destination."""

    instance_id: str
    attribute: str
    before: str
    after: str | None
    status: str


def note_copy_names(connection: DbConnection, at: str, target: str, rule: str,
                    names: Iterable[CopyName]) -> None:
    """The first record of a name of a copy stays: a resend of the same copy adds nothing."""
    connection.executemany(
        "INSERT INTO copy_names(at, instance_id, target, rule, attribute,"
        " before, after, status) VALUES(?,?,?,?,?,?,?,?) ON CONFLICT DO NOTHING",
        [(at, name.instance_id, target, rule, name.attribute, name.before, name.after, name.status)
         for name in names])


def names_of(db: StateDatabase, instance_ids: Sequence[str]) -> list[dict[str, object]]:
    """The names each copy of these instances carried, for the plan page: one row per
    destination, rule, attribute and name before: the one with the latest `at` (of those
    recorded at the same `at`, the first), whole."""
    rows: list[dict[str, object]] = []
    for start in range(0, len(instance_ids), CHUNK):
        chunk = list(instance_ids[start:start + CHUNK])
        # Not GROUP BY with MAX(at) and the other columns bare (SQLite takes them from the
        # latest row; PostgreSQL refuses bare columns): each group's rows numbered, latest first.
        rows.extend(dict(row) for row in db.query(
            f"SELECT target, rule, attribute, before, after, status, at FROM ("
            f"SELECT target, rule, attribute, before, after, status, at, ROW_NUMBER() OVER ("
            f"PARTITION BY target, rule, attribute, before ORDER BY at DESC, id) AS latest"
            f" FROM copy_names WHERE instance_id IN ({','.join('?' * len(chunk))})) AS named"
            f" WHERE latest = 1 ORDER BY target, attribute, before",
            chunk))
    return rows


def unmapped_count(db: StateDatabase) -> int:
    """How many distinct names were sent unchanged for want of a usable match."""
    return int(db.query(
        "SELECT COUNT(DISTINCT before) AS n FROM copy_names WHERE after IS NULL")[0]["n"])


def unmapped_names(db: StateDatabase, limit: int, offset: int) -> list[dict[str, object]]:
    """The names sent unchanged, most seen first: why (the highest status), in how many copies,
    by how many rules, and when last."""
    return [dict(row) for row in db.query(
        "SELECT before AS name, MAX(status) AS status, COUNT(*) AS copies,"
        " COUNT(DISTINCT rule) AS rules, MAX(at) AS last_seen FROM copy_names"
        " WHERE after IS NULL GROUP BY before ORDER BY copies DESC, name LIMIT ? OFFSET ?",
        (limit, offset))]
