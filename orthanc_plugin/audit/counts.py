"""The audit's totals, for the Prometheus counters, by target too.

Running totals (meta keys `total_...`) are added to in the transaction that writes the row they
count (a transfer, an evaluation, a quarantine), so reading them costs a few rows however much
history the tables hold: the metrics are read every 2 s (in_orthanc/supervisor/metrics.py), and
summing the tables each time grew with them (bench/history.py: 1 s and more at a million rows).
They count everything ever written, so retention's pruning never lowers a counter. A database of
an earlier version starts them from its tables and retention's pruned totals (migration 11).

The sums over the tables as they are (transfer_totals...) remain for that start and for the
tests. SQL both engines accept (db_engine): PostgreSQL has no SUM of a comparison, so a failure
counts as a CASE of 1 or 0.
"""

from __future__ import annotations

from dataclasses import dataclass

from orthanc_plugin.db_engine import DbConnection, StateDatabase
from orthanc_plugin.retention_store import add_to_meta_totals, has_table

TOTAL_PREFIX = "total_"
# retention.PRUNED_PREFIX, spelled here so that the store needs nothing of the retention loop.
PRUNED_PREFIX = "pruned_"

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


# -- running totals --------------------------------------------------------------------------------
def count_transfer(connection: DbConnection, target: str, status: str, instances: int,
                   bytes_sent: int) -> None:
    """A transfer row written in this transaction, added to the running totals.

    Every key, zeros too, in one order, the shared ones first: on PostgreSQL each key's row stays
    locked until the transaction commits, and a settle writing a failure row then a success row
    (other keys, other order) against another doing the reverse would deadlock."""
    failed = int(status != "success")
    add_to_meta_totals(connection, {
        TOTAL_PREFIX + "failures": failed, TOTAL_PREFIX + "sent_bytes": bytes_sent,
        TOTAL_PREFIX + "sent_instances": instances,
        f"{TOTAL_PREFIX}target_{target}_failures": failed,
        f"{TOTAL_PREFIX}target_{target}_instances": instances})


def count_evaluation(connection: DbConnection, matched_new: bool) -> None:
    """An evaluation row written in this transaction; `matched_new`: it matched and queued.
    Both keys, in one order (see count_transfer)."""
    add_to_meta_totals(connection, {TOTAL_PREFIX + "evaluations": 1,
                                    TOTAL_PREFIX + "matches": int(matched_new)})


def count_quarantined(connection: DbConnection) -> None:
    add_to_meta_totals(connection, {TOTAL_PREFIX + "quarantined": 1})


def count_committed(connection: DbConnection, instances: int) -> None:
    """Instances the receiver committed (storage commitment) in this transaction."""
    if instances:
        add_to_meta_totals(connection, {TOTAL_PREFIX + "committed": instances})


def running_totals(db: StateDatabase) -> dict[str, float]:
    """The running totals by name (without the prefix): sent_instances, sent_bytes, failures,
    target_<T>_instances, target_<T>_failures, evaluations, matches, quarantined, committed."""
    return meta_with_prefix(db, TOTAL_PREFIX)


def start_running_totals(connection: DbConnection) -> None:
    """Migration 11: the running totals of a database written before they existed, from what its
    tables hold and what retention pruned from them. A new database has nothing to count (nor a
    database made with some parts' tables only, the tests': its totals start at nothing)."""
    if not all(has_table(connection, name) for name in ("transfers", "evaluations", "quarantine")):
        return
    # Not a count, but the same step (a database before version 3 has no `logged` column when
    # the schema runs): transfers whose log line is not written, found by a start (recorder.py).
    connection.execute("CREATE INDEX IF NOT EXISTS transfers_logged ON transfers(logged)")
    transfers = connection.execute(
        "SELECT target, COALESCE(SUM(instances),0) AS n, COALESCE(SUM(bytes),0) AS b, "
        f"COALESCE(SUM({FAILED}),0) AS f FROM transfers GROUP BY target").fetchall()
    decisions = connection.execute(
        "SELECT (SELECT COUNT(*) FROM evaluations) AS e, "
        "(SELECT COUNT(*) FROM evaluations WHERE matched=1 AND new_instances>0) AS m, "
        "(SELECT COUNT(*) FROM quarantine) AS q").fetchall()[0]
    totals: dict[str, float] = {
        "sent_instances": sum(int(row["n"]) for row in transfers),
        "sent_bytes": sum(int(row["b"]) for row in transfers),
        "failures": sum(int(row["f"]) for row in transfers),
        "evaluations": int(decisions["e"]), "matches": int(decisions["m"]),
        "quarantined": int(decisions["q"])}
    for row in transfers:
        totals[f"target_{row['target']}_instances"] = int(row["n"])
        totals[f"target_{row['target']}_failures"] = int(row["f"])
    if has_table(connection, "forward_items"):    # forwarding's own table (storage commitment)
        totals["committed"] = int(connection.execute(
            "SELECT COUNT(*) AS n FROM forward_items WHERE commit_state='committed'"
        ).fetchall()[0]["n"])
    pruned = connection.execute("SELECT key, value FROM meta WHERE key LIKE ?",
                                (PRUNED_PREFIX + "%",)).fetchall()
    for row in pruned:
        name = str(row["key"])[len(PRUNED_PREFIX):]
        if name in totals or name.startswith("target_"):
            totals[name] = totals.get(name, 0) + float(row["value"])
    add_to_meta_totals(connection, {TOTAL_PREFIX + name: value
                                    for name, value in totals.items() if value})
