"""The audit's totals, for the Prometheus counters: what the tables hold now, by target too.

The store of these read-only counts (SQL stays here); the gateway adds what retention pruned
(retention.py keeps those totals in meta) so that a counter never goes down. SQL both engines
accept (db_engine): PostgreSQL has no SUM of a comparison, so a failure counts as a CASE of 1 or 0.
"""

from __future__ import annotations

from dataclasses import dataclass

from orthanc_plugin.db_engine import StateDatabase

# A transfer row that is not a success, as 1 (else 0) to be summed.
FAILED = "CASE WHEN status<>'success' THEN 1 ELSE 0 END"


@dataclass(frozen=True)
class TransferTotals:
    instances: int
    bytes: int
    failures: int     # transfer rows that are not a success


@dataclass(frozen=True)
class DecisionTotals:
    evaluations: int
    matches: int      # evaluations that matched and queued something new
    quarantined: int


def transfer_totals(db: StateDatabase) -> TransferTotals:
    row = db.query(
        "SELECT COALESCE(SUM(instances),0) AS n, COALESCE(SUM(bytes),0) AS b, "
        f"COALESCE(SUM({FAILED}),0) AS f FROM transfers")[0]
    return TransferTotals(int(row["n"]), int(row["b"]), int(row["f"]))


def transfer_totals_by_target(db: StateDatabase) -> dict[str, TransferTotals]:
    return {row["target"]: TransferTotals(int(row["n"] or 0), int(row["b"] or 0),
                                          int(row["f"] or 0))
            for row in db.query(
                "SELECT target, SUM(instances) AS n, SUM(bytes) AS b, "
                f"SUM({FAILED}) AS f FROM transfers GROUP BY target")}


def decision_totals(db: StateDatabase) -> DecisionTotals:
    row = db.query(
        "SELECT (SELECT COUNT(*) FROM evaluations) AS e, "
        "(SELECT COUNT(*) FROM evaluations WHERE matched=1 AND new_instances>0) AS m, "
        "(SELECT COUNT(*) FROM quarantine) AS q")[0]
    return DecisionTotals(int(row["e"]), int(row["m"]), int(row["q"]))


def meta_with_prefix(db: StateDatabase, prefix: str) -> dict[str, float]:
    """The numeric meta values whose key starts with `prefix`, by the rest of the key. Matched
    as SQLite's LIKE always did, ASCII letters in any case (PostgreSQL's LIKE tells them apart)."""
    return {row["key"][len(prefix):]: float(row["value"]) for row in db.query(
        "SELECT key, value FROM meta WHERE LOWER(key) LIKE LOWER(?)", (prefix + "%",))}
