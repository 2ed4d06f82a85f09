"""Reception first: while a modality's instances arrive, background work holds its REST calls.

Worker processes are niced, but Orthanc serves their REST requests at its own priority: an overlay
reading a CT or storing its derived series through Orthanc took Orthanc's time from a modality's
C-STORE (bench/isolation, before this gate: ingest 1.36x idle while an overlay built). So:

- the lead worker, told of each stored instance by a note, touches one small file in the private
  channels folder (`ArrivalBeacon`, at most every PUBLISH_EVERY_SECONDS), and only for instances a
  DICOM peer sent (Origin `DicomProtocol`): the gateway's own stores (overlay series, anonymized
  copies, the import folder) come back through REST and must not hold the work that makes them;
- every worker process asks, before each REST call of a thread marked as background (its
  `ReceptionGate`), how long ago that file was touched; while it is less than QuietSeconds the
  call waits, in short sleeps, then goes once the burst has ended: the work catches up by itself;
- a thread held MaxPauseSeconds in a row gets a pass window of a tenth of that, then is held again:
  a reception that never ends (a long migration) slows background work, never stops it;
- forwarding (the relay), the intake, the routes and the lead's delivery loops are not marked and
  never wait: they are what a modality and a planner wait for.

What the gate did is counted per process in the channels folder; the lead shows the sum in
GET /rt-gateway/stats (`reception_first`) and as Prometheus gauges. Pure logic: no `orthanc`.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orthanc_plugin.config import SECTION, ConfigError
from orthanc_plugin.forwarding.rule import JOB_ACTION as FORWARD_ACTION

# Job actions whose REST calls never wait: the relay is what a receiver waits for.
FOREGROUND_ACTIONS = frozenset({FORWARD_ACTION})
# Threads of the lead that run background loops of their own and are not claims of the queue:
# harvest (C-FIND/C-MOVE a remote PACS), retention and cleanup (deletes). Named here, by their
# thread names (periodic.py, harvest/action.py), so that those capabilities need no change.
# The de-identification's copy threads (deid/pipeline.py) work for a claim that is background.
BACKGROUND_THREADS = ("rtgw-harvest-", "rtgw-retention", "rtgw-cleanup", "rtgw-deid-copier")
# The lead touches the arrival file at most this often while notes come (a syscall per 100 ms).
PUBLISH_EVERY_SECONDS = 0.1
# A held call looks again this often: how late it may start after the burst's quiet period.
POLL_SECONDS = 0.05
# After MaxPauseSeconds held, a thread's calls pass for this share of it.
PASS_SHARE = 0.1
# An arrival file touched "in the future" by more than this means the wall clock stepped back:
# treated as no arrival rather than holding work until the clock catches up.
CLOCK_SLACK_SECONDS = 1.0
ARRIVAL_FILE = "arrival"
COUNTERS_PREFIX = "reception-"
DICOM_ORIGIN = "DicomProtocol"


@dataclass(frozen=True)
class ReceptionSettings:
    """`RtGateway.ReceptionFirst`: {"Enabled": true, "QuietSeconds": 0.75, "MaxPauseSeconds": 5}."""

    enabled: bool = True
    # Instances of one series come milliseconds apart, series of one study within a second.
    quiet_seconds: float = 0.75
    max_pause_seconds: float = 5.0


def read_reception_settings(section: dict[str, Any]) -> ReceptionSettings:
    raw = section.get("ReceptionFirst")
    if raw is None:
        return ReceptionSettings()
    where = f"{SECTION}.ReceptionFirst"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected an object")
    unknown = set(raw) - {"Enabled", "QuietSeconds", "MaxPauseSeconds"}
    if unknown:
        raise ConfigError(f"{where}: unknown setting(s) {', '.join(sorted(unknown))}")
    enabled = raw.get("Enabled", True)
    if not isinstance(enabled, bool):
        raise ConfigError(f"{where}.Enabled: expected true or false, got {enabled!r}")
    numbers = {}
    for key, default, low, high in (("QuietSeconds", 0.75, 0.05, 60.0),
                                    ("MaxPauseSeconds", 5.0, 0.1, 600.0)):
        value = raw.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
            raise ConfigError(f"{where}.{key}: expected a number from {low} to {high}, "
                              f"got {value!r}")
        numbers[key] = float(value)
    return ReceptionSettings(enabled, numbers["QuietSeconds"], numbers["MaxPauseSeconds"])


def hold_seconds(arrival_age: float | None, held_for: float,
                 settings: ReceptionSettings) -> float:
    """How long a background call should still wait before looking again (0: go now).

    arrival_age: seconds since the last instance arrived (None: none known); held_for: how long
    this thread has been held in a row.
    """
    if not settings.enabled or arrival_age is None or arrival_age >= settings.quiet_seconds:
        return 0.0
    if held_for >= settings.max_pause_seconds:
        return 0.0
    return max(0.0, min(POLL_SECONDS, settings.quiet_seconds - arrival_age,
                        settings.max_pause_seconds - held_for))


class ArrivalBeacon:
    """The lead's side: touch the arrival file when a DICOM peer's instance is noted."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self._clock = clock
        self._published = float("-inf")

    def noted(self, origin: str) -> bool:
        """Called for each stored-instance note; True when the file was touched."""
        if origin != DICOM_ORIGIN:
            return False
        now = self._clock()
        if now - self._published < PUBLISH_EVERY_SECONDS:
            return False
        self._published = now
        try:
            os.utime(self.path)
        except FileNotFoundError:
            try:
                self.path.touch()
            except OSError:
                return False
        except OSError:
            return False
        return True


def arrival_age(path: Path, now: float | None = None) -> float | None:
    """Seconds since the arrival file was touched; None when it is absent or from the future."""
    try:
        touched = os.stat(path).st_mtime
    except OSError:
        return None
    age = (time.time() if now is None else now) - touched
    return None if age < -CLOCK_SLACK_SECONDS else max(age, 0.0)


@dataclass
class Counters:
    held_calls: int = 0           # background REST calls that waited at least once
    held_seconds: float = 0.0     # their waits, summed
    pass_windows: int = 0         # times MaxPauseSeconds was reached and calls passed anyway

    def as_dict(self) -> dict[str, float]:
        return {"held_calls": self.held_calls, "held_seconds": round(self.held_seconds, 3),
                "pass_windows": self.pass_windows}


@dataclass
class ReceptionGate:
    """Every worker process's side: holds the REST calls of threads marked as background.

    One per worker process, built by its main (`for_worker`) before the first REST call and handed
    to what marks or holds calls: the HTTP host, the worker pool (WorkerRole.gate) and the
    capabilities (CapabilityContext.gate). Built without arguments it is disabled: a test's gateway,
    the `--check` run."""

    settings: ReceptionSettings = field(default_factory=lambda: ReceptionSettings(enabled=False))
    arrival_file: Path | None = None
    counters_file: Path | None = None
    age: Callable[[Path], float | None] = arrival_age
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    counters: Counters = field(default_factory=Counters)

    def __post_init__(self) -> None:
        self._local = threading.local()
        self._lock = threading.Lock()

    @classmethod
    def for_worker(cls, settings: ReceptionSettings, folder: Path, index: int, *,
                   age: Callable[[Path], float | None] = arrival_age,
                   clock: Callable[[], float] = time.monotonic,
                   sleep: Callable[[float], None] = time.sleep) -> ReceptionGate:
        """Worker `index`'s gate, reading the arrival file and its counters in `folder`."""
        counters_file = folder / f"{COUNTERS_PREFIX}{index}.json"
        # Counters are totals like Prometheus counters: a worker that restarts continues them.
        counters = Counters()
        try:
            counts = json.loads(counters_file.read_text())
            counters = Counters(int(counts["held_calls"]), float(counts["held_seconds"]),
                                int(counts["pass_windows"]))
        except (OSError, ValueError, KeyError, TypeError):
            pass
        return cls(settings, folder / ARRIVAL_FILE, counters_file, age, clock, sleep, counters)

    @contextmanager
    def background(self, is_background: bool = True) -> Iterator[None]:
        """Marks this thread's REST calls as background work for the block."""
        before = getattr(self._local, "background", None)
        self._local.background = is_background
        try:
            yield
        finally:
            self._local.background = before

    def for_action(self, job_action: str) -> AbstractContextManager[None]:
        """The marking for a claim of this job action: forwarding stays in front."""
        return self.background(job_action not in FOREGROUND_ACTIONS)

    def _is_background(self) -> bool:
        marked = getattr(self._local, "background", None)
        if marked is not None:
            return bool(marked)
        return threading.current_thread().name.startswith(BACKGROUND_THREADS)

    def arriving(self) -> bool:
        """Whether a DICOM peer's instances are arriving now (for loops that yield, not wait)."""
        if not self.settings.enabled or self.arrival_file is None:
            return False
        age = self.age(self.arrival_file)
        return age is not None and age < self.settings.quiet_seconds

    def before_request(self) -> None:
        """Called by the HTTP host before each REST call; returns when the call may go."""
        if not self.settings.enabled or self.arrival_file is None or not self._is_background():
            return
        now = self.clock()
        if now < getattr(self._local, "pass_until", float("-inf")):
            return
        started = now
        held = False
        while True:
            wait = hold_seconds(self.age(self.arrival_file), now - started, self.settings)
            if wait <= 0:
                break
            if not held:
                # Counted when the hold starts, so that GET stats shows it while it lasts.
                held = True
                with self._lock:
                    self.counters.held_calls += 1
                    snapshot = self.counters.as_dict()
                self._publish(snapshot)
            self.sleep(wait)
            now = self.clock()
        if not held:
            return
        released = now - started >= self.settings.max_pause_seconds
        if released:
            self._local.pass_until = now + self.settings.max_pause_seconds * PASS_SHARE
        with self._lock:
            self.counters.held_seconds += now - started
            self.counters.pass_windows += int(released)
            snapshot = self.counters.as_dict()
        self._publish(snapshot)

    def _publish(self, snapshot: dict[str, float]) -> None:
        # Once per held call (at most once per burst and thread in practice): the lead sums the
        # files of every worker process for GET stats.
        if self.counters_file is None:
            return
        temporary = self.counters_file.with_suffix(f".{threading.get_ident()}.tmp")
        try:
            temporary.write_text(json.dumps(snapshot))
            os.replace(temporary, self.counters_file)
        except OSError:
            pass


def summary(folder: Path, settings: ReceptionSettings) -> dict[str, Any]:
    """The `reception_first` section of GET stats: the settings and every process's counters."""
    total = Counters()
    by_worker: dict[str, dict[str, float]] = {}
    for path in sorted(folder.glob(f"{COUNTERS_PREFIX}*.json")):
        try:
            counts = json.loads(path.read_text())
            worker = path.stem[len(COUNTERS_PREFIX):]
            total.held_calls += int(counts["held_calls"])
            total.held_seconds += float(counts["held_seconds"])
            total.pass_windows += int(counts["pass_windows"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        by_worker[worker] = counts
    age = arrival_age(folder / ARRIVAL_FILE)
    return {
        "enabled": settings.enabled,
        "quiet_seconds": settings.quiet_seconds,
        "max_pause_seconds": settings.max_pause_seconds,
        "instances_arriving": age is not None and age < settings.quiet_seconds,
        "last_arrival_seconds_ago": None if age is None else round(age, 3),
        **total.as_dict(),
        "by_worker": by_worker,
    }

