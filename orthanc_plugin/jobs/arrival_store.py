"""The store of decisions taken at arrival (jobs/arrival.py): the arrival_decisions rows, and the
records of their jobs the instance's description completes. SQL only here; the intake owns the
transactions, so every function takes the caller's connection and a decision commits with the
received row and its jobs, its completion with the description. SQL both engines accept
(db_engine).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from orthanc_plugin.audit.recorder import LOG_AWAITS_DESCRIPTION
from orthanc_plugin.db_engine import DbConnection

SCHEMA = """
-- Decisions taken from a stored-instance note, waiting for the instance's description to be
-- recorded in full (jobs/arrival.py); a row lives from arrival to description.
CREATE TABLE IF NOT EXISTS arrival_decisions(
    instance_id TEXT NOT NULL, rule TEXT NOT NULL,
    matched INTEGER NOT NULL, failed_condition TEXT, reason TEXT,
    new_instances INTEGER NOT NULL DEFAULT 0, targets TEXT NOT NULL DEFAULT '[]',
    job_ids TEXT NOT NULL DEFAULT '[]', rules_sha256 TEXT, decided_at TEXT NOT NULL,
    PRIMARY KEY(instance_id, rule)
);
"""
# Instance IDs per IN (...) query: well under SQLite's bound on parameters.
CHUNK = 500


@dataclass(frozen=True)
class ArrivalDecision:
    instance_id: str
    rule: str
    matched: bool
    failed_condition: str | None
    reason: str
    new_instances: int
    targets: tuple[str, ...]
    job_ids: tuple[int, ...]
    rules_sha256: str


def record_decision(connection: DbConnection, decision: ArrivalDecision,
                    decided_at: str) -> None:
    """The decision of one rule on one instance; a later one for the same pair replaces it."""
    connection.execute(
        "INSERT INTO arrival_decisions(instance_id, rule, matched, failed_condition,"
        " reason, new_instances, targets, job_ids, rules_sha256, decided_at)"
        " VALUES(?,?,?,?,?,?,?,?,?,?) ON CONFLICT(instance_id, rule) DO UPDATE SET"
        " matched=excluded.matched, failed_condition=excluded.failed_condition,"
        " reason=excluded.reason, new_instances=excluded.new_instances,"
        " targets=excluded.targets, job_ids=excluded.job_ids,"
        " rules_sha256=excluded.rules_sha256, decided_at=excluded.decided_at",
        (decision.instance_id, decision.rule, int(decision.matched), decision.failed_condition,
         decision.reason, decision.new_instances, json.dumps(list(decision.targets)),
         json.dumps(list(decision.job_ids)), decision.rules_sha256, decided_at),
    )


def decisions_for(connection: DbConnection, instance_ids: Sequence[str]
                  ) -> dict[str, dict[str, ArrivalDecision]]:
    """instance ID -> rule name -> the decision taken at its arrival (an instance without one
    is absent). An instance's rules come by name in code point order, as SQLite's key index
    gives them (sorted here: PostgreSQL's order is the table's and its collation's)."""
    found: dict[str, dict[str, ArrivalDecision]] = {}
    for start in range(0, len(instance_ids), CHUNK):
        chunk = list(instance_ids[start:start + CHUNK])
        rows = connection.execute(
            f"SELECT * FROM arrival_decisions WHERE instance_id IN ({_marks(chunk)})", chunk
        ).fetchall()
        for row in sorted(rows, key=lambda row: (str(row["instance_id"]), str(row["rule"]))):
            found.setdefault(row["instance_id"], {})[row["rule"]] = ArrivalDecision(
                row["instance_id"], row["rule"], bool(row["matched"]),
                row["failed_condition"], row["reason"] or "", row["new_instances"],
                tuple(json.loads(row["targets"])), tuple(json.loads(row["job_ids"])),
                row["rules_sha256"] or "",
            )
    return found


def forget_decisions(connection: DbConnection, instance_id: str) -> None:
    connection.execute("DELETE FROM arrival_decisions WHERE instance_id=?", (instance_id,))


def name_patient_and_study(connection: DbConnection, job_ids: Sequence[int],
                           patient_id: str, study_uid: str) -> None:
    """The description's patient and study on the jobs still waiting for it, and on their
    transfer and audit rows written without a study (a row that has one keeps it)."""
    marks = _marks(job_ids)
    connection.execute(
        f"UPDATE jobs SET patient_id=?, study_uid=?, awaits_description=0 WHERE id IN ({marks})"
        " AND awaits_description=1", (patient_id, study_uid, *job_ids))
    for table in ("transfers", "audit_events"):
        connection.execute(
            f"UPDATE {table} SET patient_id=?, study_uid=? WHERE job_id IN ({marks}) AND "
            "(study_uid IS NULL OR study_uid='')", (patient_id, study_uid, *job_ids))


def transfers_awaiting_description(connection: DbConnection, job_ids: Sequence[int]
                                   ) -> list[tuple[int, str]]:
    """(transfer id, its job's state) of these jobs' transfers whose transaction-log line waits
    for the description, in transfer order."""
    return [(int(row["id"]), str(row["state"])) for row in connection.execute(
        f"SELECT t.id, j.state FROM transfers t JOIN jobs j ON j.id = t.job_id "
        f"WHERE t.job_id IN ({_marks(job_ids)}) AND t.logged=? ORDER BY t.id",
        (*job_ids, LOG_AWAITS_DESCRIPTION))]


def settled_jobs(connection: DbConnection, job_ids: Sequence[int]) -> list[int]:
    """Those of these jobs that have ended (done or parked)."""
    return [int(row["id"]) for row in connection.execute(
        f"SELECT id FROM jobs WHERE id IN ({_marks(job_ids)}) AND state IN ('done', 'dead')",
        tuple(job_ids))]


def _marks(values: Sequence[object]) -> str:
    return ",".join("?" * len(values))
