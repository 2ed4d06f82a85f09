"""The durable job queue: enqueue once, claim, record outcomes, retry or park.

On SQLite (db.Database) or PostgreSQL (db_postgres.PostgresDatabase): the SQL is what both accept,
typed against db_engine's protocols; the claim alone says one thing per engine (see `claim`)."""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from orthanc_plugin.audit.clock import epoch_of, iso_at, now_iso
from orthanc_plugin.config import RetryPolicySettings
from orthanc_plugin.db import durable_write
from orthanc_plugin.db_engine import POSTGRESQL, DbConnection, DbRow, StateDatabase
from orthanc_plugin.jobs.lease_store import LEASE_SECONDS, Leases, requeue_or_poison
from orthanc_plugin.jobs.ledger import in_ledger
from orthanc_plugin.jobs.records import Job
from orthanc_plugin.jobs.retry import decide
from orthanc_plugin.jobs.states import FAILED_ITEM_STATES, LIVE_JOB_STATES, ItemState, JobState
from orthanc_plugin.rules.priority import AGING_SECONDS_PER_LEVEL, Priority

# A job's rank: its priority plus one level (10) per AGING_SECONDS_PER_LEVEL waited.
RANK = "(priority + (? - created_epoch) * ?)"
AGING_PER_SECOND = 10.0 / AGING_SECONDS_PER_LEVEL
# Targets looked at per claim, best first, when a destination's policy refuses the first.
TARGETS_PER_CLAIM = 50
# A claim gives way between associations to a job ranked this much higher (half a level).
OUTRANK_MARGIN = 5.0
# The first key of the per-destination advisory locks (PostgreSQL), apart from other users' and
# the intake's (jobs/intake_lock_store.py).
CLAIM_LOCK_SPACE = 250_001

# Waiting for a person's approval (orthanc_plugin/approvals): never claimed until approved.
HELD = JobState.HELD
# A hold that expired parks its jobs with this status; retried by hand, they are held again.
HOLD_EXPIRED = "approval-expired"


@dataclass(frozen=True)
class JobSpec:
    rule: str
    action: str
    trigger: str
    level: str
    resource_id: str
    target: str
    patient_id: str = ""
    study_uid: str = ""
    calling_aet: str = ""
    remote_ip: str = ""
    priority: int = Priority.NORMAL
    # Decided from the arrival note (jobs/arrival.py): patient and study follow the description.
    awaits_description: bool = False


@dataclass(frozen=True)
class Admission:
    """What a destination's policy allows a claim for it now (destinations/admission.py)."""

    allowed: bool = True
    max_items: int | None = None     # paced: at most this many instances now
    wait_seconds: float = 1.0        # refused: its jobs are looked at again after this
    status: str = ""                 # refused: 'window' | 'paced' | 'busy', shown with the jobs
    reason: str = ""


# (connection inside the claim's transaction, job action, target, now) -> the admission.
AdmissionCheck = Callable[[DbConnection, str, str, float], Admission]
# Statuses of jobs a destination's policy holds back (not failures; looked at again on reload).
POLICY_WAIT_STATUSES = ("window", "paced", "busy")


@dataclass(frozen=True)
class ClaimedItem:
    job_id: int
    instance_id: str


# A capability's own records of items, written in the queue's transaction (forwarding's in-flight
# and commitment records): the connection, then the items or the job concerned.
ItemsRecord = Callable[[DbConnection, Sequence[ClaimedItem]], None]
JobItemsReset = Callable[[DbConnection, int], None]
# A capability's part of a job's JSON (GET jobs/{id}): job id -> the keys it adds.
JobDetails = Callable[[int], dict[str, Any]]


@dataclass
class Claim:
    action: str
    target: str
    jobs: list[Job]
    items: list[ClaimedItem]
    # Fewer items than its jobs hold (a destination's pace): the rest waits, no attempt spent.
    partial: bool = False

    @property
    def job_ids(self) -> list[int]:
        return [job.id for job in self.jobs]


def idempotency_key(spec: JobSpec, instance_ids: Sequence[str]) -> str:
    digest = hashlib.sha256("\n".join(sorted(instance_ids)).encode()).hexdigest()[:16]
    return f"{spec.rule}|{spec.action}|{spec.level}:{spec.resource_id}|{spec.target}|{digest}"


# No attempt spent: SQLite's two-argument MAX(attempts-1, 0) is not PostgreSQL's, CASE is both's.
GIVE_BACK_ATTEMPT = "attempts=CASE WHEN attempts > 0 THEN attempts-1 ELSE 0 END"


class JobQueue:
    def __init__(self, db: StateDatabase, policy: RetryPolicySettings, claimant: str = "",
                 lease_seconds: float = LEASE_SECONDS) -> None:
        self.db = db
        self.policy = policy
        # The fencing tokens of this worker's claims (lease_store.py): every write for a claimed
        # job is checked against them in its own transaction.
        self.leases = Leases(db, lease_seconds)
        # "<generation>:<pid>": which worker process of which generation holds a claim.
        self.claimant = claimant
        # Destination policies (caps, time windows) consulted inside each claim; the gateway's
        # hooks hold this same list (context.Hooks.claim_admission).
        self.admission_checks: list[AdmissionCheck] = []
        # A job retried by hand: its capability forgets what it recorded of the items that
        # go back to pending (context.Hooks.items_reset holds this list).
        self.items_reset: list[JobItemsReset] = []
        # What a capability adds to a job's JSON (context.Hooks.job_details holds this list).
        self.job_details: list[JobDetails] = []

    def enqueue(
        self, connection: DbConnection, spec: JobSpec, instance_ids: Sequence[str]
    ) -> tuple[int | None, int]:
        """Queue the instances not yet assigned to (rule, target); returns (job id, new count).

        Runs inside the caller's transaction so the decision and the job commit together.
        """
        fresh = _unassigned(connection, spec.rule, spec.target, instance_ids)
        if not fresh:
            return None, 0
        stamp = now_iso()
        # RETURNING, not cursor.lastrowid (PostgreSQL has none); a conflict returns no row.
        # fetchall: SQLite finishes the statement only once its rows are read.
        inserted = connection.execute(
            "INSERT INTO jobs(idempotency_key, rule, action, trigger, level, resource_id,"
            " patient_id, study_uid, calling_aet, remote_ip, target, created_at, updated_at,"
            " created_epoch, priority, awaits_description) VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
            " ON CONFLICT DO NOTHING RETURNING id",
            (
                idempotency_key(spec, fresh), spec.rule, spec.action, spec.trigger, spec.level,
                spec.resource_id, spec.patient_id, spec.study_uid, spec.calling_aet,
                spec.remote_ip, spec.target, stamp, stamp, time.time(), int(spec.priority),
                int(spec.awaits_description),
            ),
        ).fetchall()
        if not inserted:
            return None, 0
        job_id = int(inserted[0]["id"])
        connection.executemany(
            "INSERT INTO job_items(job_id, rule, target, instance_id, position, reported)"
            " VALUES(?,?,?,?,?,0) ON CONFLICT DO NOTHING",
            [(job_id, spec.rule, spec.target, iid, pos) for pos, iid in enumerate(fresh)],
        )
        if self.db.dialect == POSTGRESQL:
            # Another node may have queued some of these (rule, target, instance) since
            # _unassigned read: the unique key kept its items, not these. Count what this job
            # really holds, and keep no job that holds nothing. (SQLite: one writer at a time,
            # _unassigned's answer still holds.)
            held = int(connection.execute("SELECT COUNT(*) AS n FROM job_items WHERE job_id=?",
                                          (job_id,)).fetchone()["n"])
            if held == 0:
                connection.execute("DELETE FROM jobs WHERE id=?", (job_id,))
                return None, 0
            return job_id, held
        return job_id, len(fresh)

    @durable_write
    def recover_after_crash(self, generation: str = "") -> int:
        """Jobs left 'running' by an earlier generation of this node's workers (Orthanc stopped,
        killed or crashed) run again from their unsent items, with a new token. Jobs of this
        generation's workers are theirs; another node's ("<node>/..." of another name) are left
        to their lease, which runs out if that node is gone too (lease_store.py). A claimant
        without a node name claimed before nodes had names: a single node's, so this one's."""
        mine = f"{generation}:" if generation else ""
        node = generation.split("/", 1)[0] + "/" if "/" in generation else ""
        with self.db.transaction() as connection:
            cursor = connection.execute(
                "UPDATE jobs SET state='pending', fence=fence+1, next_attempt_at=0, updated_at=? "
                "WHERE state='running' AND (claimed_by IS NULL OR lease_until IS NULL OR "
                "claimed_by NOT LIKE '%/%' OR substr(claimed_by, 1, CAST(? AS INTEGER)) = ?) "
                "AND NOT (? <> '' AND "
                "substr(COALESCE(claimed_by, ''), 1, CAST(? AS INTEGER)) = ?)",
                (now_iso(), len(node), node, mine, len(mine), mine),
            )
            return cursor.rowcount

    @durable_write
    def reclaim_from_crashed(self, claimant: str, reason: str) -> tuple[list[int], list[int]]:
        """The jobs a dead worker was running: back to pending, or parked as poison when this was
        their second crash. Returns (requeued, poisoned) job ids."""
        with self.db.transaction() as connection:
            rows = connection.execute(
                "SELECT id, crashes FROM jobs WHERE state='running' AND claimed_by=?", (claimant,)
            ).fetchall()
            return requeue_or_poison(connection, rows, reason, "worker-crash")

    @durable_write
    def release_claims(self) -> int:
        """At a clean stop: this worker's running jobs go back to pending, no attempt spent."""
        if not self.claimant:
            return 0
        with self.db.transaction() as connection:
            cursor = connection.execute(
                "UPDATE jobs SET state='pending', " + GIVE_BACK_ATTEMPT + ", next_attempt_at=0,"
                " updated_at=? WHERE state='running' AND claimed_by=?",
                (now_iso(), self.claimant))
            released = cursor.rowcount
        self.leases.forget(list(self.leases.held()))
        return released

    @durable_write
    def give_back(self, job_ids: Sequence[int], reason: str) -> list[int]:
        """A claim that cannot go on (some of its jobs were taken over): the jobs it still holds
        wait again at once, no attempt spent; it forgets them all. Returns those given back."""
        held = self.leases.held()
        mine = [job_id for job_id in job_ids if job_id in held]
        with self.db.transaction() as connection:
            given = [job_id for job_id in mine if connection.execute(
                "UPDATE jobs SET state='pending', " + GIVE_BACK_ATTEMPT + ", next_attempt_at=0, "
                "last_status='interrupted', last_error=?, updated_at=? "
                "WHERE id=? AND fence=? AND state='running'",
                (reason, now_iso(), job_id, held[job_id])).rowcount == 1]
        self.leases.forget(job_ids)
        return given

    def renew_leases(self) -> list[int]:
        """The lease thread's renewal (lease_store.Leases.renew): returns the jobs lost."""
        return self.leases.renew()

    def take_over_expired(self) -> tuple[list[int], list[int]]:
        """Any worker's jobs whose lease ran out: (requeued, poisoned)."""
        return self.leases.take_over_expired()

    def has_work_now(self) -> bool:
        """Jobs running or due now (not those waiting out a backoff)."""
        return bool(self.db.query(
            "SELECT 1 FROM jobs WHERE state='running' OR (state='pending' AND next_attempt_at <= ?) "
            "LIMIT 1", (time.time(),)))

    def next_due_in(self) -> float | None:
        rows = self.db.query("SELECT MIN(next_attempt_at) AS due FROM jobs WHERE state='pending'")
        due = rows[0]["due"] if rows else None
        return None if due is None else max(0.0, due - time.time())

    @durable_write
    def claim(
        self,
        max_items: int | Callable[[str], int],
        linger_seconds: float = 0.0,
        linger_until_items: int = 40,
    ) -> Claim | None:
        """Take the oldest ready job and more ready jobs for the same target, up to max_items.

        Grouping by target lets many one-instance jobs (an `on: instance` rule) share one
        association instead of opening one per instance. A target with nothing in flight gets
        what is ready at once (the first instance of a series leaves with no delay, and the last
        waits for no timer). Only while another claim for the same target is running, and jobs
        are still arriving (the newest is younger than linger_seconds), does a claim smaller than
        one association's worth wait: fewer, fuller associations cost the receiving and sending
        Orthanc less CPU, and the running one keeps the target busy meanwhile.
        """
        now = time.time()
        with self.db.transaction() as connection:
            chosen = self._admitted_target(connection, now)
            if chosen is None:
                return None
            action, target, admission = chosen
            if callable(max_items):
                max_items = max_items(action)
            if admission.max_items is not None:
                max_items = max(1, min(max_items, admission.max_items))
            # PostgreSQL: another node's claim holds the rows it read until it commits; this
            # one takes the next ones instead of waiting for them (and then finding them gone).
            # SQLite has one writer at a time (BEGIN IMMEDIATE): nothing to skip.
            locking = " FOR UPDATE SKIP LOCKED" if self.db.dialect == POSTGRESQL else ""
            candidates = connection.execute(
                f"SELECT * FROM jobs WHERE state='pending' AND next_attempt_at <= ? AND action = ? "
                f"AND target = ? ORDER BY {RANK} DESC, id LIMIT 500{locking}",
                (now, action, target, now, AGING_PER_SECOND),
            ).fetchall()
            if not candidates:
                return None     # PostgreSQL: every ready job of the target is another node's now
            jobs: list[Job] = []
            items: list[ClaimedItem] = []
            partial = False
            for candidate in candidates:
                job = Job.of_row(candidate)
                pending = connection.execute(
                    "SELECT instance_id FROM job_items "
                    "WHERE job_id=? AND state='pending' ORDER BY position",
                    (job.id,),
                ).fetchall()
                if jobs and len(items) + len(pending) > max_items:
                    break
                if admission.max_items is not None and len(pending) > max_items:
                    # Paced: the first job gives only what the destination takes now.
                    pending, partial = pending[:max_items], True
                jobs.append(job)
                items.extend(ClaimedItem(job.id, row["instance_id"]) for row in pending)
            newest = max(job.created_epoch for job in jobs)
            # Linger only until one association's worth is ready, never for a whole claim: while
            # instances keep arriving, "wait for a full claim" would wait for the end of ingest.
            if (len(items) < min(max_items, linger_until_items) and now - newest < linger_seconds
                    and connection.execute(
                        "SELECT 1 FROM jobs WHERE state='running' AND action=? AND target=? LIMIT 1",
                        (action, target)).fetchone() is not None):
                return None
            claim_id = uuid.uuid4().hex[:12]
            counts: dict[int, int] = {}
            for item in items:
                counts[item.job_id] = counts.get(item.job_id, 0) + 1
            stamp = now_iso()
            lease_until = self.leases.until(now)
            # A job is taken only while it still waits: the claim's own compare-and-set, not the
            # engine's lock. SQLite's write lock (BEGIN IMMEDIATE) makes the whole claim one
            # writer at a time already; an engine with row locks (PostgreSQL reading the
            # candidates FOR UPDATE SKIP LOCKED) relies on this check, and a job another node
            # took meanwhile is left out with its items. Each taken job gets a new fencing
            # token and a lease (lease_store.py).
            fences: dict[int, int] = {}
            for job in jobs:
                returned = connection.execute(
                    "UPDATE jobs SET state='running', attempts=attempts+1, updated_at=?, "
                    "claimed_by=?, claim_id=?, claim_items=?, fence=fence+1, lease_until=? "
                    "WHERE id=? AND state='pending' RETURNING fence",
                    (stamp, self.claimant, claim_id, counts.get(job.id, 0), lease_until, job.id),
                ).fetchall()
                if returned:
                    fences[job.id] = int(returned[0]["fence"])
            taken = set(fences)
            if len(taken) < len(jobs):
                jobs = [job for job in jobs if job.id in taken]
                items = [item for item in items if item.job_id in taken]
                if not jobs:
                    return None
        self.leases.hold(fences)
        return Claim(action=action, target=target, jobs=jobs, items=items, partial=partial)

    def _admitted_target(self, connection: DbConnection,
                         now: float) -> tuple[str, str, Admission] | None:
        """The (action, target) whose best ready job ranks highest among those the destination
        policies admit now; a refused target's ready jobs wait, with the reason, until it may."""
        groups = connection.execute(
            f"SELECT action, target, MAX({RANK}) AS best, MIN(id) AS first FROM jobs "
            f"WHERE state='pending' AND next_attempt_at <= ? GROUP BY action, target "
            f"ORDER BY best DESC, first LIMIT ?",
            (now, AGING_PER_SECOND, now, TARGETS_PER_CLAIM)).fetchall()
        for group in groups:
            if not self._deciding_alone(connection, group["target"]):
                continue     # another node is claiming for this destination right now
            admission = self._admission(connection, group["action"], group["target"], now)
            if admission.allowed:
                return group["action"], group["target"], admission
            connection.execute(
                "UPDATE jobs SET next_attempt_at=?, last_status=?, last_error=? WHERE "
                "state='pending' AND action=? AND target=? AND next_attempt_at <= ?",
                (now + admission.wait_seconds, admission.status, admission.reason,
                 group["action"], group["target"], now))
        return None

    def _deciding_alone(self, connection: DbConnection, target: str) -> bool:
        """Whether this claim may decide for the target now. A destination's caps (associations,
        instances per minute) count what every worker holds and sent; two nodes counting at once
        under PostgreSQL's READ COMMITTED would each see room for one more and both claim. So a
        claim decides for a target only while holding its advisory lock (until its transaction
        ends), and skips a target another node is deciding for, as SKIP LOCKED skips rows: no
        waiting, no deadlock. SQLite's write lock already makes every claim decide alone."""
        if self.db.dialect != POSTGRESQL:
            return True
        row = connection.execute("SELECT pg_try_advisory_xact_lock(CAST(? AS INTEGER), "
                                 "hashtext(?)) AS alone", (CLAIM_LOCK_SPACE, target)).fetchone()
        return bool(row["alone"])

    def _admission(self, connection: DbConnection, action: str, target: str,
                   now: float) -> Admission:
        paced: Admission | None = None
        for check in self.admission_checks:
            admission = check(connection, action, target, now)
            if not admission.allowed:
                return admission
            if admission.max_items is not None and (
                    paced is None or paced.max_items is None
                    or admission.max_items < paced.max_items):
                paced = admission
        return paced or Admission()

    def outranked(self, claim: Claim) -> bool:
        """A ready job for the same destination now ranks clearly above this claim's best: the
        claim gives way at its next association boundary (a plan for today's treatment passes a
        long research export) and its remaining instances wait, no attempt spent."""
        now = time.time()
        best = max(job.priority + (now - job.created_epoch) * AGING_PER_SECOND
                   for job in claim.jobs)
        # A job held back only because this claim has the destination's association ('busy')
        # counts as ready: it waits for this very claim.
        return bool(self.db.query(
            f"SELECT 1 FROM jobs WHERE state='pending' AND (next_attempt_at <= ? OR "
            f"last_status='busy') AND action=? AND target=? AND {RANK} > ? LIMIT 1",
            (now, claim.action, claim.target, now, AGING_PER_SECOND, best + OUTRANK_MARGIN)))

    def sent_within(self, connection: DbConnection, target: str,
                    seconds: float) -> tuple[int, int, float | None]:
        """(instances, bytes) delivered to the target in the last `seconds`, and the epoch at
        which the oldest of them leaves that window."""
        cutoff = time.time() - seconds
        row = connection.execute(
            "SELECT COUNT(*) AS n, COALESCE(SUM(bytes), 0) AS b, MIN(sent_at) AS oldest "
            "FROM job_items WHERE target=? AND sent_at >= ?",
            (target, iso_at(cutoff))).fetchone()
        oldest = None if row["oldest"] is None else epoch_of(row["oldest"]) + seconds
        return int(row["n"]), int(row["b"]), oldest

    @staticmethod
    def in_claims(connection: DbConnection, target: str) -> tuple[int, int]:
        """(claims running, instances they hold) for the target, across every worker."""
        row = connection.execute(
            "SELECT COUNT(DISTINCT claim_id) AS claims, COALESCE(SUM(claim_items), 0) AS items "
            "FROM jobs WHERE state='running' AND target=?", (target,)).fetchone()
        return int(row["claims"]), int(row["items"])

    def waiting_by_priority(self, target: str) -> dict[int, int]:
        """Jobs waiting for the target (pending), by priority."""
        return {row["priority"]: row["n"] for row in self.db.query(
            "SELECT priority, COUNT(*) AS n FROM jobs WHERE state='pending' AND target=? "
            "GROUP BY priority", (target,))}

    def awaiting_approval(self, target: str) -> int:
        """Jobs for the target that a person must approve first (approvals)."""
        return int(self.db.query("SELECT COUNT(*) AS n FROM jobs WHERE state=? AND target=?",
                                 (HELD, target))[0]["n"])

    def held_reason(self, target: str) -> str:
        """Why the target's ready jobs wait, when its policy holds them back ('' if not)."""
        marks = ",".join("?" * len(POLICY_WAIT_STATUSES))
        rows = self.db.query(
            f"SELECT last_error FROM jobs WHERE state='pending' AND target=? AND last_status IN "
            f"({marks}) ORDER BY updated_at DESC LIMIT 1", (target, *POLICY_WAIT_STATUSES))
        return str(rows[0]["last_error"] or "") if rows else ""

    @durable_write
    def look_again(self, statuses: Sequence[str] = POLICY_WAIT_STATUSES) -> int:
        """Jobs a destination's policy held back are looked at again now (its policy changed)."""
        marks = ",".join("?" * len(statuses))
        with self.db.transaction() as connection:
            return connection.execute(
                f"UPDATE jobs SET next_attempt_at=0 WHERE state='pending' AND last_status IN "
                f"({marks})", tuple(statuses)).rowcount

    @durable_write
    def mark_sent(self, items: Sequence[ClaimedItem], sizes: dict[str, int],
                  status: str | None = None, *, also: ItemsRecord | None = None) -> None:
        """also: the executor's own records of these deliveries, in the same transaction
        (forwarding: no longer in flight, due for storage commitment)."""
        stamp = now_iso()
        with self.db.transaction() as connection:
            self.leases.check(connection, {item.job_id for item in items})
            connection.executemany(
                "UPDATE job_items SET state='sent', sent_at=?, bytes=?, status=? "
                "WHERE job_id=? AND instance_id=?",
                [(stamp, sizes.get(i.instance_id, 0), status, i.job_id, i.instance_id)
                 for i in items],
            )
            if also is not None:
                also(connection, items)
            # It reached its destination: whatever failed before is no longer a run of failures.
            connection.executemany(
                "UPDATE jobs SET failing_since=NULL WHERE id=? AND failing_since IS NOT NULL",
                [(job_id,) for job_id in sorted({i.job_id for i in items})])

    @durable_write
    def state_counts(self) -> dict[str, int]:
        """How many jobs are in each state."""
        return {row["state"]: int(row["n"]) for row in self.db.query(
            "SELECT state, COUNT(*) AS n FROM jobs GROUP BY state")}

    @durable_write
    def live_state_counts(self) -> dict[str, int]:
        """How many jobs wait, are held, run or are parked: read through the index by state, so
        it stays as cheap as the work at hand when the table holds years of finished jobs."""
        return self.live_jobs_by_state(self.db)

    def pending_in_other_jobs(self, instance_id: str, except_action: str) -> bool:
        """Whether a waiting or running job of another action still has this instance to do."""
        return bool(self.db.query(
            "SELECT 1 FROM job_items i JOIN jobs j ON j.id = i.job_id WHERE i.instance_id=? "
            "AND i.state='pending' AND j.action<>? AND j.state IN ('pending','running') LIMIT 1",
            (instance_id, except_action)))

    @durable_write
    def mark_gone(self, item: ClaimedItem, reason: str, *,
                  also: ItemsRecord | None = None) -> None:
        """The source instance no longer exists in Orthanc: nothing left to send."""
        with self.db.transaction() as connection:
            self.leases.check(connection, [item.job_id])
            connection.execute(
                "UPDATE job_items SET state='gone', status=? WHERE job_id=? AND instance_id=?",
                (reason, item.job_id, item.instance_id))
            if also is not None:
                also(connection, [item])

    @durable_write
    def mark_refused(self, item: ClaimedItem, status: str, *,
                     also: ItemsRecord | None = None) -> None:
        with self.db.transaction() as connection:
            self.leases.check(connection, [item.job_id])
            connection.execute(
                "UPDATE job_items SET state='refused', status=? WHERE job_id=? AND instance_id=?",
                (status, item.job_id, item.instance_id),
            )
            if also is not None:
                also(connection, [item])

    @durable_write
    def set_orthanc_job(self, job_ids: Sequence[int], orthanc_job: str) -> None:
        with self.db.transaction() as connection:
            self.leases.check(connection, job_ids)
            self.note_orthanc_job(connection, job_ids, orthanc_job)

    @staticmethod
    def note_orthanc_job(connection: DbConnection, job_ids: Sequence[int],
                         orthanc_job: str) -> None:
        """The Orthanc job that runs these jobs now, in the caller's transaction."""
        connection.executemany("UPDATE jobs SET orthanc_job=? WHERE id=?",
                               [(orthanc_job, job_id) for job_id in sorted(set(job_ids))])

    @durable_write
    def settle(self, job_ids: Sequence[int], error: str | None, status: str | None, *,
               unfinished: str = "",
               with_outcome: Callable[[DbConnection, dict[int, JobState]], None]
               | None = None) -> dict[int, JobState]:
        """After a claim ran: done, parked (dead) or back to pending with backoff, per job.

        unfinished: the claim stopped early on purpose, with no error (a destination's pace, a
        higher-priority job): what remains waits again with this status, no attempt spent.
        with_outcome: the executor's own records of the attempt (its transfer rows), written in
        the same transaction: a job never shows as done without them, and a crash leaves both
        or neither."""
        outcome: dict[int, JobState] = {}
        stamp = now_iso()
        with self.db.transaction() as connection:
            self.leases.check(connection, job_ids)
            # The claim ends: jobs held back because it had the destination's association
            # ('busy') may be claimed at once, ranked against what this claim leaves.
            for target in {row["target"] for row in connection.execute(
                    f"SELECT DISTINCT target FROM jobs WHERE id IN ({','.join('?' * len(job_ids))})",
                    tuple(job_ids))}:
                connection.execute(
                    "UPDATE jobs SET next_attempt_at=0 WHERE state='pending' AND target=? AND "
                    "last_status='busy'", (target,))
            for job_id in job_ids:
                job = Job.of_row(connection.execute("SELECT * FROM jobs WHERE id=?",
                                                    (job_id,)).fetchone())
                counts = _item_counts(connection, job_id)
                if counts.get(ItemState.PENDING, 0) == 0:
                    refused = sum(counts.get(failed, 0) for failed in FAILED_ITEM_STATES)
                    state = JobState.DEAD if refused else JobState.DONE
                    last_error = job.last_error if refused else None
                    connection.execute(
                        "UPDATE jobs SET state=?, updated_at=?, last_error=? WHERE id=?",
                        (state, stamp, last_error, job_id),
                    )
                    outcome[job_id] = state
                    continue
                if unfinished and error is None:
                    connection.execute(
                        "UPDATE jobs SET state='pending', " + GIVE_BACK_ATTEMPT + ", "
                        "next_attempt_at=0, updated_at=?, last_status=?, last_error=NULL "
                        "WHERE id=?", (stamp, unfinished, job_id))
                    outcome[job_id] = JobState.PENDING
                    continue
                decision = decide(job.attempts, self.policy)
                state = JobState.PENDING if decision.retry else JobState.DEAD
                now = time.time()
                connection.execute(
                    "UPDATE jobs SET state=?, next_attempt_at=?, updated_at=?, last_error=?, "
                    # CAST: PostgreSQL must know a parameter's type to test it for NULL.
                    "last_status=?, failing_since=CASE WHEN CAST(? AS TEXT) IS NULL THEN "
                    "failing_since ELSE COALESCE(failing_since, ?) END WHERE id=?",
                    (state, now + decision.delay_seconds, stamp, error, status, error, now,
                     job_id),
                )
                outcome[job_id] = state
            if with_outcome is not None:
                with_outcome(connection, outcome)
        self.leases.forget(job_ids)
        return outcome

    @staticmethod
    def take_unreported(connection: DbConnection, job_id: int) -> tuple[int, int]:
        """The job's deliveries no transfer row counts yet, as (instances, bytes), now counted.

        Runs inside the transaction that writes the transfer row: a delivery established by a
        worker that died before its row (marked sent, or verified after a restart) is counted
        by the next row of its job, and none twice."""
        row = connection.execute(
            "SELECT COUNT(*) AS n, COALESCE(SUM(bytes), 0) AS b FROM job_items "
            "WHERE job_id=? AND state IN ('sent', 'not-committed') AND reported=0",
            (job_id,)).fetchone()
        connection.execute(
            "UPDATE job_items SET reported=1 WHERE job_id=? AND state IN ('sent', "
            "'not-committed') AND reported=0", (job_id,))
        return int(row["n"]), int(row["b"])

    @durable_write
    def policy_exhaust(self, job_id: int) -> None:
        with self.db.transaction() as connection:
            connection.execute(
                "UPDATE jobs SET attempts=CASE WHEN attempts > ? THEN attempts ELSE ? END "
                "WHERE id=?", (self.policy.max_attempts, self.policy.max_attempts, job_id),
            )

    def park(self, job_id: int, reason: str, status: str) -> None:
        """Dead-letter a job at once: retrying cannot help (e.g. its rule action is gone)."""
        self.policy_exhaust(job_id)
        self.settle([job_id], reason, status)

    @durable_write
    def note_refusal(self, job_id: int, error: str, status: str) -> None:
        with self.db.transaction() as connection:
            self.leases.check(connection, [job_id])
            connection.execute(
                "UPDATE jobs SET last_error=?, last_status=?, updated_at=? WHERE id=?",
                (error, status, now_iso(), job_id),
            )

    @durable_write
    def postpone(self, job_ids: Sequence[int], seconds: float, reason: str) -> None:
        """Claimed jobs wait for something (e.g. images still arriving) without spending an attempt."""
        with self.db.transaction() as connection:
            self.leases.check(connection, job_ids)
            connection.executemany(
                "UPDATE jobs SET state='pending', " + GIVE_BACK_ATTEMPT + ", next_attempt_at=?,"
                " last_error=?, last_status='waiting', updated_at=? WHERE id=? AND state='running'",
                [(time.time() + seconds, reason, now_iso(), job_id) for job_id in job_ids],
            )
        self.leases.forget(job_ids)

    @durable_write
    def resume_soon(self, job_ids: Sequence[int], reason: str) -> None:
        """Jobs settled back to pending by an interruption, not a failure: no attempt spent, no
        backoff."""
        with self.db.transaction() as connection:
            connection.executemany(
                "UPDATE jobs SET " + GIVE_BACK_ATTEMPT + ", next_attempt_at=0, last_error=?, "
                "last_status='interrupted', updated_at=? WHERE id=? AND state='pending'",
                [(reason, now_iso(), job_id) for job_id in job_ids])

    def retry_by_hand(self, job_id: int) -> bool:
        """A parked (dead) job runs again from its unsent, refused and not-committed instances."""
        with self.db.transaction() as connection:
            # A job parked because nobody approved it in time needs an approval, not a retry.
            cursor = connection.execute(
                "UPDATE jobs SET state=CASE WHEN last_status=? THEN ? ELSE 'pending' END, "
                "attempts=0, crashes=0, next_attempt_at=0, updated_at=? WHERE id=? AND state='dead'",
                (HOLD_EXPIRED, HELD, now_iso(), job_id),
            )
            if cursor.rowcount == 0:
                return False
            connection.execute(
                "UPDATE job_items SET state='pending', status=NULL, reported=0 "
                "WHERE job_id=? AND state IN ('refused', 'not-committed')",
                (job_id,),
            )
            for forget in self.items_reset:
                forget(connection, job_id)
        return True

    def cancel_by_hand(self, job_id: int) -> bool:
        """A waiting, held or parked job is not sent at all (a running one ends its claim first)."""
        with self.db.transaction() as connection:
            cursor = connection.execute(
                "UPDATE jobs SET state='cancelled', updated_at=?, last_status='cancelled' "
                "WHERE id=? AND state IN ('pending', 'dead', 'held')", (now_iso(), job_id))
            return cursor.rowcount == 1

    def failover_candidates(self, target: str, action: str, failing_before: float) -> list[int]:
        """Jobs for the target that failed to reach it since before `failing_before`, or parked
        (not those parked because nobody approved them: another destination would not help)."""
        return [row["id"] for row in self.db.query(
            "SELECT id FROM jobs WHERE target=? AND action=? AND ((state='pending' AND "
            "failing_since IS NOT NULL AND failing_since<=?) OR (state='dead' AND "
            "COALESCE(last_status, '')<>?)) ORDER BY id",
            (target, action, failing_before, HOLD_EXPIRED))]

    @durable_write
    def redirect(self, job_id: int, target: str, reason: str) -> tuple[Job, int | None, int] | None:
        """Move a waiting or parked job whole to another target: a job for it with every instance
        of this one (so a plan is never half here, half there), this one cancelled with the reason.
        Returns (the old job, the new job id or None when the target already has them all, new
        instances), or None when the job was claimed or finished meanwhile."""
        with self.db.transaction() as connection:
            row = connection.execute("SELECT * FROM jobs WHERE id=? AND state IN ('pending', "
                                     "'dead')", (job_id,)).fetchone()
            if row is None:
                return None
            job = Job.of_row(row)
            instances = [row["instance_id"] for row in connection.execute(
                "SELECT instance_id FROM job_items WHERE job_id=? ORDER BY position", (job_id,))]
            spec = JobSpec(rule=job.rule, action=job.action, trigger=job.trigger,
                           level=job.level, resource_id=job.resource_id, target=target,
                           patient_id=job.patient_id or "", study_uid=job.study_uid or "",
                           calling_aet=job.calling_aet or "", remote_ip=job.remote_ip or "",
                           priority=job.priority)
            new_id, count = self.enqueue(connection, spec, instances)
            if new_id is not None:
                connection.execute("UPDATE jobs SET last_status='failover', last_error=? WHERE id=?",
                                   (f"failover from {job.target} (job {job_id})", new_id))
            moved = f" (job {new_id})" if new_id is not None else " (it already had them all)"
            connection.execute(
                "UPDATE jobs SET state='cancelled', last_status='failed-over', last_error=?, "
                "updated_at=? WHERE id=?", (f"failed over to {target}{moved}: {reason}",
                                            now_iso(), job_id))
            return job, new_id, count

    def job(self, job_id: int) -> Job | None:
        """The job as it is now, or None when there is no such job (pruned)."""
        rows = self.db.query("SELECT * FROM jobs WHERE id=?", (job_id,))
        return Job.of_row(rows[0]) if rows else None

    def parked_for(self, target: str) -> list[int]:
        return [row["id"] for row in self.db.query(
            "SELECT id FROM jobs WHERE state='dead' AND target=? ORDER BY id", (target,))]

    def get(self, job_id: int) -> dict[str, Any] | None:
        rows = self.db.query("SELECT * FROM jobs WHERE id=?", (job_id,))
        if not rows:
            return None
        return self._json(rows[0])

    def list(self, state: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
        if state:
            rows = self.db.query(
                "SELECT * FROM jobs WHERE state=? ORDER BY id DESC LIMIT ?", (state, limit)
            )
        else:
            rows = self.db.query("SELECT * FROM jobs ORDER BY id DESC LIMIT ?", (limit,))
        return [self._json(row) for row in rows]

    def _json(self, row: DbRow) -> dict[str, Any]:
        job = _job_json(self.db, row)
        for details in self.job_details:
            job.update(details(int(row["id"])))
        return job

    # -- for /health: plain reads of the file, no queue needed and no waiting out a full disk
    # (state_counts waits; /health must answer, and reports a failed read as unreadable) --------
    @staticmethod
    def live_jobs_by_state(db: StateDatabase) -> dict[str, int]:
        """How many jobs wait, are held, run or are parked (a state without jobs is absent):
        through the index by state, so a monitor polling /health does not count the finished
        jobs that make most of a table kept for months."""
        return {row["state"]: int(row["n"]) for row in db.query(
            "SELECT state, COUNT(*) AS n FROM jobs WHERE state IN "
            f"({','.join('?' * len(LIVE_JOB_STATES))}) GROUP BY state", LIVE_JOB_STATES)}

    @staticmethod
    def oldest_waiting_epoch(db: StateDatabase) -> float | None:
        """When the oldest pending or running job was made (epoch seconds); None without one."""
        oldest = db.query("SELECT MIN(created_epoch) AS t FROM jobs "
                          "WHERE state IN ('pending','running')")[0]["t"]
        return None if oldest is None else float(oldest)


def _unassigned(
    connection: DbConnection, rule: str, target: str, instance_ids: Sequence[str]
) -> list[str]:
    fresh: list[str] = []
    seen: set[str] = set()
    for instance_id in instance_ids:
        if instance_id in seen:
            continue
        seen.add(instance_id)
        row = connection.execute(
            "SELECT 1 FROM job_items WHERE rule=? AND target=? AND instance_id=?",
            (rule, target, instance_id),
        ).fetchone()
        if row is None and not in_ledger(connection, rule, target, instance_id):
            fresh.append(instance_id)
    return fresh


def _item_counts(connection: DbConnection, job_id: int) -> dict[str, int]:
    rows = connection.execute(
        "SELECT state, COUNT(*) AS n FROM job_items WHERE job_id=? GROUP BY state", (job_id,)
    ).fetchall()
    return {row["state"]: row["n"] for row in rows}


def _job_json(db: StateDatabase, row: DbRow) -> dict[str, Any]:
    job = dict(row)
    counts = _item_counts(db.connection(), row["id"])
    job["instances"] = sum(counts.values())
    job["sent"] = counts.get("sent", 0)
    job["gone"] = counts.get("gone", 0)
    job["refused"] = [
        {"instance": r["instance_id"], "status": r["status"]}
        for r in db.query(
            "SELECT instance_id, status FROM job_items WHERE job_id=? AND state='refused'",
            (row["id"],),
        )
    ]
    job["bytes"] = db.query(
        "SELECT COALESCE(SUM(bytes),0) AS b FROM job_items WHERE job_id=?", (row["id"],)
    )[0]["b"]
    return job
