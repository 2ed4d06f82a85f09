"""Claims as leases with fencing tokens: what lets several workers (or several nodes on one
PostgreSQL) share the queue without trusting each other to be alive.

A claim takes its jobs for LEASE_SECONDS and increments each job's `fence`. The worker renews the
leases it holds while it runs them (WorkerPool's lease thread). A job whose lease ran out (its
worker paused, its node died, its database link was down for longer than the lease) is taken
over by any worker: back to pending with its fence incremented again, then claimed anew. From
then on every write of the old holder (an item sent, the job settled) carries a token that is no
longer the job's and is refused whole (LeaseLost): the new holder establishes what was done (for
forwarding: verifies at the destination what was in flight), and nothing is counted twice.

The held tokens live in this process (a claim's worker is the only one that writes for it); the
database keeps the current token per job, so the check needs no clock agreement between nodes,
only that a holder renews well within the lease.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping, Sequence

from orthanc_plugin.audit.clock import now_iso
from orthanc_plugin.db_engine import POSTGRESQL, DbConnection, DbRow, StateDatabase

# How long a claim holds its jobs without a renewal. A minute: a database that stops answering
# for 30 s (a PostgreSQL restart) costs no claim, and a dead node's work waits at most this long.
LEASE_SECONDS = 60.0
# Renewed this many times per lease: a renewal may be late by a few intervals and still hold.
RENEWALS_PER_LEASE = 6
# A job whose runs ended its worker this many times is parked as poison, not retried.
POISON_AFTER_CRASHES = 2


class LeaseLost(Exception):
    """A write for jobs this worker no longer holds: another claim took them after their lease
    ran out. Nothing of the write was kept; the jobs are the new holder's."""

    def __init__(self, job_ids: Sequence[int]) -> None:
        self.job_ids = list(job_ids)
        super().__init__(f"jobs {self.job_ids[:10]} were taken over by another worker after "
                         "their lease ran out; this worker's outcome for them is discarded")


class Leases:
    """The fencing tokens this worker process holds, checked inside each write's transaction."""

    def __init__(self, db: StateDatabase, lease_seconds: float = LEASE_SECONDS) -> None:
        self.db = db
        self.lease_seconds = lease_seconds
        self._held: dict[int, int] = {}
        self._lock = threading.Lock()
        # PostgreSQL: the checked rows stay locked until the write commits, so a takeover cannot
        # slip between the check and the write. SQLite: the write transaction is the only one.
        self._lock_rows = " FOR UPDATE" if db.dialect == POSTGRESQL else ""

    @property
    def renew_every(self) -> float:
        return self.lease_seconds / RENEWALS_PER_LEASE

    def until(self, now: float) -> float:
        return now + self.lease_seconds

    def hold(self, fences: Mapping[int, int]) -> None:
        """After a claim committed: the tokens it was given."""
        with self._lock:
            self._held.update(fences)

    def forget(self, job_ids: Iterable[int]) -> None:
        """Jobs that left this worker (settled, postponed, given back, lost)."""
        with self._lock:
            for job_id in job_ids:
                self._held.pop(job_id, None)

    def held(self) -> dict[int, int]:
        with self._lock:
            return dict(self._held)

    def check(self, connection: DbConnection, job_ids: Iterable[int]) -> None:
        """Inside a write's transaction: raise LeaseLost unless every job this worker claimed
        still carries the token its claim was given. Jobs it never claimed (a change by hand, a
        test's direct call) are not fenced."""
        with self._lock:
            mine = {job_id: self._held[job_id] for job_id in set(job_ids) if job_id in self._held}
        if not mine:
            return
        marks = ",".join("?" * len(mine))
        current = {int(row["id"]): int(row["fence"]) for row in connection.execute(
            f"SELECT id, fence FROM jobs WHERE id IN ({marks}) ORDER BY id{self._lock_rows}",
            tuple(sorted(mine))).fetchall()}
        lost = sorted(job_id for job_id, fence in mine.items() if current.get(job_id) != fence)
        if lost:
            raise LeaseLost(lost)

    def renew(self) -> list[int]:
        """Extend the leases this worker holds; returns the jobs it turned out to have lost
        (taken over meanwhile), which it forgets."""
        held = self.held()
        if not held:
            return []
        until = self.until(time.time())
        with self.db.transaction() as connection:
            kept = [job_id for job_id, fence in sorted(held.items()) if connection.execute(
                "UPDATE jobs SET lease_until=? WHERE id=? AND fence=? AND state='running'",
                (until, job_id, fence)).rowcount == 1]
        lost = sorted(set(held) - set(kept))
        # A job settled by another thread between held() and the update is gone from _held
        # already; forgetting it again is harmless.
        self.forget(lost)
        return lost

    def take_over_expired(self, now: float | None = None) -> tuple[list[int], list[int]]:
        """Running jobs whose lease ran out, whoever held them: back to pending with a new
        token (or parked as poison on their second such end). Returns (requeued, poisoned)."""
        now = time.time() if now is None else now
        skip = " FOR UPDATE SKIP LOCKED" if self.db.dialect == POSTGRESQL else ""
        with self.db.transaction() as connection:
            rows = connection.execute(
                "SELECT id, crashes FROM jobs WHERE state='running' AND lease_until IS NOT NULL"
                f" AND lease_until < ? ORDER BY id{skip}", (now,)).fetchall()
            mine = self.held()
            # This worker's own jobs are renewed, not taken over (its renewal was merely late).
            rows = [row for row in rows if int(row["id"]) not in mine]
            return requeue_or_poison(
                connection, rows, "its lease ran out (its worker or node stopped answering)",
                "lease-expired")


def requeue_or_poison(connection: DbConnection, rows: Sequence[DbRow], reason: str,
                      status: str) -> tuple[list[int], list[int]]:
    """Running jobs whose worker ended (rows of id, crashes): back to pending, or parked as
    poison when this was their POISON_AFTER_CRASHES-th end. Each gets a new fencing token, so
    whatever their old holder might still write is refused."""
    requeued: list[int] = []
    poisoned: list[int] = []
    stamp = now_iso()
    for row in rows:
        crashes = int(row["crashes"]) + 1
        if crashes >= POISON_AFTER_CRASHES:
            connection.execute(
                "UPDATE jobs SET state='dead', crashes=?, fence=fence+1, last_status='poison', "
                "last_error=?, updated_at=? WHERE id=?",
                (crashes, f"poison: its run ended the worker {crashes} times "
                 f"(last: {reason}); not retried automatically", stamp, row["id"]))
            poisoned.append(int(row["id"]))
        else:
            connection.execute(
                "UPDATE jobs SET state='pending', crashes=?, fence=fence+1, next_attempt_at=0, "
                "last_error=?, last_status=?, updated_at=? WHERE id=?",
                (crashes, f"its worker ended: {reason}", status, stamp, row["id"]))
            requeued.append(int(row["id"]))
    return requeued, poisoned
