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

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from orthanc_plugin import retention_store
from orthanc_plugin.config import SECTION, ConfigError
from orthanc_plugin.db_engine import DbConnection, StateDatabase
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


def pruned_total(db: StateDatabase, name: str) -> float:
    return float(db.get_meta(PRUNED_PREFIX + name) or 0)


def _add_pruned(connection: DbConnection, totals: dict[str, float]) -> None:
    retention_store.add_to_meta_totals(
        connection, {PRUNED_PREFIX + name: value for name, value in totals.items() if value})


# (the batch's connection, the job IDs pruned) -> totals to carry (name -> amount).
JobsPruned = Callable[[DbConnection, Sequence[int]], dict[str, float]]


class Retention:
    def __init__(self, db: StateDatabase, settings: RetentionSettings,
                 log: Callable[[str], None]) -> None:
        self.db = db
        self.settings = settings
        self.log = log
        self.last_run: dict[str, int] = {}
        # A capability's own records of the jobs pruned go with them, in the same batch; it
        # returns the totals to carry so that its counters never go down (forwarding: committed
        # instances). context.Hooks.jobs_pruned holds this list.
        self.jobs_pruned: list[JobsPruned] = []
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
        batch = self.settings.batch_rows
        removed = {
            "jobs": self._batches(lambda c: self._jobs(c, cutoff)),
            "transfers": self._batches(lambda c: self._transfers(c, cutoff)),
            "evaluations": self._batches(lambda c: self._evaluations(c, cutoff)),
            "audit events": self._batches(
                lambda c: retention_store.delete_audit_events_before(c, cutoff, batch)),
            "received rows": self._batches(lambda c: self._received(c, cutoff)),
            "study rows": self._batches(
                lambda c: retention_store.delete_quiet_studies_before(c, cutoff_epoch, batch)),
            "own outputs": self._batches(
                lambda c: retention_store.delete_own_outputs_before(c, cutoff, batch)),
        }
        self.last_run = removed
        return removed

    def _batches(self, one: Callable[[DbConnection], int]) -> int:
        total = 0
        while not self.stopping.is_set():
            with self.db.transaction() as connection:
                count = one(connection)
            total += count
            if count < self.settings.batch_rows:
                break
            time.sleep(self.settings.pause_seconds)
        return total

    def _jobs(self, connection: DbConnection, cutoff: str) -> int:
        ids = retention_store.done_jobs_before(connection, cutoff, self.settings.batch_rows)
        if not ids:
            return 0
        items = retention_store.items_of_jobs(connection, ids)
        remember(connection, [(item.rule, item.target, item.instance_id) for item in items])
        for forget in self.jobs_pruned:
            _add_pruned(connection, forget(connection, ids))
        return retention_store.delete_jobs(connection, ids)

    def _transfers(self, connection: DbConnection, cutoff: str) -> int:
        rows = retention_store.transfers_before(connection, cutoff, self.settings.batch_rows)
        if not rows:
            return 0
        totals: dict[str, float] = {"sent_instances": 0, "sent_bytes": 0, "failures": 0}
        for row in rows:
            failed = row.status != "success"
            totals["sent_instances"] += row.instances
            totals["sent_bytes"] += row.bytes
            totals["failures"] += failed
            for name, value in ((f"target_{row.target}_instances", row.instances),
                                (f"target_{row.target}_failures", failed)):
                totals[name] = totals.get(name, 0) + value
        _add_pruned(connection, totals)
        return retention_store.delete_transfers(connection, [row.id for row in rows])

    def _evaluations(self, connection: DbConnection, cutoff: str) -> int:
        rows = retention_store.evaluations_before(connection, cutoff, self.settings.batch_rows)
        if not rows:
            return 0
        _add_pruned(connection, {
            "evaluations": len(rows),
            "matches": sum(1 for row in rows if row.matched and row.new_instances > 0)})
        return retention_store.delete_evaluations(connection, [row.id for row in rows])

    def _received(self, connection: DbConnection, cutoff: str) -> int:
        """Rows every rule and follower is done with (retention_store.delete_finished_received
        says which)."""
        cursors = retention_store.meta_ints(connection, FOLLOWER_CURSORS)
        followed_up_to = min(cursors) if cursors else None
        # A deleted instance's row tells the index to drop its entry: kept until it has (when the
        # index capability is on, i.e. its table exists).
        return retention_store.delete_finished_received(
            connection, cutoff, followed_up_to, self.settings.batch_rows,
            wait_for_index=retention_store.has_table(connection, "index_entries"))
