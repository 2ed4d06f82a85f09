"""GET /rt-gateway/health for monitoring (and the Docker health check): 200 when healthy, 503 with
the reasons when not. Reported: queue depth, the oldest pending job's age, parked jobs, each worker
process, free disk where Orthanc stores and where the gateway's database lives, and whether the
database takes a write. A target that is down is not unhealthy (the queue retries), so pending and
parked jobs are reported, not judged."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orthanc_plugin.db import write_probe
from orthanc_plugin.db_engine import SQLITE, StateDatabase
from orthanc_plugin.jobs.queue import JobQueue
from orthanc_plugin.jobs.states import JobState


@dataclass(frozen=True)
class HealthProbes:
    db: StateDatabase
    folders: dict[str, Path]                 # what -> folder whose disk is checked
    min_free_mb: int
    worker_pids: Callable[[], dict[int, int | None]]   # index -> pid, None when unknown


# A write the size of a few audit rows: on a full disk a one-value write can still fit in the
# WAL's free pages while a real batch fails, so the probe writes (and removes) a bit more.
PROBE_BYTES = 16 * 1024


def probe_write(db: StateDatabase) -> tuple[bool, str]:
    try:
        with db.transaction() as connection:
            if db.dialect == SQLITE:
                # SQLite: a write of some size (see PROBE_BYTES); PostgreSQL: the meta write
                # below is the probe (its server, not this disk, decides what it takes).
                write_probe(connection, PROBE_BYTES)
            db.set_meta("health_checked_at", str(time.time()), connection)
    except Exception as error:  # a full disk or a locked file: that is the answer
        return False, str(error)
    return True, ""


def health(probes: HealthProbes) -> tuple[int, dict[str, Any]]:
    problems: list[str] = []
    report: dict[str, Any] = {}
    now = time.time()
    try:
        counts = JobQueue.live_jobs_by_state(probes.db)
        oldest = JobQueue.oldest_waiting_epoch(probes.db)
        report["queue"] = {"pending": counts.get(JobState.PENDING, 0),
                           "running": counts.get(JobState.RUNNING, 0),
                           "parked": counts.get(JobState.DEAD, 0),
                           "awaiting_approval": counts.get(JobState.HELD, 0),
                           "oldest_pending_seconds": round(now - oldest, 1) if oldest else None}
    except Exception as error:
        problems.append(f"gateway database not readable: {error}")
    writable, why = probe_write(probes.db)
    report["database_writable"] = writable
    if not writable:
        problems.append(f"gateway database not writable: {why}")
    trouble = probes.db.trouble
    report["database_write_failures"] = trouble.failures
    if trouble.since is not None:
        problems.append(f"gateway database writes failing for {time.monotonic() - trouble.since:.0f}"
                        f" s: {trouble.last_error}")
    disks: dict[str, Any] = {}
    for what, folder in probes.folders.items():
        try:
            free_mb = shutil.disk_usage(_existing(folder)).free // (1 << 20)
        except OSError as error:
            problems.append(f"{what} ({folder}): {error}")
            continue
        disks[what] = {"folder": str(folder), "free_mb": free_mb}
        if free_mb < probes.min_free_mb:
            problems.append(f"{what} ({folder}): {free_mb} MB free, below {probes.min_free_mb} MB")
    report["disk"] = disks
    workers = {}
    for index, pid in sorted(probes.worker_pids().items()):
        alive = pid is not None and _alive(pid)
        workers[str(index)] = {"pid": pid, "alive": alive}
        if not alive:
            problems.append(f"worker {index} is not running (the supervisor restarts it)")
    report["workers"] = workers
    report["healthy"] = not problems
    report["problems"] = problems
    return (200 if not problems else 503), report


def _existing(folder: Path) -> Path:
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
