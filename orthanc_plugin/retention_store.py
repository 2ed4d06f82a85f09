"""Retention's store: the batch-limited reads and deletes that prune the tables growing with every
instance, and the pruned totals kept in meta. SQL only here; retention.py keeps the flow (which
kinds, in which order, how many per batch) and owns the transactions, so every function takes the
caller's connection and one batch's deletes and totals commit together.

Beside retention.py rather than inside audit/ or jobs/: one pruning round spans the queue's
tables (jobs, job_items, study_progress, own_output), the audit's (transfers, evaluations,
audit_events, received) and meta, and its batches share one shape (select a bounded, ordered
set of keys, delete exactly those).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from orthanc_plugin.db_engine import POSTGRESQL, DbConnection, dialect_of


@dataclass(frozen=True)
class PrunedItem:
    """An item of a finished job about to go: the ledger keeps its (rule, target, instance)."""

    rule: str
    target: str
    instance_id: str


@dataclass(frozen=True)
class PrunedTransfer:
    id: int
    target: str
    instances: int
    bytes: int
    status: str


@dataclass(frozen=True)
class PrunedEvaluation:
    id: int
    matched: bool
    new_instances: int


# -- totals --------------------------------------------------------------------------------------
def add_to_meta_totals(connection: DbConnection, totals: Mapping[str, float]) -> None:
    """Adds each value to the number kept under its key (a missing key counts as 0). DOUBLE
    PRECISION: SQLite's REAL (PostgreSQL's REAL has 24 bits); the kept row named meta.value
    (PostgreSQL finds a bare `value` ambiguous beside excluded's). The text reads back with
    float() on both engines (SQLite writes 3.0, PostgreSQL 3)."""
    connection.executemany(
        "INSERT INTO meta(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET "
        "value = CAST(CAST(meta.value AS DOUBLE PRECISION) + "
        "CAST(excluded.value AS DOUBLE PRECISION) AS TEXT)",
        [(key, str(value)) for key, value in totals.items()])


def meta_ints(connection: DbConnection, keys: Sequence[str]) -> list[int]:
    """The values of those of these keys that are set, as integers (in no particular order)."""
    return [int(row[0]) for row in connection.execute(
        f"SELECT value FROM meta WHERE key IN ({_marks(keys)})", tuple(keys))]


def has_table(connection: DbConnection, name: str) -> bool:
    """Whether the database has this table (its engine's catalogue: the caller hands a
    connection only)."""
    if dialect_of(connection) == POSTGRESQL:
        return connection.execute(
            "SELECT 1 FROM information_schema.tables WHERE table_schema = current_schema() "
            "AND table_name = ?", (name.lower(),)).fetchone() is not None
    return connection.execute("SELECT 1 FROM sqlite_master WHERE name=?",
                              (name,)).fetchone() is not None


# -- finished jobs -------------------------------------------------------------------------------
def done_jobs_before(connection: DbConnection, cutoff: str, limit: int) -> list[int]:
    """IDs of the done jobs last updated before `cutoff`, least recently updated first, at most
    `limit`. In the order of the index by (state, updated_at): a round reads the jobs it prunes,
    not every finished job once per batch (tests/unit/test_query_plans.py)."""
    return [int(row[0]) for row in connection.execute(
        "SELECT id FROM jobs WHERE state='done' AND updated_at < ? ORDER BY updated_at, id "
        "LIMIT ?", (cutoff, limit))]


def items_of_jobs(connection: DbConnection, job_ids: Sequence[int]) -> list[PrunedItem]:
    return [PrunedItem(row["rule"], row["target"], row["instance_id"])
            for row in connection.execute(
                f"SELECT rule, target, instance_id FROM job_items "
                f"WHERE job_id IN ({_marks(job_ids)})", tuple(job_ids))]


def delete_jobs(connection: DbConnection, job_ids: Sequence[int]) -> int:
    """The jobs and their items; returns how many jobs went."""
    marks = _marks(job_ids)
    connection.execute(f"DELETE FROM job_items WHERE job_id IN ({marks})", tuple(job_ids))
    return connection.execute(f"DELETE FROM jobs WHERE id IN ({marks})", tuple(job_ids)).rowcount


# -- transfers and evaluations -------------------------------------------------------------------
def transfers_before(connection: DbConnection, cutoff: str,
                     limit: int) -> list[PrunedTransfer]:
    return [PrunedTransfer(row["id"], row["target"], row["instances"], row["bytes"],
                           row["status"])
            for row in connection.execute(
                "SELECT id, target, instances, bytes, status FROM transfers WHERE started_at < ? "
                "ORDER BY started_at, id LIMIT ?", (cutoff, limit))]


def delete_transfers(connection: DbConnection, ids: Sequence[int]) -> int:
    return connection.execute(f"DELETE FROM transfers WHERE id IN ({_marks(ids)})",
                              tuple(ids)).rowcount


def evaluations_before(connection: DbConnection, cutoff: str,
                       limit: int) -> list[PrunedEvaluation]:
    return [PrunedEvaluation(row["id"], bool(row["matched"]), row["new_instances"])
            for row in connection.execute(
                "SELECT id, matched, new_instances FROM evaluations WHERE at < ? "
                "ORDER BY at, id LIMIT ?", (cutoff, limit))]


def delete_evaluations(connection: DbConnection, ids: Sequence[int]) -> int:
    return connection.execute(f"DELETE FROM evaluations WHERE id IN ({_marks(ids)})",
                              tuple(ids)).rowcount


# -- rows deleted by age alone -------------------------------------------------------------------
def delete_audit_events_before(connection: DbConnection, cutoff: str, limit: int) -> int:
    return _delete_batch(connection, "audit_events", "id", "at < ?", (cutoff,), limit)


def delete_quiet_studies_before(connection: DbConnection, cutoff_epoch: float,
                                limit: int) -> int:
    """Study rows last heard from before the cutoff whose received rows are all gone."""
    return _delete_batch(
        connection, "study_progress", "study_id", "last_received_at < ? AND NOT EXISTS (SELECT 1 "
        "FROM received r WHERE r.study_id = study_progress.study_id)", (cutoff_epoch,), limit)


def delete_own_outputs_before(connection: DbConnection, cutoff: str, limit: int) -> int:
    return _delete_batch(connection, "own_output", "instance_id", "at < ?", (cutoff,), limit)


# -- the intake's received rows ------------------------------------------------------------------
def delete_finished_received(connection: DbConnection, cutoff: str,
                             followed_up_to: int | None, limit: int, *,
                             wait_for_index: bool) -> int:
    """Rows every rule and follower is done with, oldest first: instance rules ran (or the
    instance is gone or quarantined), its study's stable rules ran past it, every follower's
    cursor passed it (`followed_up_to`; None: no follower has one yet), and no unfinished job
    still names the instance. With `wait_for_index`, a gone instance's row also waits until the
    index has dropped its entry."""
    index_waits = (
        "AND NOT (r.state = 'gone' AND EXISTS (SELECT 1 FROM index_entries e "
        "WHERE e.instance_id = r.instance_id)) " if wait_for_index else "")
    return connection.execute(
        "DELETE FROM received WHERE seq IN (SELECT r.seq FROM received r WHERE "
        "r.received_at < ? AND r.state <> 'new' "
        "AND (r.instance_rules_done = 1 OR r.state IN ('gone', 'quarantined')) "
        # CAST: PostgreSQL cannot tell the type of a parameter tested only for NULL.
        "AND (CAST(? AS TEXT) IS NULL OR r.seq <= ?) "
        "AND r.seq <= COALESCE((SELECT p.stable_done_seq FROM study_progress p "
        "                       WHERE p.study_id = r.study_id), r.seq) "
        # Uncorrelated, so SQLite builds the (small) set of unfinished instances once.
        "AND r.instance_id NOT IN (SELECT i.instance_id FROM jobs j JOIN job_items i "
        "                          ON i.job_id = j.id WHERE j.state <> 'done') "
        f"{index_waits}ORDER BY r.seq LIMIT ?)",
        (cutoff, followed_up_to, followed_up_to, limit)).rowcount


def _delete_batch(connection: DbConnection, table: str, key: str, where: str,
                  values: Iterable[Any], limit: int) -> int:
    return connection.execute(
        f"DELETE FROM {table} WHERE {key} IN (SELECT {key} FROM {table} WHERE {where} "
        f"LIMIT ?)", (*values, limit)).rowcount


def _marks(values: Sequence[Any]) -> str:
    return ",".join("?" * len(values))
