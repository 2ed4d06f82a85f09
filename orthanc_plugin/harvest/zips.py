"""A patient's ZIP put together from the ZIPs of its series, without compressing anything again.

Each series' archive is asked of Orthanc (`/series/{id}/archive`) as soon as the series is stored
whole, while the harvest's other moves run; the patient's ZIP is then only a copy of the already
compressed entries (bench/harvest: Orthanc deflating a whole patient after the last move was a
fifth of the harvest). Entries keep the names Orthanc gave them (`Patient/Study/Series/CT000000.dcm`);
a series folder already used by an earlier series gets `-2`, `-3`, ... as Orthanc does within one
archive. Every entry is written in ZIP64 form, so a patient of more than 4 GB stays readable.
Pure file work: no `orthanc`, no SQL.
"""

from __future__ import annotations

import os
import struct
import threading
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

from orthanc_plugin.harvest.model import safe_file_stem

PARTS_FOLDER = ".series-zips"
_CHUNK = 1 << 20
_UTF8_FLAG = 0x800
_ZIP64_VERSION = 45
_MADE_BY = (3 << 8) | _ZIP64_VERSION   # Unix: the external attributes are a file mode
_MAX32 = 0xFFFFFFFF
_MAX16 = 0xFFFF


def part_path(harvest_folder: Path, series_uid: str, instances: int) -> Path:
    """Where the ZIP of one series is kept; the instance count in the name makes a series that
    grew (moved again) a new file rather than a stale one."""
    return harvest_folder / PARTS_FOLDER / f"{safe_file_stem(series_uid)}-{instances}.zip"


def write_part(path: Path, data: bytes) -> None:
    """A series' ZIP, whole or not at all. Not synced to disk: it can always be asked again."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.partial")
    temporary.write_bytes(data)
    try:
        with zipfile.ZipFile(temporary) as archive:   # a truncated answer is refused here, not later
            archive.infolist()
    except zipfile.BadZipFile:
        temporary.unlink(missing_ok=True)
        raise
    os.replace(temporary, path)


def valid_part(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            return bool(archive.infolist())
    except (OSError, zipfile.BadZipFile):
        return False


def _dos_time(date_time: tuple[int, int, int, int, int, int]) -> tuple[int, int]:
    year, month, day, hour, minute, second = date_time
    year = min(max(year, 1980), 2107)
    return (hour << 11) | (minute << 5) | (second // 2), ((year - 1980) << 9) | (month << 5) | day


class _Entry:
    __slots__ = ("compressed", "crc", "date", "flags", "method", "name", "offset", "size", "time")

    def __init__(self, name: bytes, info: zipfile.ZipInfo, offset: int, flags: int) -> None:
        self.name = name
        self.method = info.compress_type
        self.crc = info.CRC
        self.compressed = info.compress_size
        self.size = info.file_size
        self.offset = offset
        self.time, self.date = _dos_time(info.date_time)
        self.flags = flags


def _unique_folder(folder: str, used: set[str]) -> str:
    if folder not in used:
        return folder
    number = 2
    while f"{folder}-{number}" in used:
        number += 1
    return f"{folder}-{number}"


def _copy(source: BinaryIO, target: BinaryIO, length: int) -> None:
    while length > 0:
        chunk = source.read(min(length, _CHUNK))
        if not chunk:
            raise zipfile.BadZipFile("entry shorter than its header says")
        target.write(chunk)
        length -= len(chunk)


def merge(parts: Iterable[Path], target: BinaryIO) -> int:
    """Write one ZIP holding every entry of `parts` (in order) to `target`; returns the count."""
    entries: list[_Entry] = []
    used_folders: set[str] = set()
    names: set[bytes] = set()
    for part in parts:
        with zipfile.ZipFile(part) as archive, part.open("rb") as raw:
            renamed: dict[str, str] = {}
            infos = [info for info in archive.infolist() if not info.is_dir()]
            for info in infos:
                folder, _, _ = info.filename.rpartition("/")
                if folder not in renamed:
                    renamed[folder] = _unique_folder(folder, used_folders)
            used_folders.update(renamed.values())
            for info in infos:
                folder, slash, base = info.filename.rpartition("/")
                text = renamed[folder] + slash + base
                name = text.encode("utf-8")
                if name in names:
                    raise zipfile.BadZipFile(f"{part.name}: entry {text!r} twice")
                names.add(name)
                raw.seek(info.header_offset)
                header = raw.read(30)
                if len(header) != 30 or header[:4] != b"PK\x03\x04":
                    raise zipfile.BadZipFile(f"{part.name}: no local header for {info.filename!r}")
                name_length, extra_length = struct.unpack("<HH", header[26:30])
                raw.seek(info.header_offset + 30 + name_length + extra_length)
                flags = _UTF8_FLAG if not text.isascii() else 0
                entry = _Entry(name, info, target.tell(), flags)
                extra = struct.pack("<HHQQ", 1, 16, entry.size, entry.compressed)
                target.write(struct.pack(
                    "<4sHHHHHLLLHH", b"PK\x03\x04", _ZIP64_VERSION, flags, entry.method, entry.time,
                    entry.date, entry.crc, _MAX32, _MAX32, len(name), len(extra)))
                target.write(name)
                target.write(extra)
                _copy(raw, target, entry.compressed)
                entries.append(entry)
    directory_start = target.tell()
    for entry in entries:
        extra = struct.pack("<HHQQQ", 1, 24, entry.size, entry.compressed, entry.offset)
        target.write(struct.pack(
            "<4sHHHHHHLLLHHHHHLL", b"PK\x01\x02", _MADE_BY, _ZIP64_VERSION, entry.flags,
            entry.method, entry.time, entry.date, entry.crc, _MAX32, _MAX32, len(entry.name),
            len(extra), 0, 0, 0, 0o100644 << 16, _MAX32))
        target.write(entry.name)
        target.write(extra)
    directory_end = target.tell()
    count = len(entries)
    target.write(struct.pack(
        "<4sQHHLLQQQQ", b"PK\x06\x06", 44, _ZIP64_VERSION, _ZIP64_VERSION, 0, 0, count, count,
        directory_end - directory_start, directory_start))
    target.write(struct.pack("<4sLQL", b"PK\x06\x07", 0, directory_end, 1))
    target.write(struct.pack("<4sHHHHLLH", b"PK\x05\x06", 0, 0, _MAX16, _MAX16, _MAX32, _MAX32, 0))
    return count


def write_merged(path: Path, parts: list[Path]) -> int:
    """The patient's ZIP at `path`, atomically (a reader sees the old file or the whole new one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        with temporary.open("wb") as stream:
            count = merge(parts, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return count
