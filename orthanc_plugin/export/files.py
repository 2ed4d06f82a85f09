"""Atomic writes into the destination folder: temporary name, fsync, rename, fsync the folder.

A consumer watching the folder sees either no file or the whole file, never a half one; the
temporary name starts with a dot so such a consumer can ignore it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
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
    return put_in_place(write_temporary(folder, name, data), folder, name)


def write_temporary(folder: Path, name: str, data: bytes) -> Path:
    """The whole file under a temporary name of its own beside `name`, on disk (fsync). Random,
    not the pid: two nodes writing into one shared folder may have the same pid."""
    if not folder.is_dir():
        raise DestinationUnavailable(f"export folder {folder} does not exist (share not mounted?)")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise DestinationUnavailable(f"export folder {folder} is not writable")
    final = inside(folder, name)
    temporary = final.with_name(f".{final.name}.{secrets.token_hex(6)}.tmp")
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as error:
        discard(temporary)
        raise DestinationUnavailable(f"cannot write into {folder}: {error}") from error
    return temporary


def put_in_place(temporary: Path, folder: Path, name: str) -> Path:
    """The temporary file renamed to `name` (atomic: a reader sees no file or the whole one)."""
    final = inside(folder, name)
    try:
        os.replace(temporary, final)
    except OSError as error:
        discard(temporary)
        raise DestinationUnavailable(f"cannot write into {folder}: {error}") from error
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)  # the rename itself survives a power cut
    finally:
        os.close(descriptor)
    return final


def discard(temporary: Path | None) -> None:
    if temporary is not None:
        with contextlib.suppress(OSError):
            temporary.unlink()
