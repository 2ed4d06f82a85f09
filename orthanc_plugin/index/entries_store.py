"""The gateway database's side of the index (index/tables.py SCHEMA): which Orthanc instances
the index holds, and the received rows the follower walks to keep it in step. SQL only here;
the follower and the maintenance actions own the transactions, so the writers take the caller's
connection. The index file itself is written by store.py.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from orthanc_plugin.db_engine import DbConnection, StateDatabase


@dataclass(frozen=True)
class Received:
    """A received row as the follower needs it (audit/tables.py)."""

    seq: int
    instance_id: str
    state: str
    modality: str | None
    patient_id: str | None
    study_uid: str | None


@dataclass(frozen=True)
class IndexEntry:
    instance_id: str
    sop_instance_uid: str


def received_after(db: StateDatabase, seq: int, limit: int) -> list[Received]:
    """The first `limit` received rows after `seq`, in the order received."""
    return [Received(int(row["seq"]), row["instance_id"], row["state"], row["modality"],
                     row["patient_id"], row["study_uid"])
            for row in db.query(
                "SELECT seq, instance_id, state, modality, patient_id, study_uid FROM received "
                "WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit))]


def note_indexed(connection: DbConnection, instance_id: str, sop_instance_uid: str) -> None:
    connection.execute(
        # ON CONFLICT, not SQLite's INSERT OR REPLACE: PostgreSQL speaks only the former.
        "INSERT INTO index_entries(instance_id, sop_instance_uid) VALUES(?,?) "
        "ON CONFLICT(instance_id) DO UPDATE SET sop_instance_uid = excluded.sop_instance_uid",
        (instance_id, sop_instance_uid))


def gone_entries(db: StateDatabase) -> list[IndexEntry]:
    """Indexed instances that the intake has since seen deleted from Orthanc."""
    return [IndexEntry(row["instance_id"], row["sop_instance_uid"]) for row in db.query(
        "SELECT e.instance_id, e.sop_instance_uid FROM index_entries e JOIN received r "
        "ON r.instance_id = e.instance_id WHERE r.state='gone'")]


def forget(connection: DbConnection, instance_ids: Iterable[str]) -> None:
    connection.executemany("DELETE FROM index_entries WHERE instance_id=?",
                           [(instance_id,) for instance_id in instance_ids])


def forget_all(connection: DbConnection) -> None:
    connection.execute("DELETE FROM index_entries")
