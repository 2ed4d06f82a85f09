"""bench/history: what the lead's per-instance and per-pass reads cost once the database holds a
department's history. Prints JSON.

The gateway's tables grow with every instance (a job per instance for an `on: instance` rule, a
transfer row per claim, audit rows, a study_progress row per study) until retention prunes them.
A read that scans one of them costs nothing on a new gateway and grows every day after. This
bench fills a gateway database (SQLite, the one-node default) with --rows of history and times,
in the same run, each read the lead makes on the relay's critical path, as shipped (indexed) and
with the indexes that serve it dropped (what it cost before them), median of --calls calls:

- complete: an instance decided at arrival gets its job's transfer and audit rows named and its
  waiting log lines found (arrival_store: name_patient_and_study, transfers_awaiting_description);
- unseen_studies: each intake pass asks which studies have instances their stable-study rules
  have not seen (intake_store.studies_with_new_instances);
- queue_gauges: after each settled claim, at most once a second, the live jobs by state
  (JobQueue.live_state_counts against the count of every state it replaced).
- metrics: every 2 s, the Prometheus counters (audit/counts.running_totals, a few meta rows,
  against the sums over transfers and evaluations it replaced);
- commitment: every 2 s with storage commitment, the instances waiting for it or refused it
  (forwarding/store.commit_state_counts through the index by state, against every committed
  instance counted by state, as before);
- queue_badge: every 10 s on every open page, the parked badge (GET queue?view=parked&per_page=1
  &counts=live, against the same page with every state counted and the targets read DISTINCT
  from every job, as before).
The baseline of each ratio is the same read on an empty database, in the same run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from orthanc_plugin import capabilities
from orthanc_plugin.app import all_migrations
from orthanc_plugin.audit import counts
from orthanc_plugin.audit.tables import SCHEMA as AUDIT_SCHEMA
from orthanc_plugin.db import META_SCHEMA, Database, check_migrations
from orthanc_plugin.forwarding import store as forwarding_store
from orthanc_plugin.jobs import arrival_store, intake_store
from orthanc_plugin.jobs.arrival_store import SCHEMA as ARRIVAL_SCHEMA
from orthanc_plugin.jobs.own_output import SCHEMA as OWN_OUTPUT_SCHEMA
from orthanc_plugin.jobs.tables import SCHEMA as JOBS_SCHEMA
from orthanc_plugin.plans.queue_view import queue_page

SCHEMAS = [META_SCHEMA, AUDIT_SCHEMA, JOBS_SCHEMA, OWN_OUTPUT_SCHEMA, ARRIVAL_SCHEMA,
           *capabilities.extra_schemas()]
# The indexes each read is served by; dropped for the "without" measurement.
INDEXES = {"complete": ("transfers_job", "audit_events_job"),
           "unseen_studies": ("study_progress_unseen",),
           "queue_gauges": (), "metrics": (), "commitment": (), "queue_badge": ()}
STUDIES_PER_ROW = 0.05      # a study per 20 rows: a CT series and its RT objects
BATCH = 10_000


def database(folder: Path, rows: int) -> Database:
    db = Database(folder / "gateway.sqlite", SCHEMAS)
    db.migrate(check_migrations(all_migrations()))
    studies = int(rows * STUDIES_PER_ROW)
    with db.transaction() as connection:
        counts.count_transfer(connection, "ARCHIVE", "success", rows, rows)
        for start in range(0, rows, BATCH):
            ids = range(start + 1, min(rows, start + BATCH) + 1)
            connection.executemany(
                "INSERT INTO jobs(id, idempotency_key, rule, action, trigger, level, resource_id,"
                " target, created_at, updated_at, next_attempt_at, state, patient_id, study_uid)"
                " VALUES(?, ?, 'r', 'forward', 'instance', 'instance', ?, 'ARCHIVE', 't', 't', 0,"
                " 'done', 'P', 'S')", [(i, f"k{i}", f"i{i}") for i in ids])
            connection.executemany(
                "INSERT INTO transfers(job_id, rule, resource_id, patient_id, study_uid, target,"
                " attempt, status, instances, bytes, started_at, ended_at)"
                " VALUES(?, 'r', ?, 'P', 'S', 'ARCHIVE', 1, 'success', 1, 1, 't', 't')",
                [(i, f"i{i}") for i in ids])
            connection.executemany(
                "INSERT INTO audit_events(at, event, status, patient_id, study_uid, job_id)"
                " VALUES('t', 'forward-sent', 'ok', 'P', 'S', ?)", [(i,) for i in ids])
            connection.executemany(
                "INSERT INTO forward_items(job_id, instance_id, commit_state) "
                "VALUES(?, ?, 'committed')", [(i, f"i{i}") for i in ids])
            connection.executemany(
                "INSERT INTO evaluations(at, trigger, level, resource_id, rule, matched,"
                " new_instances) VALUES('t', 'instance', 'instance', ?, 'r', 1, 1)",
                [(f"i{i}",) for i in ids])
        for start in range(0, studies, BATCH):
            ids = range(start + 1, min(studies, start + BATCH) + 1)
            connection.executemany(
                "INSERT INTO received(seq, instance_id, received_at, study_id, state)"
                " VALUES(?, ?, 't', ?, 'ready')", [(i, f"r{i}", f"s{i}") for i in ids])
            connection.executemany(
                "INSERT INTO study_progress(study_id, last_received_at, stable_done_seq, ready_seq)"
                " VALUES(?, 0, ?, ?)", [(f"s{i}", i, i) for i in ids])
    return db


def median_ms(read: Callable[[], Any], calls: int) -> float:
    for _ in range(3):
        read()      # the pages in the cache and the statement prepared, as in a running lead
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        read()
        times.append(time.perf_counter() - start)
    return round(statistics.median(times) * 1000, 4)


def reads(db: Database, job_id: int) -> dict[str, Callable[[], Any]]:
    def complete() -> None:
        with db.transaction() as connection:
            arrival_store.name_patient_and_study(connection, [job_id], "P", "S")
            arrival_store.transfers_awaiting_description(connection, [job_id])

    def queue_gauges() -> None:
        db.query("SELECT state, COUNT(*) AS n FROM jobs WHERE state IN ('pending','held',"
                 "'running','dead') GROUP BY state")

    return {"complete": complete,
            "unseen_studies": lambda: intake_store.studies_with_new_instances(db),
            "queue_gauges": queue_gauges,
            "metrics": lambda: counts.running_totals(db),
            "commitment": lambda: forwarding_store.commit_state_counts(db),
            "queue_badge": lambda: queue_page(db, "parked", "", 1, 1, "live")}


def badge_as_before(db: Database) -> None:
    """The badge's reads before: the page, every state counted, every job's target."""
    queue_page(db, "parked", "", 1, 1, "all")
    db.query("SELECT DISTINCT target FROM jobs ORDER BY target LIMIT 200")


def sum_the_tables(db: Database) -> None:
    """The read the metrics made before: sums over the audit tables (and retention's pruned
    totals, a few meta rows, left out here)."""
    counts.transfer_totals(db)
    counts.transfer_totals_by_target(db)
    counts.decision_totals(db)


def count_every_state(db: Database) -> None:
    """The read the gauges made before: every job, by state."""
    db.query("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state")


def measure(db: Database, job_id: int, calls: int) -> dict[str, dict[str, float]]:
    indexed = {name: median_ms(read, calls) for name, read in reads(db, job_id).items()}
    for names in INDEXES.values():
        for name in names:
            db.connection().execute(f"DROP INDEX {name}")
    without = {name: median_ms(read, calls) for name, read in reads(db, job_id).items()}
    without["queue_gauges"] = median_ms(lambda: count_every_state(db), calls)
    without["metrics"] = median_ms(lambda: sum_the_tables(db), calls)
    without["commitment"] = median_ms(lambda: db.query(
        "SELECT commit_state, COUNT(*) AS n FROM forward_items WHERE commit_state IS NOT NULL "
        "GROUP BY commit_state"), calls)
    without["queue_badge"] = median_ms(lambda: badge_as_before(db), calls)
    return {"indexed": indexed, "without": without}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000,
                        help="jobs, transfer, evaluation and audit rows of history (a study per 20)")
    parser.add_argument("--calls", type=int, default=41)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rtgw-history-") as folder:
        empty_folder, full_folder = Path(folder, "empty"), Path(folder, "full")
        empty = measure(database(empty_folder, 1), 1, args.calls)
        started = time.perf_counter()
        full_db = database(full_folder, args.rows)
        filled_seconds = time.perf_counter() - started
        full = measure(full_db, args.rows // 2, args.calls)
    result = {
        "benchmark": "history",
        "rows": args.rows,
        "studies": int(args.rows * STUDIES_PER_ROW),
        "calls": args.calls,
        "fill_seconds": round(filled_seconds, 1),
        "milliseconds_median": {"empty": empty, "history": full},
        # The goal: a read costs about what it costs on a new gateway (ratio near 1), where
        # without its index it grows with the table.
        "ratio_history_to_empty": {
            variant: {name: round(full[variant][name] / max(empty[variant][name], 1e-6), 2)
                      for name in full[variant]}
            for variant in ("indexed", "without")},
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
