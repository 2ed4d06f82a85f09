"""What keeps a worker from harming Orthanc: it dies with Orthanc, yields the CPU to it, stays
inside a memory limit, and ends itself when one job runs past its time limit (the supervisor then
counts the crash against that job; twice and the job is parked as poison)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import signal
import sys
import threading
import time
from collections.abc import Callable

EXIT_TIME_LIMIT = 75
EXIT_MEMORY = 76
EXIT_CONFIG = 78
_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    """Two ways, because either alone has a gap: PDEATHSIG is lost if the parent died before it
    was set; the stdin pipe (Orthanc holds its only write end) reports EOF whenever Orthanc dies."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent_pid:
        os._exit(0)

    def watch_stdin() -> None:
        try:
            while sys.stdin.buffer.read(65536):
                pass
        except (OSError, ValueError):
            pass
        os._exit(0)

    threading.Thread(target=watch_stdin, name="rtgw-parent-watch", daemon=True).start()


def lower_priority(niceness: int) -> None:
    if niceness > 0:
        with contextlib.suppress(OSError):
            os.nice(niceness)


def limit_memory(megabytes: int) -> None:
    """Address-space limit: an allocation beyond it raises MemoryError in this worker instead of
    waking the kernel's OOM killer, which might choose Orthanc."""
    if megabytes <= 0:
        return
    limit = megabytes << 20
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


class JobClock:
    """Each running claim's start; a watchdog ends the process when one outlives the limit."""

    def __init__(self, limit_seconds: float, log_error: Callable[[str], None]) -> None:
        self.limit_seconds = limit_seconds
        self.log_error = log_error
        self._running: dict[int, tuple[float, str]] = {}
        self._lock = threading.Lock()

    def started(self, description: str) -> None:
        with self._lock:
            self._running[threading.get_ident()] = (time.monotonic(), description)

    def finished(self) -> None:
        with self._lock:
            self._running.pop(threading.get_ident(), None)

    def out_of_memory(self, description: str) -> None:
        exit_for_memory(self.log_error, description)

    def start_watchdog(self) -> None:
        if self.limit_seconds > 0:
            threading.Thread(target=self._watch, name="rtgw-job-clock", daemon=True).start()

    def _watch(self) -> None:
        while True:
            time.sleep(min(1.0, self.limit_seconds / 4))
            now = time.monotonic()
            with self._lock:
                late = [d for started, d in self._running.values()
                        if now - started > self.limit_seconds]
            if late:
                self.log_error(f"job time limit of {self.limit_seconds:.0f} s exceeded by "
                               f"{late[0]}: ending this worker")
                os._exit(EXIT_TIME_LIMIT)


def exit_for_memory(log_error: Callable[[str], None], description: str) -> None:
    log_error(f"memory limit exceeded by {description}: ending this worker")
    os._exit(EXIT_MEMORY)
