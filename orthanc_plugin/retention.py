"""Keeps the gateway's own database small: what is older than RtGateway.Retention.MaxAgeDays
(default 90) goes, in small batches, from the tables that grow with every instance.

What goes: finished (done) jobs and their items, audit events, transfers, rule evaluations, the
intake's rows of instances every rule and follower is finished with, and the gateway's record of
its own outputs. What stays: parked (dead) and unfinished jobs, quarantine rows, de-identification
mappings, plans, harvests, the import log and the daily transaction log files (the long-term
record, which this never touches).

Two promises survive the pruning:
- "sent once": before a finished job's items go, each (rule, target, instance) is kept in the
  sent ledger (jobs/ledger.py), which the queue consults like job_items, so an old instance that
  comes round again (its study grows a year later) is still not sent a second time;
- Prometheus counters never go down: the pruned transfers' and evaluations' totals are carried
  in the meta table and added back.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from orthanc_plugin.config import SECTION, ConfigError
from orthanc_plugin.db import Database
from orthanc_plugin.jobs.ledger import remember
from orthanc_plugin.periodic import PeriodicLoop

# Followers of the intake's `received` rows, by cursor: a row is kept until all have passed it.
FOLLOWER_CURSORS = ("index_cursor", "plans_cursor")
PRUNED_PREFIX = "pruned_"


@dataclass(frozen=True)
class RetentionSettings:
    max_age_seconds: float | None = 90 * 86400.0   # None: keep everything
    check_every_seconds: float = 3600.0
    batch_rows: int = 500
    pause_seconds: float = 0.05                    # between batches: writers go first


def read_settings(section: dict[str, Any]) -> RetentionSettings:
    raw = section.get("Retention", {})
    if not isinstance(raw, dict):
        raise ConfigError(f"{SECTION}.Retention: expected an object")
    days = raw.get("MaxAgeDays", 90)
    if days is not None and (isinstance(days, bool) or not isinstance(days, int | float)
                             or days <= 0):
        raise ConfigError(f"{SECTION}.Retention.MaxAgeDays: expected a number of days > 0, "
                          f"or null to keep everything; got {days!r}")
    every = raw.get("CheckEverySeconds", 3600)
    batch = raw.get("BatchRows", 500)
    for key, value, minimum in (("CheckEverySeconds", every, 0.1), ("BatchRows", batch, 1)):
        if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
            raise ConfigError(f"{SECTION}.Retention.{key}: expected a number >= {minimum}")
    return RetentionSettings(None if days is None else float(days) * 86400.0, float(every),
                             int(batch))


def pruned_total(db: Database, name: str) -> float:
    return float(db.get_meta(PRUNED_PREFIX + name) or 0)


def _add_pruned(connection: sqlite3.Connection, totals: dict[str, float]) -> None:
    connection.executemany(
        "INSERT INTO meta(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET "
        "value = CAST(CAST(value AS REAL) + CAST(excluded.value AS REAL) AS TEXT)",
        [(PRUNED_PREFIX + name, str(value)) for name, value in totals.items() if value])


class Retention:
    def __init__(self, db: Database, settings: RetentionSettings,
                 log: Callable[[str], None]) -> None:
        self.db = db
        self.settings = settings
        self.log = log
        self.last_run: dict[str, int] = {}
        self.loop = PeriodicLoop("retention", settings.check_every_seconds, self._round, log)
        # Set at a stop: a pruning round ends between batches.
        self.stopping = self.loop.stopping

    def start(self) -> None:
        if self.settings.max_age_seconds is not None:
            self.loop.start()

    def stop(self) -> None:
        self.loop.stop()

    def _round(self) -> None:
        removed = self.prune()
        if any(removed.values()):
            self.log("retention: removed " + ", ".join(
                f"{count} {what}" for what, count in removed.items() if count))

    # -- one round -------------------------------------------------------------------------------
    def prune(self, now: float | None = None) -> dict[str, int]:
        """Everything older than the age limit, batch by batch; returns rows removed per kind."""
        assert self.settings.max_age_seconds is not None
        cutoff_epoch = (now if now is not None else time.time()) - self.settings.max_age_seconds
        cutoff = datetime.fromtimestamp(cutoff_epoch, UTC).isoformat(timespec="milliseconds")
        removed = {
            "jobs": self._batches(lambda c: self._jobs(c, cutoff)),
            "transfers": self._batches(lambda c: self._transfers(c, cutoff)),
            "evaluations": self._batches(lambda c: self._evaluations(c, cutoff)),
            "audit events": self._batches(lambda c: self._delete(
                c, "audit_events", "id", "at < ?", (cutoff,))),
            "received rows": self._batches(lambda c: self._received(c, cutoff)),
            "study rows": self._batches(lambda c: self._delete(
                c, "study_progress", "study_id", "last_received_at < ? AND NOT EXISTS (SELECT 1 "
                "FROM received r WHERE r.study_id = study_progress.study_id)", (cutoff_epoch,))),
            "own outputs": self._batches(lambda c: self._delete(
                c, "own_output", "instance_id", "at < ?", (cutoff,))),
        }
        self.last_run = removed
        return removed

    def _batches(self, one: Callable[[sqlite3.Connection], int]) -> int:
        total = 0
        while not self.stopping.is_set():
            with self.db.transaction() as connection:
                count = one(connection)
            total += count
            if count < self.settings.batch_rows:
                break
            time.sleep(self.settings.pause_seconds)
        return total

    def _delete(self, connection: sqlite3.Connection, table: str, key: str, where: str,
                values: Iterable[Any]) -> int:
        return connection.execute(
            f"DELETE FROM {table} WHERE {key} IN (SELECT {key} FROM {table} WHERE {where} "
            f"LIMIT ?)", (*values, self.settings.batch_rows)).rowcount

    def _jobs(self, connection: sqlite3.Connection, cutoff: str) -> int:
        ids = [row[0] for row in connection.execute(
            "SELECT id FROM jobs WHERE state='done' AND updated_at < ? ORDER BY id LIMIT ?",
            (cutoff, self.settings.batch_rows))]
        if not ids:
            return 0
        marks = ",".join("?" * len(ids))
        items = connection.execute(
            f"SELECT rule, target, instance_id, commit_state FROM job_items "
            f"WHERE job_id IN ({marks})", ids).fetchall()
        remember(connection, [(row[0], row[1], row[2]) for row in items])
        _add_pruned(connection, {"committed": sum(row[3] == "committed" for row in items)})
        connection.execute(f"DELETE FROM job_items WHERE job_id IN ({marks})", ids)
        return connection.execute(f"DELETE FROM jobs WHERE id IN ({marks})", ids).rowcount

    def _transfers(self, connection: sqlite3.Connection, cutoff: str) -> int:
        rows = connection.execute(
            "SELECT id, target, instances, bytes, status FROM transfers WHERE started_at < ? "
            "ORDER BY id LIMIT ?", (cutoff, self.settings.batch_rows)).fetchall()
        if not rows:
            return 0
        totals: dict[str, float] = {"sent_instances": 0, "sent_bytes": 0, "failures": 0}
        for row in rows:
            failed = row["status"] != "success"
            totals["sent_instances"] += row["instances"]
            totals["sent_bytes"] += row["bytes"]
            totals["failures"] += failed
            for name, value in ((f"target_{row['target']}_instances", row["instances"]),
                                (f"target_{row['target']}_failures", failed)):
                totals[name] = totals.get(name, 0) + value
        _add_pruned(connection, totals)
        ids = [row["id"] for row in rows]
        return connection.execute(
            f"DELETE FROM transfers WHERE id IN ({','.join('?' * len(ids))})", ids).rowcount

    def _evaluations(self, connection: sqlite3.Connection, cutoff: str) -> int:
        rows = connection.execute(
            "SELECT id, matched, new_instances FROM evaluations WHERE at < ? ORDER BY id LIMIT ?",
            (cutoff, self.settings.batch_rows)).fetchall()
        if not rows:
            return 0
        _add_pruned(connection, {
            "evaluations": len(rows),
            "matches": sum(1 for row in rows if row["matched"] and row["new_instances"] > 0)})
        ids = [row["id"] for row in rows]
        return connection.execute(
            f"DELETE FROM evaluations WHERE id IN ({','.join('?' * len(ids))})", ids).rowcount

    def _received(self, connection: sqlite3.Connection, cutoff: str) -> int:
        """Rows every rule and follower is done with: instance rules ran (or the instance is gone
        or quarantined), its study's stable rules ran past it, every follower's cursor passed it,
        and no unfinished job still names the instance."""
        cursors = [int(row[0]) for row in connection.execute(
            f"SELECT value FROM meta WHERE key IN ({','.join('?' * len(FOLLOWER_CURSORS))})",
            FOLLOWER_CURSORS)]
        followed_up_to = min(cursors) if cursors else None
        # A deleted instance's row tells the index to drop its entry: kept until it has.
        index_waits = (
            "AND NOT (r.state = 'gone' AND EXISTS (SELECT 1 FROM index_entries e "
            "WHERE e.instance_id = r.instance_id)) "
            if connection.execute("SELECT 1 FROM sqlite_master WHERE name='index_entries'")
            .fetchone() else "")
        return connection.execute(
            "DELETE FROM received WHERE seq IN (SELECT r.seq FROM received r WHERE "
            "r.received_at < ? AND r.state <> 'new' "
            "AND (r.instance_rules_done = 1 OR r.state IN ('gone', 'quarantined')) "
            "AND (? IS NULL OR r.seq <= ?) "
            "AND r.seq <= COALESCE((SELECT p.stable_done_seq FROM study_progress p "
            "                       WHERE p.study_id = r.study_id), r.seq) "
            # Uncorrelated, so SQLite builds the (small) set of unfinished instances once.
            "AND r.instance_id NOT IN (SELECT i.instance_id FROM jobs j JOIN job_items i "
            "                          ON i.job_id = j.id WHERE j.state <> 'done') "
            f"{index_waits}ORDER BY r.seq LIMIT ?)",
            (cutoff, followed_up_to, followed_up_to, self.settings.batch_rows)).rowcount
