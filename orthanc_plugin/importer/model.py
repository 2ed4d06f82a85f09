"""The import folder, pure: settings, which files to take, when a file is complete, what it holds."""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from functools import lru_cache
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
from pydicom.errors import InvalidDicomError

from orthanc_plugin.config import SECTION, ConfigError, resolve_path
from orthanc_plugin.jobs.own_output import orthanc_instance_id

SOURCE = "IMPORT_FOLDER"
ZIP_MAGIC = b"PK\x03\x04"
DEFAULT_INCLUDE = ("**",)
DEFAULT_EXCLUDE = (".*", "*.part", "*.tmp", "*.reason")
# Why a file was left in the folder. "outside": a symbolic link leading out of the folder.
EXCLUDED, NOT_INCLUDED, TOO_YOUNG, OUTSIDE = "excluded", "not_included", "too_young", "outside"
SKIP_REASONS = (EXCLUDED, NOT_INCLUDED, TOO_YOUNG, OUTSIDE)


@dataclass(frozen=True)
class ImportSettings:
    folder: Path | None               # None: no import folder, the importer stays idle
    quarantine: Path
    recursive: bool = True
    include: tuple[str, ...] = DEFAULT_INCLUDE
    exclude: tuple[str, ...] = DEFAULT_EXCLUDE
    clear_after_import: bool = False
    poll_seconds: float = 2.0
    stable_seconds: float = 2.0
    # On top of stable_seconds: files whose mtime is more recent are left for a later poll.
    minimum_age_seconds: float = 0.0
    # A file (or ZIP member) is read whole to be stored: above this it is quarantined instead.
    max_member_bytes: int = 1024 * 1024 * 1024


def read_settings(raw: Any, config_dir: Path, default_quarantine: Path) -> ImportSettings:
    where = f"{SECTION}.Import"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected an object")
    folder = raw.get("Folder")
    if folder is not None and (not isinstance(folder, str) or not folder.strip()):
        raise ConfigError(f"{where}.Folder: expected a folder path")
    quarantine = raw.get("QuarantineFolder")
    patterns: dict[str, tuple[str, ...]] = {}
    for key, default in (("Include", DEFAULT_INCLUDE), ("Exclude", DEFAULT_EXCLUDE)):
        value = raw.get(key, list(default))
        if not isinstance(value, list):
            raise ConfigError(f"{where}.{key}: expected a list of glob patterns such as "
                              f'["**/*.dcm"], got {value!r}')
        for index, pattern in enumerate(value):
            problem = glob_problem(pattern)
            if problem:
                raise ConfigError(f"{where}.{key}[{index}]: {problem}")
        patterns[key] = tuple(value)
    flags: dict[str, bool] = {}
    for key, flag_default in (("Recursive", True), ("ClearAfterImport", False)):
        value = raw.get(key, flag_default)
        if not isinstance(value, bool):
            raise ConfigError(f"{where}.{key}: expected true or false")
        flags[key] = value
    numbers: dict[str, float] = {}
    for key, number_default in (("PollSeconds", 2.0), ("StableSeconds", 2.0),
                                ("MaxFileMB", 1024.0), ("MinimumAgeSeconds", 0.0)):
        value = raw.get(key, number_default)
        if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
            raise ConfigError(f"{where}.{key}: expected a number >= 0, got {value!r}")
        numbers[key] = float(value)
    return ImportSettings(
        folder=resolve_path(config_dir, folder) if folder else None,
        quarantine=resolve_path(config_dir, quarantine) if quarantine else default_quarantine,
        recursive=flags["Recursive"],
        include=patterns["Include"],
        exclude=tuple(dict.fromkeys(patterns["Exclude"] + DEFAULT_EXCLUDE)),
        clear_after_import=flags["ClearAfterImport"],
        poll_seconds=max(numbers["PollSeconds"], 0.05),
        stable_seconds=numbers["StableSeconds"],
        max_member_bytes=max(int(numbers["MaxFileMB"] * 1024 * 1024), 1),
        minimum_age_seconds=numbers["MinimumAgeSeconds"],
    )


# -- which files: globs on the path relative to the folder ---------------------------------------
# A pattern without "/" matches any one name (the file's or a folder's, at any depth); one with
# "/" matches from the folder down. Either way a pattern that matches a folder covers all inside
# it. `**` as a whole segment spans any number of folders, none included; `*`, `?`, `[...]` stay
# within one name. Case-sensitive on every platform: fnmatch.fnmatch would fold case on Windows.

def glob_problem(pattern: Any) -> str:
    """Why a pattern is refused at load, or "" when it is fine."""
    if not isinstance(pattern, str):
        return f"expected a glob pattern (a string), got {pattern!r}"
    if not pattern.strip():
        return "empty pattern (it would match nothing; remove it)"
    if pattern.startswith("/") or pattern.startswith("\\") or re.match(r"[A-Za-z]:/", pattern):
        return (f"{pattern!r} is absolute: patterns are relative to the import folder "
                f"(\"**/name\" matches at any depth)")
    if "\\" in pattern:
        return f"{pattern!r}: separate folders with \"/\" (paths are matched in POSIX form)"
    if "//" in pattern.rstrip("/"):
        return f"{pattern!r} has an empty folder name (\"//\")"
    try:
        _compile(pattern)
    except re.error as error:  # a reversed range such as [z-a]
        return f"{pattern!r} is not a valid glob: {error}"
    return ""


@dataclass(frozen=True)
class _Glob:
    regex: re.Pattern[str]
    any_name: bool  # no "/": matched against each name on the path


@lru_cache(maxsize=64)
def _compiled(patterns: tuple[str, ...]) -> tuple[_Glob, ...]:
    return tuple(_compile(p) for p in patterns)


def _compile(pattern: str) -> _Glob:
    pattern = pattern.rstrip("/")  # "tmp/" names a folder: a folder is covered anyway
    segments = pattern.split("/")
    out: list[str] = []
    for index, segment in enumerate(segments):
        last = index == len(segments) - 1
        if segment == "**":
            out.append(".*" if last else "(?:[^/]*/)*")
        else:
            out.append(_segment_regex(segment) + ("" if last else "/"))
    return _Glob(re.compile("".join(out)), any_name=len(segments) == 1 and pattern != "**")


def _segment_regex(segment: str) -> str:
    """One name's glob as a regex, classes read as fnmatch reads them."""
    out: list[str] = []
    i, n = 0, len(segment)
    while i < n:
        char = segment[i]
        i += 1
        if char == "*":
            while i < n and segment[i] == "*":
                i += 1
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "[":
            j = i + 1 if i < n and segment[i] == "!" else i
            j = j + 1 if j < n and segment[j] == "]" else j  # a leading "]" is a member
            j = segment.find("]", j)
            if j < 0:
                out.append(re.escape(char))  # never closed: a literal "[", as fnmatch reads it
                continue
            body, i = segment[i:j], j + 1
            negate = body.startswith("!")
            body = re.sub(r"([\\\[\]&~|^])", r"\\\1", body[1:] if negate else body)
            out.append(f"[^/{body}]" if negate else f"[{body}]")
        else:
            out.append(re.escape(char))
    return "".join(out)


def _hits(globs: tuple[_Glob, ...], relative: str, parts: list[str]) -> bool:
    for glob in globs:
        if glob.any_name:
            if any(glob.regex.fullmatch(part) for part in parts):
                return True
        elif glob.regex.fullmatch(relative) or any(
                glob.regex.fullmatch("/".join(parts[:depth])) for depth in range(1, len(parts))):
            return True
    return False


def skip_reason(relative: str, include: tuple[str, ...], exclude: tuple[str, ...]) -> str | None:
    """EXCLUDED or NOT_INCLUDED for a path relative to the folder ("a/b/ct1.dcm"), None when
    the file is wanted. Excluded wins: a file is counted under one reason only."""
    parts = relative.split("/")
    if _hits(_compiled(exclude), relative, parts):
        return EXCLUDED
    if not _hits(_compiled(include), relative, parts):
        return NOT_INCLUDED
    return None


def wanted(relative: str, include: tuple[str, ...], exclude: tuple[str, ...]) -> bool:
    """Any name starting with a dot (a half-copied `.name.tmp`, a hidden folder) is left alone by
    the default excludes."""
    return skip_reason(relative, include, exclude) is None


def too_young(mtime_ns: int, now: float, minimum_age_seconds: float) -> bool:
    return minimum_age_seconds > 0 and now - mtime_ns / 1e9 < minimum_age_seconds


class SkipCounts:
    """Files left in the folder, by reason: in the last complete walk, and in total.

    A file counts in the total once per reason, at the first walk that skips it for that reason,
    and again only after a walk no longer skipped it so (it left, was taken, or had another
    reason). Keyed by path, not size and mtime: a file still being copied changes both at every
    poll and would count each time. Totals are added when a walk completes, so a walk cut short
    (Orthanc unreachable) counts nothing twice. Memory: the paths skipped by one walk.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()  # the route reads while the watcher thread writes
        self._previous: dict[str, set[str]] = {reason: set() for reason in SKIP_REASONS}
        self._current: dict[str, set[str]] = {reason: set() for reason in SKIP_REASONS}
        self.total = dict.fromkeys(SKIP_REASONS, 0)
        self.last_walk = dict.fromkeys(SKIP_REASONS, 0)
        self.walks = 0
        self.last_walk_at: float | None = None

    def begin(self) -> None:
        self._current = {reason: set() for reason in SKIP_REASONS}

    def skip(self, reason: str, relative: str) -> None:
        self._current[reason].add(relative)

    def end(self, now: float) -> None:
        with self._lock:
            for reason, paths in self._current.items():
                self.total[reason] += len(paths - self._previous[reason])
                self.last_walk[reason] = len(paths)
            self._previous = self._current
            self.walks += 1
            self.last_walk_at = now

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {"last_walk": dict(self.last_walk), "total": dict(self.total),
                    "walks": self.walks, "last_walk_at": self.last_walk_at}


class Stability:
    """A file is complete once its size and mtime did not change between two looks, the last one
    at least stable_seconds after its last write. Only files not yet taken are remembered."""

    def __init__(self, stable_seconds: float) -> None:
        self.stable_seconds = stable_seconds
        self._last: dict[str, tuple[int, int]] = {}

    def ready(self, key: str, size: int, mtime_ns: int, now: float) -> bool:
        previous = self._last.get(key)
        self._last[key] = (size, mtime_ns)
        return previous == (size, mtime_ns) and now - mtime_ns / 1e9 >= self.stable_seconds

    def forget(self, key: str) -> None:
        self._last.pop(key, None)

    def keep_only(self, keys: set[str]) -> None:
        for key in list(self._last):
            if key not in keys:
                del self._last[key]


# How long a node's claim on a file holds without a renewal (the watcher renews it before each
# store, so per ZIP member). Generous: a file (or member) up to MaxFileMB must be read and
# stored within it, and a dead node's file waits at most this long for another node.
CLAIM_SECONDS = 300.0


class ClaimLost(Exception):
    """This node's claim on a file ran out and another node took the file over (this node was
    paused longer than CLAIM_SECONDS): the file is the other node's, this one leaves it."""


class NotImportable(ValueError):
    """The bytes are not a complete DICOM instance; the message is the quarantine reason."""


def inspect_dicom(data: bytes) -> str:
    """The Orthanc ID the instance will get; raises NotImportable with the reason."""
    try:
        return _inspect(data)
    except NotImportable:
        raise
    except MemoryError:
        raise
    except Exception as error:  # a value that does not parse (IS "1.5x") is this file's problem
        raise NotImportable(f"unreadable DICOM value: {type(error).__name__}: {error}") from None


def _inspect(data: bytes) -> str:
    try:
        ds = pydicom.dcmread(BytesIO(data))
    except (InvalidDicomError, EOFError, ValueError, OSError) as error:
        raise NotImportable(f"not a DICOM file: {error}") from None
    keys = []
    for keyword in ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        value = str(ds.get(keyword, "") or "").strip()
        if not value and keyword != "PatientID":
            raise NotImportable(f"no {keyword}")
        keys.append(value)
    if "PixelData" in ds and not ds.file_meta.TransferSyntaxUID.is_compressed:
        expected = (int(ds.get("Rows", 0)) * int(ds.get("Columns", 0))
                    * int(ds.get("SamplesPerPixel", 1)) * int(ds.get("BitsAllocated", 8)) // 8
                    * int(ds.get("NumberOfFrames", 1) or 1))
        if len(ds.PixelData) < expected:
            raise NotImportable(
                f"truncated: pixel data has {len(ds.PixelData)} of {expected} bytes")
    return orthanc_instance_id(*keys)
