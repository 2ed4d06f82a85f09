"""Starts, watches and restarts the worker processes; one generation of them per database.

Why processes: the Python plugin keeps the GIL during SDK calls and Orthanc runs the stored-instance
callback under its store lock, so any plugin thread doing real work can stall or deadlock Orthanc's
receiving (ARCHITECTURE.md). Workers run the venv's interpreter, reach Orthanc over HTTP, run at a
lower CPU priority, and die with Orthanc: a stdin pipe whose end only Orthanc holds (EOF when it
dies) and PR_SET_PDEATHSIG, which the worker sets on itself.

One generation: the supervisor holds an exclusive flock on the channels' lock file and every worker
inherits that descriptor, so the lock stays held while any worker of a generation lives, even an
orphan of a killed Orthanc. A new supervisor ends such stale workers and waits for the lock before
it starts its own.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from orthanc_plugin.channels import Channels

WORKER_MODULE = "orthanc_plugin.worker"
# Exit codes a worker uses to say why it ended (see worker/guard.py).
EXIT_CONFIG = 78
EXIT_TIME_LIMIT = 75
EXIT_MEMORY = 76
EXIT_REASONS = {EXIT_TIME_LIMIT: "job time limit exceeded", EXIT_MEMORY: "memory limit exceeded"}
RESTART_BACKOFF = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
STABLE_AFTER_SECONDS = 60.0


@dataclass(frozen=True)
class WorkerCommand:
    python: str
    root: Path
    channels: Channels
    count: int
    environment: dict[str, str] = field(default_factory=dict)

    def argv(self, index: int, generation: str, crashed: tuple[int, str] | None) -> list[str]:
        args = [self.python, "-m", WORKER_MODULE, "--index", str(index),
                "--generation", generation, "--parent", str(os.getpid()),
                "--channels", str(self.channels.folder)]
        if crashed is not None:
            args += ["--crashed-pid", str(crashed[0]), "--crash-reason", crashed[1]]
        return args

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.environment)
        env["PYTHONPATH"] = str(self.root)
        env.setdefault("TCP_NODELAY", "1")
        # One BLAS thread per worker: the workers already use the cores, Orthanc needs its share.
        env.setdefault("OPENBLAS_NUM_THREADS", "1")
        env.setdefault("OMP_NUM_THREADS", "1")
        # glibc reserves a 64 MB malloc arena per thread, up to 8 per core: address space that
        # WorkerMemoryLimitMB (RLIMIT_AS) counts although nothing uses it. Measured on trixie:
        # the lead's request threads alone reached a 1 GB limit and every allocation failed.
        env.setdefault("MALLOC_ARENA_MAX", "2")
        return env


def exit_reason(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return EXIT_REASONS.get(returncode, f"exited with status {returncode}")


class _Slot:
    def __init__(self, index: int) -> None:
        self.index = index
        self.process: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.failures = 0
        self.restart_at = 0.0
        self.crashed: tuple[int, str] | None = None


class Supervisor:
    def __init__(
        self, command: WorkerCommand, configuration: str,
        log_warning: Callable[[str], None], log_error: Callable[[str], None],
        node: str = "",
    ) -> None:
        self.command = command
        self.configuration = configuration.encode() + b"\n"
        self.log_warning = log_warning
        self.log_error = log_error
        # "<node>/<pid>-<ns>": the node's name first, so a start takes back only its own node's
        # earlier claims (JobQueue.recover_after_crash), never a neighbour's on one database.
        self.generation = f"{node}/{os.getpid()}-{time.time_ns()}" if node else \
            f"{os.getpid()}-{time.time_ns()}"
        self.slots = [_Slot(index) for index in range(command.count)]
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock_fd: int | None = None
        self._slots_lock = threading.Lock()
        self._deadline = 0.0
        self._reported_live: set[int] = set()

    # -- life cycle --------------------------------------------------------------------------------
    def start(self) -> None:
        # Every spawn happens on this one long-lived thread: PR_SET_PDEATHSIG fires when the
        # thread that forked a child ends, not only when the process does.
        self._thread = threading.Thread(target=self._run, name="rtgw-supervisor", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 8.0) -> None:
        """SIGTERM to every worker, SIGKILL to what is left at the deadline; then free the lock.

        The waiting happens on the supervising thread itself: were it to end first, PDEATHSIG
        would SIGKILL every worker before it could hand its claims back."""
        self._deadline = time.monotonic() + timeout
        with self._slots_lock:
            processes = [slot.process for slot in self.slots if slot.process is not None]
        self._stopping.set()
        for process in processes:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        if self._thread is not None:
            self._thread.join(timeout + 3)
        self.log_warning("workers ended: " + ", ".join(
            f"pid {p.pid} {exit_reason(p.returncode) if p.returncode is not None else 'running'}"
            for p in processes))
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _wait_for_workers(self) -> None:
        with self._slots_lock:
            processes = [slot.process for slot in self.slots if slot.process is not None]
        for process in processes:
            try:
                process.wait(max(0.0, self._deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(2)

    def worker_states(self) -> list[dict[str, object]]:
        with self._slots_lock:
            return [
                {"index": slot.index, "pid": slot.process.pid if slot.process else None,
                 "alive": bool(slot.process and slot.process.poll() is None),
                 "restarts": slot.failures}
                for slot in self.slots
            ]

    # -- the supervising thread -------------------------------------------------------------------
    def _run(self) -> None:
        try:
            if not self._acquire_generation_lock():
                return
            while not self._stopping.is_set():
                self._tend()
                self._stopping.wait(0.2)
            self._wait_for_workers()
        except Exception as error:  # never let the supervisor die silently
            self.log_error(f"supervisor: {error!r}")

    def _tend(self) -> None:
        now = time.monotonic()
        for slot in self.slots:
            process = slot.process
            if process is not None:
                returncode = process.poll()
                if returncode is None:
                    if now - slot.started_at > STABLE_AFTER_SECONDS:
                        slot.failures = 0
                    continue
                reason = exit_reason(returncode)
                self.log_error(f"worker {slot.index} (pid {process.pid}) {reason}; restarting")
                slot.crashed = (process.pid, reason)
                delay = RESTART_BACKOFF[min(slot.failures, len(RESTART_BACKOFF) - 1)]
                slot.failures += 1
                slot.restart_at = now + delay
                with self._slots_lock:
                    slot.process = None
            if now >= slot.restart_at and not self._stopping.is_set():
                self._spawn(slot)

    def _spawn(self, slot: _Slot) -> None:
        argv = self.command.argv(slot.index, self.generation, slot.crashed)
        pass_fds = (self._lock_fd,) if self._lock_fd is not None else ()
        try:
            process = subprocess.Popen(
                argv, stdin=subprocess.PIPE, env=self.command.env(), cwd=self.command.root,
                pass_fds=pass_fds, close_fds=True,
                # Its own session: Ctrl-C or a group SIGTERM reaches Orthanc, which then stops
                # the workers in order (claims handed back) instead of all at once.
                start_new_session=True,
            )
        except OSError as error:
            self.log_error(f"cannot start worker {slot.index} ({argv[0]}): {error}")
            slot.restart_at = time.monotonic() + 10
            return
        assert process.stdin is not None
        try:
            # The configuration travels on stdin, not argv: it holds the internal credential.
            process.stdin.write(self.configuration)
            process.stdin.flush()
        except OSError:
            pass  # it died at once; the next pass sees the exit status
        # stdin stays open: its EOF tells the worker that Orthanc is gone.
        with self._slots_lock:
            slot.process = process
        slot.started_at = time.monotonic()
        slot.crashed = None

    def _acquire_generation_lock(self) -> bool:
        path = self.command.channels.lock_file
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        warned = False
        while not self._stopping.is_set():
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self._lock_fd = fd
                return True
            except BlockingIOError:
                stale = self._end_stale_workers()
                if not warned:
                    self.log_warning(
                        f"waiting for the previous generation of workers to end "
                        f"(pids {stale or 'unknown'}) before starting new ones")
                    warned = True
                self._stopping.wait(0.2)
        os.close(fd)
        return False

    def _end_stale_workers(self) -> list[int]:
        """Workers of an earlier generation for this database (an orphan of a killed Orthanc).

        A worker whose Orthanc still runs is not stale: that is a second Orthanc configured on the
        same gateway database, a mistake to report, not a process to kill."""
        ended = []
        folder = str(self.command.channels.folder)
        for index in range(64):
            pid_file = self.command.channels.pid_file(index)
            try:
                pid = int(pid_file.read_text().strip())
            except (OSError, ValueError):
                continue
            if pid == os.getpid() or not is_worker_process(pid, folder):
                continue
            parent = parent_pid(pid)
            if parent not in (0, 1) and parent != os.getpid() and is_orthanc_process(parent):
                if pid not in self._reported_live:
                    self._reported_live.add(pid)
                    self.log_error(
                        f"another Orthanc (pid {parent}) runs gateway workers on this database; "
                        "no worker starts here until it stops (one gateway database per Orthanc)")
                continue
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
                ended.append(pid)
        return ended


def parent_pid(pid: int) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[1])
    except (OSError, ValueError, IndexError):
        return 0


def is_orthanc_process(pid: int) -> bool:
    try:
        executable = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
    except OSError:
        return False
    return executable.rsplit(b"/", 1)[-1].lower().startswith(b"orthanc")


def is_worker_process(pid: int, channels_folder: str) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return WORKER_MODULE.encode() in cmdline and channels_folder.encode() in cmdline


def validate_in_worker(command: WorkerCommand, configuration: str, timeout: float = 120.0) -> str:
    """Build the gateway once in a throw-away worker (`--check`): "" when good, else the reason.

    Run at plugin load, before Orthanc serves anything, so a broken rules file or setting stops
    Orthanc's start-up with the reason, as it did when the gateway lived in the plugin.
    """
    argv = [command.python, "-m", WORKER_MODULE, "--check", "--channels",
            str(command.channels.folder)]
    try:
        result = subprocess.run(argv, input=configuration.encode() + b"\n", capture_output=True,
                                env=command.env(), cwd=command.root, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"cannot run the worker interpreter {command.python}: {error}"
    if result.returncode == 0:
        return ""
    text = result.stderr.decode("utf-8", "replace").strip()
    marked = [line for line in text.splitlines() if line.startswith("RtGateway: not starting: ")]
    if marked:
        return marked[-1][len("RtGateway: not starting: "):]
    return f"{exit_reason(result.returncode)}: {text[-2000:]}"


def worker_python(setting: str, root: Path) -> str:
    """The interpreter for workers. Never sys.executable: inside the plugin that is Orthanc."""
    if setting:
        return setting
    venv = Path(os.environ.get("RTGW_VENV", root / ".venv"))
    candidate = venv / "bin" / "python"
    return str(candidate) if candidate.exists() else "/usr/bin/python3"
