"""Atomic writes into the destination folder: temporary name, fsync, rename, fsync the folder.

A consumer watching the folder sees either no file or the whole file, never a half one; the
temporary name starts with a dot so such a consumer can ignore it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path


class DestinationUnavailable(OSError):
    """The folder is missing or not writable (an unmounted share): retry later, lose nothing."""


def inside(folder: Path, name: str) -> Path:
    """folder/name, refusing anything that would not be a direct child of folder."""
    resolved = folder.resolve()
    path = (resolved / name).resolve()
    if path.parent != resolved:
        raise ValueError(f"file name {name!r} would leave the export folder")
    return path


def sha256_of(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        return None


def write_atomically(folder: Path, name: str, data: bytes) -> Path:
    if not folder.is_dir():
        raise DestinationUnavailable(f"export folder {folder} does not exist (share not mounted?)")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise DestinationUnavailable(f"export folder {folder} is not writable")
    final = inside(folder, name)
    temporary = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, final)
    except OSError as error:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise DestinationUnavailable(f"cannot write into {folder}: {error}") from error
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)  # the rename itself survives a power cut
    finally:
        os.close(descriptor)
    return final
