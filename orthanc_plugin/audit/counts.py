"""The audit's totals, for the Prometheus counters: what the tables hold now, by target too.

The store of these read-only counts (SQL stays here); the gateway adds what retention pruned
(retention.py keeps those totals in meta) so that a counter never goes down.
"""

from __future__ import annotations

from dataclasses import dataclass

from orthanc_plugin.db import Database


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


def transfer_totals(db: Database) -> TransferTotals:
    row = db.query(
        "SELECT COALESCE(SUM(instances),0) AS n, COALESCE(SUM(bytes),0) AS b, "
        "COALESCE(SUM(status<>'success'),0) AS f FROM transfers")[0]
    return TransferTotals(int(row["n"]), int(row["b"]), int(row["f"]))


def transfer_totals_by_target(db: Database) -> dict[str, TransferTotals]:
    return {row["target"]: TransferTotals(int(row["n"] or 0), int(row["b"] or 0),
                                          int(row["f"] or 0))
            for row in db.query(
                "SELECT target, SUM(instances) AS n, SUM(bytes) AS b, "
                "SUM(status<>'success') AS f FROM transfers GROUP BY target")}


def decision_totals(db: Database) -> DecisionTotals:
    row = db.query(
        "SELECT (SELECT COUNT(*) FROM evaluations) AS e, "
        "(SELECT COUNT(*) FROM evaluations WHERE matched=1 AND new_instances>0) AS m, "
        "(SELECT COUNT(*) FROM quarantine) AS q")[0]
    return DecisionTotals(int(row["e"]), int(row["m"]), int(row["q"]))


def meta_with_prefix(db: Database, prefix: str) -> dict[str, float]:
    """The numeric meta values whose key starts with `prefix`, by the rest of the key."""
    return {row["key"][len(prefix):]: float(row["value"]) for row in db.query(
        "SELECT key, value FROM meta WHERE key LIKE ?", (prefix + "%",))}
