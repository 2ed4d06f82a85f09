"""The import folder, pure: settings, which files to take, when a file is complete, what it holds."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path, PurePosixPath
from typing import Any

import pydicom
from pydicom.errors import InvalidDicomError

from orthanc_plugin.config import SECTION, ConfigError, resolve_path
from orthanc_plugin.jobs.own_output import orthanc_instance_id

SOURCE = "IMPORT_FOLDER"
ZIP_MAGIC = b"PK\x03\x04"
DEFAULT_EXCLUDE = (".*", "*.part", "*.tmp", "*.reason")


@dataclass(frozen=True)
class ImportSettings:
    folder: Path | None               # None: no import folder, the importer stays idle
    quarantine: Path
    recursive: bool = True
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = DEFAULT_EXCLUDE
    clear_after_import: bool = False
    poll_seconds: float = 2.0
    stable_seconds: float = 2.0
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
    for key, default in (("Include", ("*",)), ("Exclude", DEFAULT_EXCLUDE)):
        value = raw.get(key, list(default))
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ConfigError(f"{where}.{key}: expected a list of glob patterns")
        patterns[key] = tuple(value)
    flags: dict[str, bool] = {}
    for key, flag_default in (("Recursive", True), ("ClearAfterImport", False)):
        value = raw.get(key, flag_default)
        if not isinstance(value, bool):
            raise ConfigError(f"{where}.{key}: expected true or false")
        flags[key] = value
    numbers: dict[str, float] = {}
    for key, number_default in (("PollSeconds", 2.0), ("StableSeconds", 2.0),
                                ("MaxFileMB", 1024.0)):
        value = raw.get(key, number_default)
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ConfigError(f"{where}.{key}: expected a number >= 0")
        numbers[key] = float(value)
    return ImportSettings(
        folder=resolve_path(config_dir, folder) if folder else None,
        quarantine=resolve_path(config_dir, quarantine) if quarantine else default_quarantine,
        recursive=flags["Recursive"],
        include=patterns["Include"],
        exclude=patterns["Exclude"] + DEFAULT_EXCLUDE,
        clear_after_import=flags["ClearAfterImport"],
        poll_seconds=max(numbers["PollSeconds"], 0.05),
        stable_seconds=numbers["StableSeconds"],
        max_member_bytes=max(int(numbers["MaxFileMB"] * 1024 * 1024), 1),
    )


def wanted(relative: str, include: tuple[str, ...], exclude: tuple[str, ...]) -> bool:
    """Globs match the path relative to the folder or the file's own name; any part starting with
    a dot (a half-copied `.name.tmp`, a hidden folder) is left alone by the default excludes."""
    path = PurePosixPath(relative)
    def hit(patterns: tuple[str, ...]) -> bool:
        return any(fnmatch.fnmatch(relative, p) or fnmatch.fnmatch(path.name, p) or
                   any(fnmatch.fnmatch(part, p) for part in path.parts[:-1]) for p in patterns)
    return hit(include) and not hit(exclude)


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
