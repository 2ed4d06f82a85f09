"""The intake's store: the received rows it keeps (audit/tables.py) and each study's progress
(jobs/tables.py). SQL only here; the intake owns the transactions, so the writers take the
caller's connection and a pass's decisions commit together. SQL both engines accept (db_engine).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from orthanc_plugin.db_engine import DbConnection, DbRow, StateDatabase

# The columns the describe step reads of a new row (what the note already told).
NEW_ROW_COLUMNS = ("seq, instance_id, calling_aet, called_aet, remote_ip, origin, sop_class_uid, "
                   "file_size")


@dataclass(frozen=True)
class NewReceived:
    """A received row not described yet: what the stored-instance note told (NEW_ROW_COLUMNS);
    a row made from Orthanc's log before its note came has None there."""

    seq: int
    instance_id: str
    calling_aet: str | None
    called_aet: str | None
    remote_ip: str | None
    origin: str | None
    sop_class_uid: str | None
    file_size: int | None

    @classmethod
    def from_row(cls, row: DbRow) -> NewReceived:
        return cls(row["seq"], row["instance_id"], row["calling_aet"], row["called_aet"],
                   row["remote_ip"], row["origin"], row["sop_class_uid"], row["file_size"])


@dataclass(frozen=True)
class Received:
    """A whole row of `received` (audit/tables.py), every column: the rules' facts
    (jobs/facts.py), the intake and the plans' tracker read it. The description's columns are
    None until the instance is described."""

    seq: int
    instance_id: str
    received_at: str
    calling_aet: str | None
    called_aet: str | None
    remote_ip: str | None
    origin: str | None
    source: str | None
    sop_class_uid: str | None
    modality: str | None
    patient_id: str | None
    study_id: str | None
    study_uid: str | None
    series_id: str | None
    series_uid: str | None
    sop_instance_uid: str | None
    instance_number: int | None
    plan_label: str | None
    file_size: int | None
    state: str
    instance_rules_done: int

    @classmethod
    def from_row(cls, row: DbRow) -> Received:
        """Every column by its name (a contract test checks the table has no other)."""
        return cls(**{field.name: row[field.name] for field in fields(cls)})

    @classmethod
    def described_in_memory(cls, instance_id: str, description: Mapping[str, Any]) -> Received:
        """An instance the intake never took in, described for a dry run only: no sequence
        number (0), never received (""), ready; `description` gives every other column
        (Intake._describe)."""
        return cls(seq=0, instance_id=instance_id, received_at="", state="ready",
                   instance_rules_done=0, **description)


@dataclass(frozen=True)
class StudyProgress:
    """A row of study_progress: when the study last received an instance, whether Orthanc
    signalled it stable, up to which received row its stable-study rules ran, and the last
    received row described in it."""

    study_id: str
    stable_signalled: int
    last_received_at: float
    stable_done_seq: int
    ready_seq: int


# -- arrival -------------------------------------------------------------------------------------
def note_received(connection: DbConnection, instance_id: str, stamp: str) -> bool:
    """A row for the instance unless it has one; True when this made it."""
    return connection.execute(
        "INSERT INTO received(instance_id, received_at) VALUES(?,?) ON CONFLICT DO NOTHING",
        (instance_id, stamp)).rowcount > 0


def note_many_received(connection: DbConnection, instance_ids: Sequence[str],
                       stamp: str) -> None:
    connection.executemany("INSERT INTO received(instance_id, received_at) VALUES(?,?) "
                           "ON CONFLICT DO NOTHING",
                           [(instance_id, stamp) for instance_id in instance_ids])


def fill_noted(connection: DbConnection, instance_id: str,
               noted: Mapping[str, Any]) -> None:
    """What the stored-instance note told, on a row not described yet."""
    columns = ", ".join(f"{key}=?" for key in noted)
    connection.execute(f"UPDATE received SET {columns} WHERE instance_id=? AND state='new'",
                       (*noted.values(), instance_id))


def undecided(connection: DbConnection, instance_id: str) -> bool:
    """A row made from Orthanc's log before its note came: not described, nothing decided."""
    return connection.execute(
        "SELECT 1 FROM received r WHERE r.instance_id=? AND r.state='new' AND NOT EXISTS ("
        "SELECT 1 FROM arrival_decisions d WHERE d.instance_id = r.instance_id)",
        (instance_id,)).fetchone() is not None


def mark_instance_gone(connection: DbConnection, instance_id: str) -> None:
    connection.execute("UPDATE received SET state='gone' WHERE instance_id=?", (instance_id,))


# -- describing ----------------------------------------------------------------------------------
def new_rows(db: StateDatabase, limit: int) -> list[NewReceived]:
    return [NewReceived.from_row(row) for row in db.query(
        f"SELECT {NEW_ROW_COLUMNS} FROM received WHERE state='new' ORDER BY seq LIMIT ?",
        (limit,))]


def mark_gone(connection: DbConnection, seq: int) -> None:
    connection.execute("UPDATE received SET state='gone' WHERE seq=?", (seq,))


def mark_quarantined(connection: DbConnection, seq: int) -> None:
    connection.execute("UPDATE received SET state='quarantined' WHERE seq=?", (seq,))


def mark_described(connection: DbConnection, seq: int, info: Mapping[str, Any],
                   now: float) -> None:
    """The row as Orthanc's index describes it, ready for the rules; its study heard from now."""
    columns = ", ".join(f"{key}=?" for key in info)
    connection.execute(f"UPDATE received SET {columns}, state='ready' WHERE seq=?",
                       (*info.values(), seq))
    connection.execute(
        "INSERT INTO study_progress(study_id, last_received_at, ready_seq) VALUES(?, ?, ?) "
        "ON CONFLICT(study_id) DO UPDATE SET last_received_at=excluded.last_received_at, "
        "ready_seq=CASE WHEN excluded.ready_seq > study_progress.ready_seq "
        "THEN excluded.ready_seq ELSE study_progress.ready_seq END",
        (info["study_id"], now, seq))


# -- instance rules ------------------------------------------------------------------------------
def rows_for_instance_rules(db: StateDatabase, limit: int) -> list[Received]:
    return [Received.from_row(row) for row in db.query(
        "SELECT * FROM received WHERE state='ready' AND instance_rules_done=0 ORDER BY seq "
        "LIMIT ?", (limit,))]


def mark_instance_rules_done(connection: DbConnection, seq: int) -> None:
    connection.execute("UPDATE received SET instance_rules_done=1 WHERE seq=?", (seq,))


def plan_labels(connection: DbConnection, study_id: str) -> tuple[str, ...]:
    """The labels of the study's described plans, in order: by code point, as SQLite's BINARY
    collation orders them (sorted here: a PostgreSQL database's collation may be a language's)."""
    rows = connection.execute(
        "SELECT DISTINCT plan_label FROM received WHERE study_id=? AND modality='RTPLAN' "
        "AND state='ready' AND plan_label <> ''", (study_id,)).fetchall()
    return tuple(sorted(str(row["plan_label"]) for row in rows))


# -- stable studies ------------------------------------------------------------------------------
def signal_stable(connection: DbConnection, study_id: str) -> None:
    connection.execute(
        "INSERT INTO study_progress(study_id, last_received_at, stable_signalled) VALUES(?, ?, 1) "
        "ON CONFLICT(study_id) DO UPDATE SET stable_signalled=1", (study_id, time.time()))


def studies_with_new_instances(db: StateDatabase) -> list[StudyProgress]:
    """Studies with described instances their stable-study rules have not seen yet.

    Read through the partial index of studies described past what their rules saw (tables.py):
    this runs at every intake pass, and must not visit every study the database keeps. The
    EXISTS still asks for a ready row, as an instance described and then deleted is not new."""
    return [StudyProgress(row["study_id"], row["stable_signalled"], row["last_received_at"],
                          row["stable_done_seq"], row["ready_seq"]) for row in db.query(
        "SELECT p.study_id, p.stable_signalled, p.last_received_at, p.stable_done_seq, p.ready_seq "
        "FROM study_progress p WHERE p.ready_seq > p.stable_done_seq AND EXISTS (SELECT 1 "
        "FROM received r WHERE r.study_id = p.study_id AND r.state='ready' "
        "AND r.seq > p.stable_done_seq)")]


def settle_studies_seen_whole(db: StateDatabase) -> int:
    """Studies in the index of unseen ones whose later instances were all deleted or quarantined
    before their stable-study rules ran: nothing is left for those rules to see, so they leave the
    index (without this, each stayed in it for good, and every intake pass read it again)."""
    with db.transaction() as connection:
        return int(connection.execute(
            "UPDATE study_progress SET stable_done_seq = ready_seq "
            "WHERE ready_seq > stable_done_seq AND NOT EXISTS (SELECT 1 FROM received r "
            "WHERE r.study_id = study_progress.study_id AND r.state='ready' "
            "AND r.seq > study_progress.stable_done_seq)").rowcount)


def study_rows(connection: DbConnection | StateDatabase, study_id: str) -> list[Received]:
    """The study's described instances, in the order they came."""
    rows = connection.execute(
        "SELECT * FROM received WHERE study_id=? AND state='ready' ORDER BY seq",
        (study_id,)).fetchall()
    return [Received.from_row(row) for row in rows]


def stable_rules_done(connection: DbConnection, study_id: str, up_to_seq: int) -> None:
    connection.execute(
        "UPDATE study_progress SET stable_done_seq=?, stable_signalled=0 WHERE study_id=?",
        (up_to_seq, study_id))

