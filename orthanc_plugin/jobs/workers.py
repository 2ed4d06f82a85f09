"""Background threads of a worker process: the intake loop (lead worker only) and N executor
threads, each surviving any error it meets."""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from orthanc_plugin.db import DatabaseUnwritable, database_errors, is_outage
from orthanc_plugin.jobs.executors import Registry
from orthanc_plugin.jobs.intake import Intake
from orthanc_plugin.jobs.lease_store import LeaseLost
from orthanc_plugin.jobs.queue import Claim, JobQueue
from orthanc_plugin.reception import ReceptionGate

IDLE_WAIT_SECONDS = 1.0
# How long a half-full claim waits for more instances of the same target (see JobQueue.claim).
LINGER_SECONDS = 0.1
LINGER_WAIT_SECONDS = 0.03
# ... and only while fewer than this many are ready: a second association starts once a few are
# waiting, so a burst's backlog is sent on both cores and the last instance waits for little
# (bench/relay: 10 against 40, same run: gateway/Lua 0.97-1.06 against 1.11).
LINGER_UNTIL_ITEMS = 10
# Instances arrive in bursts (a series): the intake runs at most one pass per this interval, so
# one pass (a /changes read, a few queries) serves many instances instead of one. Measured: a
# pass per instance cost the lead 2 ms of CPU each, and Orthanc's ingest paid.
INTAKE_GATHER_SECONDS = 0.05


class ClaimWatch(Protocol):
    """Told when a claim starts and ends (the worker's job clock and memory guard)."""

    def started(self, description: str) -> None: ...

    def finished(self) -> None: ...

    def out_of_memory(self, description: str) -> None: ...


@dataclass(frozen=True)
class WorkerRole:
    """What this worker process is, given when its gateway is built (worker/main.py), never set
    on the built objects afterwards. The defaults are a lone process: the tests' gateways, the
    `--check` run."""

    claimant: str = ""                       # "<generation>:<pid>", written on the jobs it claims
    job_threads: int | None = None           # None: the configured Workers
    watch: ClaimWatch | None = None          # the job time limit's clock
    # The lead's /health: index -> pid of each worker process, None when unknown.
    worker_pids: Callable[[], dict[int, int | None]] = field(default=lambda: {})
    # The lead wakes the other worker processes when it queues work.
    wake_other_workers: Callable[[], None] = field(default=lambda: None)
    # Where a database that stops taking writes is reported (Orthanc's log); None: nowhere.
    report_trouble: Callable[[str], None] | None = None
    # This process's reception gate (reception.py), built by the worker's main before its first
    # REST call; the default is disabled (holds nothing).
    gate: ReceptionGate = field(default_factory=ReceptionGate)


class WorkerPool:
    def __init__(
        self,
        intake: Intake,
        queue: JobQueue,
        registry: Registry,
        workers: int,
        poll_interval_seconds: float,
        log_error: Callable[[str], None],
        watch: ClaimWatch | None = None,
        before_claim: Callable[[], None] = lambda: None,
        gate: ReceptionGate | None = None,
        intake_held: Callable[[], bool] = lambda: True,
    ) -> None:
        self.watch = watch
        # Marks each claim's REST calls as background or not (reception.py); None: a disabled
        # gate of its own (a test's pool).
        self.gate = gate if gate is not None else ReceptionGate()
        # Called before each claim (e.g. to pick up rules reloaded by the lead worker).
        self.before_claim = before_claim
        self.intake = intake
        # Whether this node runs the intake now (jobs/intake_lock_store.py: one at a time across
        # the nodes on one PostgreSQL; always on SQLite), asked before each pass.
        self.intake_held = intake_held
        # Said in the log only when it changes: a node that holds the intake from its start
        # (every single node) says nothing.
        self.intake_running = True
        self.queue = queue
        self.registry = registry
        self.workers = workers
        self.poll_interval_seconds = poll_interval_seconds
        self.log_error = log_error
        self.stopping = threading.Event()
        self.intake_wakeup = threading.Event()
        self.send_wakeup = threading.Event()
        self.threads: list[threading.Thread] = []

    def start(self, *, intake: bool = True) -> None:
        self.threads = []
        if intake:
            self.threads.append(
                threading.Thread(target=self._intake_loop, name="rtgw-intake", daemon=True))
        self.threads += [
            threading.Thread(target=self._send_loop, name=f"rtgw-sender-{n}", daemon=True)
            for n in range(self.workers)
        ]
        self.threads.append(
            threading.Thread(target=self._lease_loop, name="rtgw-leases", daemon=True))
        for thread in self.threads:
            thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self.stopping.set()
        self.intake_wakeup.set()
        self.send_wakeup.set()
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def wake_intake(self) -> None:
        self.intake_wakeup.set()

    def wake_senders(self) -> None:
        self.send_wakeup.set()

    def _intake_loop(self) -> None:
        blocked_since: float | None = None
        last_pass = 0.0
        while not self.stopping.is_set():
            busy = False
            try:
                if not self._hold_intake():
                    self.stopping.wait(self.poll_interval_seconds)
                    continue
                last_pass = time.monotonic()
                busy = self.intake.step()
                if blocked_since is not None:
                    self.log_error(f"intake: the gateway database takes writes again after "
                                   f"{time.monotonic() - blocked_since:.1f} s; catching up")
                    blocked_since = None
            except database_errors() as error:
                if not is_outage(error):
                    self.log_error("intake: " + traceback.format_exc())
                elif blocked_since is None:  # once per episode: Orthanc keeps the instances
                    blocked_since = time.monotonic()
                    self.log_error(f"intake: the gateway database cannot be written ({error}); "
                                   "new instances wait in Orthanc and are taken in once it can")
                self.stopping.wait(self.poll_interval_seconds)
            except Exception:  # log and go on: the changes cursor has not moved
                self.log_error("intake: " + traceback.format_exc())
                self.stopping.wait(self.poll_interval_seconds)
            if not busy:
                # A note that wakes the intake is taken at once, unless a pass ran less than
                # INTAKE_GATHER_SECONDS ago: then the rest of that interval gathers more notes.
                # The first and the last instance of a burst wait for no timer; the passes in
                # between still serve many instances each.
                if self.intake_wakeup.wait(self.poll_interval_seconds):
                    since_pass = time.monotonic() - last_pass
                    if since_pass < INTAKE_GATHER_SECONDS:
                        self.stopping.wait(INTAKE_GATHER_SECONDS - since_pass)
                self.intake_wakeup.clear()

    def _hold_intake(self) -> bool:
        held = self.intake_held()
        if held != self.intake_running:
            self.intake_running = held
            self.log_error("intake: this node reads Orthanc's changes now" if held else
                           "intake: another node reads Orthanc's changes; this one stands by")
        return held

    def _run(self, claim: Claim) -> None:
        description = f"{claim.action} to {claim.target} (jobs {claim.job_ids[:10]})"
        if self.watch is not None:
            self.watch.started(description)
        try:
            # Overlay, anonymize, export, deletes: their REST calls wait while a modality's
            # instances arrive (reception.py); forwarding never does.
            with self.gate.for_action(claim.action):
                self.registry.executor(claim.action).run(claim)
        except MemoryError:
            # Counted as a crash of this job by the supervisor: twice and it is parked as poison.
            if self.watch is not None:
                self.watch.out_of_memory(description)
            raise
        except DatabaseUnwritable as error:
            # Stopping while the disk is full: the claim stays running and in flight, and the
            # next start verifies with the receiver what arrived.
            self.log_error(f"{claim.action} to {claim.target}: not recorded ({error})")
        except LeaseLost as lost:
            # Another worker took some of these jobs after their lease ran out: what this one
            # did for them is the new holder's to establish (forwarding verifies at the
            # destination). The claim's other jobs wait again, no attempt spent.
            given = self.queue.give_back(claim.job_ids, "its claim was cut short: " + str(lost))
            self.log_error(f"{claim.action} to {claim.target}: {lost}; "
                           f"{len(given)} job(s) of the claim wait again")
        except Exception as error:  # the jobs go back to the queue with backoff
            self.log_error(f"{claim.action} to {claim.target}: " + traceback.format_exc())
            self.queue.settle(claim.job_ids, f"internal error: {error}", "internal")
        finally:
            if self.watch is not None:
                self.watch.finished()

    def _lease_loop(self) -> None:
        """Renew this worker's leases, then take over any worker's that ran out (a paused or
        dead process, another node): the queue's liveness needs no supervisor to notice."""
        failing = False
        while not self.stopping.wait(self.queue.leases.renew_every):
            try:
                lost = self.queue.renew_leases()
                requeued, poisoned = self.queue.take_over_expired()
                if failing:
                    self.log_error("leases: the gateway database answers again; leases renewed")
                    failing = False
            except Exception as error:  # a database that does not answer: try again next time
                if not failing:
                    self.log_error(f"leases: cannot renew ({error}); claims hold for "
                                   f"{self.queue.leases.lease_seconds:.0f} s without renewal")
                    failing = True
                continue
            if lost:
                self.log_error(f"leases: jobs {lost[:10]} were taken over by another worker")
            if requeued or poisoned:
                self.log_error(f"leases: took over jobs {requeued[:10]} whose lease ran out"
                               + (f"; parked as poison: {poisoned[:10]}" if poisoned else ""))
                self.send_wakeup.set()

    def _send_loop(self) -> None:
        while not self.stopping.is_set():
            try:
                self.before_claim()
                claim = self.queue.claim(self.registry.max_items, LINGER_SECONDS, LINGER_UNTIL_ITEMS)
                if claim is not None:
                    # Another sender may find more work for another target at once.
                    self.send_wakeup.set()
                    self._run(claim)
                    continue
                due = self.queue.next_due_in()
            except DatabaseUnwritable:
                due = self.poll_interval_seconds  # stopping while the disk is full
            except Exception:
                self.log_error("sender: " + traceback.format_exc())
                due = self.poll_interval_seconds
            if due is None:
                wait = IDLE_WAIT_SECONDS
            elif due <= 0:
                wait = LINGER_WAIT_SECONDS   # work is ready but lingering for a fuller claim
            else:
                wait = min(due, IDLE_WAIT_SECONDS)
            self.send_wakeup.wait(wait)
            self.send_wakeup.clear()
