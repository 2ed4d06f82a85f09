"""Site hooks: a Python script a rule names, run on one dataset in its own limited process.

The script's contract
---------------------
A hook is a Python file defining::

    import pydicom
    from orthanc_plugin.transform.hook_api import Refuse

    def process(ds: pydicom.Dataset) -> pydicom.Dataset | None:
        if ds.Modality != "RTSTRUCT":
            return None                      # unchanged: the original bytes go on
        if "PatientID" not in ds:
            raise Refuse("no patient ID")    # refused: the object is quarantined with the reason
        for roi in ds.StructureSetROISequence:
            if roi.ROIName == "Ring":
                roi.ROIName = "z_Ring"
        return ds                            # changed (return ds, or a new Dataset)

- `process` receives the parsed object (pydicom, file meta included) and returns a dataset or
  None. None means unchanged; a script that changes `ds` in place must return it (a None after
  in-place changes is refused rather than silently dropping them).
- `hook_api` is the only gateway module a script can import (it holds `Refuse`); the script
  runs with pydicom, numpy and the standard library of the worker's interpreter.
- The process: `python -I` (no PYTHONPATH, no user site), empty environment, working
  directory /, stdin closed; print() goes to the log tail, not the result. Limits: wall clock
  `seconds` (the process group is killed), CPU seconds + 1, address space `memory_mb` (the
  interpreter with pydicom and numpy already takes ~130 MB, so keep at least 256), no core
  dumps, files written at most the output size limit.
- No network unless the rule allows it: see network_isolation() below.
- The output is validated before it replaces the input: it must parse as a DICOM file, keep
  the SOP Class UID, keep the SOP Instance UID unless the rule declares a UID change
  (allow_uid_change), keep every UID the input referenced (referenced_uids) and the RT
  reference sequences it had, and be at most 4x the input + 1 MB.

Any failure raises HookRefused with `kind` (time, memory, crash, refused, invalid, output)
and a reason meant for the quarantine note.

Network isolation
-----------------
With network disallowed the child first tries a new user+network namespace (unshare with
CLONE_NEWUSER|CLONE_NEWNET: only a loopback interface, down; the user namespace also drops
the capabilities a root worker would have to raise its limits or re-enter the host's
namespace; the worker's uid/gid are mapped into it so files look the same), then a network
namespace alone (needs CAP_SYS_ADMIN; Docker's default seccomp profile refuses unshare to
unprivileged containers, so expect the guard there), and falls back to a Python
guard: an audit hook and replaced socket functions that raise before the script is loaded,
also blocking subprocesses and ctypes (a child program would otherwise have the network).
The guard is best effort; only the namespaces are a barrier. network_isolation() says which
one this machine gives. Path-based Unix sockets are not separated by a network namespace; the
guard (installed on top of a namespace too) refuses every socket a script creates in Python.

Call run_hook from a worker process, not from inside Orthanc: there sys.executable is Orthanc.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any, Literal

from pydicom import Dataset, dcmread
from pydicom.datadict import dictionary_VR
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID

HookFailure = Literal["time", "memory", "crash", "refused", "invalid", "output"]

ISOLATION_USER_NET = "user+network namespace"
ISOLATION_NET = "network namespace"
ISOLATION_GUARD = "python socket guard"
ISOLATION_NONE = "none (network allowed)"
# Tried in this order by the child; tests empty it to exercise the Python guard.
NAMESPACE_ATTEMPTS: tuple[str, ...] = ("user+net", "net")

CHILD = Path(__file__).with_name("hook_child.py")
OUTPUT_FACTOR = 4
OUTPUT_SLACK = 1024 * 1024
STDERR_TAIL = 64 * 1024
HEADER_LIMIT = 64 * 1024
# Thread pools (OpenBLAS, OpenMP) multiply address space per thread, which RLIMIT_AS counts.
CHILD_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

# Elements whose value is a reference to another object (or to its frame of reference)
# wherever they occur.
_REFERENCE_KEYWORDS = (
    "ReferencedSOPInstanceUID",
    "ReferencedFrameOfReferenceUID",
    "RelatedFrameOfReferenceUID",
    "FrameOfReferenceUID",
)
# Inside a sequence item these name another series/study (RTReferencedSeriesSequence ...); at
# the top level they are the object's own identity, which a hook may change.
_NESTED_REFERENCE_KEYWORDS = ("SeriesInstanceUID", "StudyInstanceUID")
# RT reference sequences that must not disappear even where their UIDs survive elsewhere
# (an RTSTRUCT's contour items repeat the CT UIDs of ReferencedFrameOfReferenceSequence).
RT_REFERENCE_SEQUENCES = (
    "ReferencedFrameOfReferenceSequence",
    "ReferencedRTPlanSequence",
    "ReferencedStructureSetSequence",
    "ReferencedDoseSequence",
)
_REFERENCE_TAGS = frozenset(Tag(keyword) for keyword in _REFERENCE_KEYWORDS)
_NESTED_REFERENCE_TAGS = frozenset(Tag(keyword) for keyword in _NESTED_REFERENCE_KEYWORDS)


@dataclass(frozen=True)
class HookLimits:
    seconds: float = 10.0
    memory_mb: int = 512
    network: bool = False


class HookRefused(Exception):
    """The hook did not produce a usable dataset; str() is the reason for the quarantine."""

    def __init__(self, kind: HookFailure, reason: str) -> None:
        super().__init__(reason)
        self.kind: HookFailure = kind
        self.reason = reason


@dataclass(frozen=True)
class HookOutcome:
    """run_hook as a value: exactly one of data and refused is set."""

    data: bytes | None
    refused: str | None
    kind: HookFailure | None = None

    def __post_init__(self) -> None:
        if (self.data is None) == (self.refused is None):
            raise ValueError("HookOutcome: exactly one of data and refused")


def hook_outcome(script: Path, dicom: bytes, limits: HookLimits,
                 allow_uid_change: bool = False) -> HookOutcome:
    try:
        return HookOutcome(run_hook(script, dicom, limits, allow_uid_change), None)
    except HookRefused as refusal:
        return HookOutcome(None, refusal.reason, refusal.kind)


def run_hook(script: Path, dicom: bytes, limits: HookLimits, allow_uid_change: bool = False) -> bytes:
    """The script's output for `dicom` (the input itself when the script changed nothing).

    Raises HookRefused on a refusal, a limit, a crash or an output that fails validation."""
    try:
        original = dcmread(BytesIO(dicom))
    except Exception as error:
        raise HookRefused("invalid", f"the input is not a DICOM file: {error}") from None
    max_output = OUTPUT_FACTOR * len(dicom) + OUTPUT_SLACK
    config = {
        "script": str(Path(script).resolve()),
        "memory_mb": limits.memory_mb,
        "cpu_seconds": math.ceil(limits.seconds) + 1,
        "network": limits.network,
        "namespaces": list(NAMESPACE_ATTEMPTS),
        "max_output_bytes": max_output,
        "max_file_bytes": max_output,
    }
    header, payload = _run_child(config, dicom, limits, max_output)
    status = header.get("status")
    if status == "unchanged":
        return dicom
    if status == "refused":
        raise HookRefused("refused", f"refused by the hook: {header.get('reason', '')}")
    if status == "memory":
        raise HookRefused("memory", f"memory limit of {limits.memory_mb} MB exceeded")
    if status == "crash":
        raise HookRefused("crash", f"the hook failed: {header.get('error', '')}")
    if status == "invalid":
        raise HookRefused("invalid", f"invalid output: {header.get('reason', '')}")
    if status != "ok":
        raise HookRefused("crash", f"the hook process answered {status!r}")
    validate_output(original, payload, allow_uid_change)
    return payload


def validate_output(original: Dataset, output: bytes, allow_uid_change: bool = False) -> None:
    """The checks an output passes before it replaces the input; HookRefused("invalid") if not."""
    def invalid(reason: str) -> HookRefused:
        return HookRefused("invalid", f"invalid output: {reason}")

    try:
        changed = dcmread(BytesIO(output), force=False)
        # dcmread parses nested sequences only on access: walk them all so that a broken
        # length or delimiter deep inside shows here and not at the receiver.
        _walk_sequences(changed)
    except Exception as error:
        raise invalid(f"not a parseable DICOM file ({error})") from None
    before_class, after_class = original.get("SOPClassUID"), changed.get("SOPClassUID")
    if before_class != after_class:
        raise invalid(f"SOP Class UID changed ({before_class} -> {after_class})")
    before, after = original.get("SOPInstanceUID"), changed.get("SOPInstanceUID")
    if before != after:
        if not allow_uid_change:
            raise invalid(f"SOP Instance UID changed ({before} -> {after}) and the rule does not "
                          "declare a UID change")
        if after is None or not UID(str(after)).is_valid:
            raise invalid(f"SOP Instance UID {after!r} is not a valid UID")
    meta_uid = changed.file_meta.get("MediaStorageSOPInstanceUID")
    if meta_uid != after:
        raise invalid(f"file meta names SOP Instance UID {meta_uid}, the dataset {after}")
    lost = referenced_uids(original) - referenced_uids(changed)
    if lost:
        shown = ", ".join(sorted(lost)[:3]) + (" ..." if len(lost) > 3 else "")
        raise invalid(f"references lost: {len(lost)} referenced UID(s) missing ({shown})")
    for keyword in RT_REFERENCE_SEQUENCES:
        if original.get(keyword) and not changed.get(keyword):
            raise invalid(f"references lost: {keyword} removed")


def referenced_uids(ds: Dataset) -> set[str]:
    """Every UID `ds` uses to point at another object or frame of reference, at any depth:
    ReferencedSOPInstanceUID (contour images, referenced plan, structure set, dose ...),
    FrameOfReferenceUID and Referenced/RelatedFrameOfReferenceUID, and the series and study
    UIDs inside sequence items (RTReferencedSeriesSequence, RTReferencedStudySequence)."""
    found: set[str] = set()
    _collect(ds, found, nested=False)
    return found


def _collect(ds: Dataset, found: set[str], nested: bool) -> None:
    wanted = (_REFERENCE_TAGS | _NESTED_REFERENCE_TAGS) if nested else _REFERENCE_TAGS
    for tag in list(ds.keys()):
        if tag in wanted:
            value = ds[tag].value
            # VM 1 by the standard, but a malformed object may carry several values.
            values = [value] if isinstance(value, str) else list(value or ())
            found.update(text for text in (str(v).strip() for v in values) if text)
        elif _is_sequence(ds, tag):
            for item in ds[tag].value or ():
                _collect(item, found, nested=True)


def _is_sequence(ds: Dataset, tag: BaseTag) -> bool:
    # Decided from the VR without converting the element: a ContourData of 100k numbers would
    # otherwise be parsed into floats just to be skipped.
    element = ds.get_item(tag)
    if element is None:
        return False
    vr = element.VR
    if vr is None:  # implicit VR little endian: the dictionary knows public tags only
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            return False
    return bool(vr == "SQ")


def _walk_sequences(ds: Dataset) -> None:
    for tag in list(ds.keys()):
        if _is_sequence(ds, tag):
            for item in ds[tag].value or ():
                _walk_sequences(item)


@functools.cache
def network_isolation() -> str:
    """Which isolation a hook with network disallowed gets on this machine (one probe run)."""
    config = {"probe": True, "memory_mb": 1024, "cpu_seconds": 10, "network": False,
              "namespaces": list(NAMESPACE_ATTEMPTS), "max_output_bytes": 0,
              "max_file_bytes": 0}
    header, _ = _run_child(config, b"", HookLimits(seconds=10.0), 0)
    return str(header.get("isolation", "unknown"))


def _interpreter() -> str:
    # Inside the Orthanc plugin sys.executable is Orthanc itself: starting it with our arguments
    # would start another Orthanc. That is a wiring error, not something to quarantine for.
    name = Path(sys.executable or "").name.lower()
    if "python" not in name and "pypy" not in name:
        raise RuntimeError(f"run_hook needs a Python interpreter, sys.executable is "
                           f"{sys.executable!r} (call it from a worker, not inside Orthanc)")
    return sys.executable


def _run_child(config: dict[str, Any], dicom: bytes, limits: HookLimits,
               max_output: int) -> tuple[dict[str, Any], bytes]:
    process = subprocess.Popen(
        [_interpreter(), "-I", str(CHILD), json.dumps(config)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=dict(CHILD_ENV), cwd="/", close_fds=True,
        # Its own process group, so that on expiry everything the script started dies with it.
        start_new_session=True,
    )
    try:
        stdout, stderr, timed_out, flooded = _exchange(process, dicom, limits.seconds,
                                                       max_output + HEADER_LIMIT)
    finally:
        _kill_group(process)
        process.wait()
    tail = _last_line_of(stderr)
    if timed_out:
        raise HookRefused("time", f"time limit of {limits.seconds:g} s exceeded")
    if flooded:
        raise HookRefused("output", f"output size limit of {max_output} bytes exceeded")
    code = process.returncode
    header_end = stdout.find(b"\n")
    if header_end < 0:
        raise _died(code, tail, limits)
    try:
        header = json.loads(stdout[:header_end])
    except ValueError:
        raise HookRefused("crash", f"unreadable answer from the hook process; {tail}") from None
    if not isinstance(header, dict):
        raise HookRefused("crash", "unreadable answer from the hook process")
    return header, stdout[header_end + 1:]


def _died(code: int, tail: str, limits: HookLimits) -> HookRefused:
    """The reason for a child that ended without answering."""
    if code == -signal.SIGXCPU:
        return HookRefused("time", f"CPU time limit of {math.ceil(limits.seconds) + 1} s exceeded")
    if "MemoryError" in tail or "Cannot allocate memory" in tail or "out of memory" in tail:
        return HookRefused("memory", f"memory limit of {limits.memory_mb} MB exceeded ({tail})")
    # SIGKILL here is not ours (we kill only on expiry): the hard CPU limit or the OOM killer.
    how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
    return HookRefused("crash", f"the hook process died ({how}): {tail or 'no message'}")


def _exchange(process: subprocess.Popen[bytes], data: bytes, seconds: float,
              max_stdout: int) -> tuple[bytes, bytes, bool, bool]:
    """Feeds stdin and drains stdout/stderr until the child has answered and exited, the
    deadline passes or stdout grows beyond max_stdout.

    Returns (stdout, stderr tail, timed out, flooded). The child is not reaped here, so that
    the caller can still kill its process group safely."""
    assert process.stdin is not None and process.stdout is not None and process.stderr is not None
    deadline = time.monotonic() + seconds
    stdout = bytearray()
    stderr = bytearray()
    pending = memoryview(data)

    def read_stderr() -> bytes | None:
        """A chunk of stderr (b"" at EOF), None when nothing is there right now."""
        assert process.stderr is not None
        try:
            chunk = os.read(process.stderr.fileno(), 65536)
        except BlockingIOError:
            return None
        stderr.extend(chunk)
        del stderr[:-STDERR_TAIL]
        return chunk

    with selectors.DefaultSelector() as selector:
        for stream in (process.stdin, process.stdout, process.stderr):
            os.set_blocking(stream.fileno(), False)
        if pending:
            selector.register(process.stdin, selectors.EVENT_WRITE)
        else:
            process.stdin.close()
        selector.register(process.stdout, selectors.EVENT_READ)
        selector.register(process.stderr, selectors.EVENT_READ)
        # Until EOF on stdout: only the child holds that pipe (its private answer fd is not
        # inherited), whereas stderr may be held open by programs the script left running.
        while process.stdout in (key.fileobj for key in selector.get_map().values()):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return bytes(stdout), bytes(stderr), True, False
            for key, _ in selector.select(remaining):
                ready = key.fileobj
                if ready is process.stdin:
                    try:
                        written = os.write(process.stdin.fileno(), pending[:65536])
                    except BrokenPipeError:
                        written = len(pending)  # the child stopped reading; its answer says why
                    except BlockingIOError:
                        continue
                    pending = pending[written:]
                    if not pending:
                        selector.unregister(process.stdin)
                        process.stdin.close()
                elif ready is process.stderr:
                    if read_stderr() == b"":
                        selector.unregister(process.stderr)
                else:
                    try:
                        chunk = os.read(process.stdout.fileno(), 65536)
                    except BlockingIOError:
                        continue
                    if not chunk:
                        selector.unregister(process.stdout)
                    stdout += chunk
                    if len(stdout) > max_stdout:
                        return bytes(stdout), bytes(stderr), False, True
    # The answer is complete; wait for the exit without reaping (WNOWAIT).
    while os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
        if time.monotonic() >= deadline:
            return bytes(stdout), bytes(stderr), True, False
        time.sleep(0.005)
    # What the child wrote last (a traceback) before exiting; bounded, as a program the script
    # left running may still hold stderr and write to it.
    for _ in range(16):
        if not read_stderr():
            break
    return bytes(stdout), bytes(stderr), False, False


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    # Also after a normal exit: whatever the script left running in its group goes too.
    # Before wait(): the child is at worst a zombie then, so its group id cannot be reused.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    for stream in (process.stdin, process.stdout, process.stderr):
        if stream is not None and not stream.closed:
            stream.close()


def _last_line_of(stderr: bytes) -> str:
    lines: Iterator[str] = (line.strip() for line in
                            reversed(stderr.decode("utf-8", "replace").splitlines()))
    return next((line for line in lines if line), "")[:500]
