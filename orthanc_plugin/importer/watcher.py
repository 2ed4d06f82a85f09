"""The import folder poller: complete files -> Orthanc (source IMPORT_FOLDER) or quarantine.

One file (or one ZIP member) in memory at a time, so a folder of any size imports in bounded
memory. A file is removed only when clear_after_import is on and everything in it is stored in
Orthanc, already was (duplicate), or sits in the quarantine folder with its reason.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shutil
import socket
import stat
import threading
import time
import traceback
import zipfile
import zlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

from orthanc_plugin.audit.recorder import AuditRecorder
from orthanc_plugin.importer.model import (
    CLAIM_SECONDS,
    OUTSIDE,
    TOO_YOUNG,
    ZIP_MAGIC,
    ClaimLost,
    ImportSettings,
    NotImportable,
    SkipCounts,
    Stability,
    inspect_dicom,
    skip_reason,
    too_young,
)
from orthanc_plugin.importer.tables import ImportTables
from orthanc_plugin.ports import Host, HostError


class ImportWatcher:
    def __init__(
        self,
        host: Host,
        tables: ImportTables,
        recorder: AuditRecorder,
        settings: ImportSettings,
        log_error: Callable[[str], None],
    ) -> None:
        self.host = host
        self.tables = tables
        self.recorder = recorder
        self.settings = settings
        self.log_error = log_error
        self.stability = Stability(settings.stable_seconds)
        self.skips = SkipCounts()
        self.wakeup = threading.Event()
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None
        # This watcher's name on its claims: unique even for two watchers in one process.
        self.node = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.claim_seconds = CLAIM_SECONDS

    # -- life cycle ----------------------------------------------------------------------------
    def start(self) -> None:
        if self.settings.folder is None or self.thread is not None:
            return
        self.stopping.clear()
        self.thread = threading.Thread(target=self._loop, name="rtgw-import", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.wakeup.set()
        if self.thread is not None:
            self.thread.join(10)
            self.thread = None

    def _loop(self) -> None:
        while not self.stopping.is_set():
            try:
                self.scan()
            except Exception:  # a bad file or a vanished folder must not end the importer
                self.log_error("import folder: " + traceback.format_exc())
            self.wakeup.wait(self.settings.poll_seconds)
            self.wakeup.clear()

    # -- one pass ------------------------------------------------------------------------------
    def scan(self) -> int:
        """Take every complete file; returns how many were taken. Skipped files stay where they
        are (never moved, never deleted) and are counted by reason."""
        folder = self.settings.folder
        if folder is None or not folder.is_dir():
            return 0
        taken = 0
        present: set[str] = set()
        now = time.time()
        settings = self.settings
        self.skips.begin()
        for path, relative in self._files(folder):
            if self.stopping.is_set():
                return taken  # an unfinished walk leaves the counts as they were
            reason = skip_reason(relative, settings.include, settings.exclude)
            if reason:
                self.skips.skip(reason, relative)
                continue
            try:
                info = self._file_stat(path, folder)
            except FileNotFoundError:
                continue
            if info is None:
                self.skips.skip(OUTSIDE, relative)
                continue
            present.add(relative)
            if self.tables.already_taken(relative, info.st_size, info.st_mtime_ns):
                continue
            # Looked at even while too young, so it is taken at the first poll once old enough.
            ready = self.stability.ready(relative, info.st_size, info.st_mtime_ns, now)
            if too_young(info.st_mtime_ns, now, settings.minimum_age_seconds):
                self.skips.skip(TOO_YOUNG, relative)
                continue
            if not ready:
                continue
            self.stability.forget(relative)
            if self._take_claimed(path, relative, info.st_size, info.st_mtime_ns):
                taken += 1
        self.stability.keep_only(present)
        self.skips.end(now)
        return taken

    def _files(self, folder: Path) -> Iterator[tuple[Path, str]]:
        """Every file under the folder with its POSIX path relative to it. Linked folders are
        not entered (os.walk's default): what they hold is either walked where it is or outside."""
        quarantine = self.settings.quarantine.resolve()
        for root, dirs, names in os.walk(folder):
            here = Path(root)
            if here.resolve() == quarantine or quarantine in here.resolve().parents:
                dirs[:] = []
                continue
            dirs.sort()
            base = here.relative_to(folder).as_posix()
            prefix = "" if base == "." else base + "/"
            for name in sorted(names):
                yield here / name, prefix + name
            if not self.settings.recursive:
                dirs[:] = []

    def _file_stat(self, path: Path, folder: Path) -> os.stat_result | None:
        """The file's stat; None for a link leading out of the folder (or into the quarantine),
        which is never read; FileNotFoundError for what is gone, dangling, or not a file."""
        info = os.lstat(path)
        if stat.S_ISLNK(info.st_mode):
            try:
                target = path.resolve(strict=True)
            except (OSError, RuntimeError):  # dangling, or a loop
                raise FileNotFoundError(path) from None
            quarantine = self.settings.quarantine.resolve()
            if (not target.is_relative_to(folder.resolve()) or target == quarantine
                    or target.is_relative_to(quarantine)):
                return None
            info = target.stat()
        if not stat.S_ISREG(info.st_mode):  # a FIFO or a socket would block or fail the read
            raise FileNotFoundError(path)
        return info

    def _take_claimed(self, path: Path, relative: str, size: int, mtime_ns: int) -> bool:
        """Takes the file if this node wins its claim (several nodes may poll one shared
        folder); False when another node holds it or it vanished before it was read."""
        now = time.time()
        if not self.tables.claim(relative, size, mtime_ns, self.node,
                                 now + self.claim_seconds, now):
            return False
        try:
            # A holder whose claim ran out after it recorded the file (it died before done_at).
            if not self.tables.already_taken(relative, size, mtime_ns):
                self._take(path, relative, size, mtime_ns)
        except ClaimLost:
            return False  # the node that took it over finishes it
        except FileNotFoundError:
            # Cleared by the node that imported it (its claim ran out before it said done),
            # or removed by hand: nothing to quarantine, no error.
            self.tables.release(relative, size, mtime_ns, self.node)
            return False
        except BaseException:
            self.tables.release(relative, size, mtime_ns, self.node)  # tried again next poll
            raise
        self.tables.finish(relative, size, mtime_ns, self.node)
        return True

    def _keep_claim(self, relative: str, size: int, mtime_ns: int) -> None:
        """Renews this node's claim before more of the file is stored; ClaimLost if another
        node took it over meanwhile."""
        if not self.tables.renew(relative, size, mtime_ns, self.node,
                                 time.time() + self.claim_seconds):
            raise ClaimLost(relative)

    def _take(self, path: Path, relative: str, size: int, mtime_ns: int) -> None:
        digest, head = _sha256_and_head(path)
        self._keep_claim(relative, size, mtime_ns)  # hashing a big file can outlast a lease
        if self.tables.stored_before(digest):
            self.tables.record(relative, size, mtime_ns, digest, "duplicate",
                               detail="same content already imported")
            self.recorder.event("import-duplicate", status="skipped", resource_id=relative,
                                detail="same content already imported")
            self._clear(path)
            return
        if head == ZIP_MAGIC:  # members are read one at a time, never the whole archive
            try:
                self._take_zip(path, relative, size, mtime_ns, digest)
            except (HostError, MemoryError, ClaimLost, FileNotFoundError):
                raise  # not the archive's fault: it stays where it is
            except Exception as error:  # whatever the archive does, it leaves the folder once
                reason = f"could not be processed: {type(error).__name__}: {error}"
                self._quarantine_file(path, relative, reason)
                self.tables.record(relative, size, mtime_ns, digest, "quarantined", detail=reason)
            return
        try:
            if size > self.settings.max_member_bytes:
                raise NotImportable(f"{size} bytes, more than Import.MaxFileMB")
            data = path.read_bytes()
            self._keep_claim(relative, size, mtime_ns)
            instance_id = self._store(data)
        except NotImportable as problem:
            self._quarantine_file(path, relative, str(problem))
            self.tables.record(relative, size, mtime_ns, digest, "quarantined", detail=str(problem))
            return
        self._keep_claim(relative, size, mtime_ns)  # recorded and cleared by its holder only
        self.tables.record(relative, size, mtime_ns, digest, "stored", instance_id)
        self.recorder.event("imported", status="ok", resource_id=instance_id, detail=relative)
        self._clear(path)

    def _take_zip(self, path: Path, relative: str, size: int, mtime_ns: int, digest: str) -> None:
        stored = failed = duplicates = 0
        try:
            archive = zipfile.ZipFile(path)
        except zipfile.BadZipFile as problem:
            reason = f"not a readable ZIP file: {problem}"
            self._quarantine_file(path, relative, reason)
            self.tables.record(relative, size, mtime_ns, digest, "quarantined", detail=reason)
            return
        unreadable: list[str] = []
        with archive:
            for member in archive.infolist():
                if member.is_dir():
                    continue
                label = f"{relative}!{member.filename}"
                try:
                    data = _read_member(archive, member, self.settings.max_member_bytes)
                except NotImportable as problem:
                    unreadable.append(f"{member.filename}: {problem}")
                    continue
                member_digest = hashlib.sha256(data).hexdigest()
                self._keep_claim(relative, size, mtime_ns)  # a big archive outlasts one lease
                if self.tables.stored_before(member_digest):
                    self.tables.record(label, member.file_size, None, member_digest, "duplicate")
                    duplicates += 1
                    continue
                try:
                    instance_id = self._store(data)
                except NotImportable as problem:
                    self._quarantine_bytes(data, label, str(problem))
                    self.tables.record(label, member.file_size, None, member_digest, "quarantined",
                                       detail=str(problem))
                    failed += 1
                    continue
                self.tables.record(label, member.file_size, None, member_digest, "stored",
                                   instance_id)
                stored += 1
        summary = f"{stored} stored, {duplicates} duplicate(s), {failed} quarantined"
        self._keep_claim(relative, size, mtime_ns)
        if unreadable:
            # Members that cannot be read cannot be quarantined alone: the archive goes, whole.
            reason = (f"{len(unreadable)} member(s) unreadable ({summary}): "
                      + "; ".join(unreadable[:20]))
            self._quarantine_file(path, relative, reason)
            self.tables.record(relative, size, mtime_ns, digest, "quarantined", detail=reason)
            return
        self.tables.record(relative, size, mtime_ns, digest, "taken", detail=summary)
        self.recorder.event("imported-zip", status="ok" if not failed else "partial",
                            resource_id=relative, detail=summary)
        self._clear(path)  # every member is in Orthanc or in the quarantine folder

    def _store(self, data: bytes) -> str:
        """The Orthanc ID of the stored instance; NotImportable when it is not (reason given)."""
        expected = inspect_dicom(data)
        self.tables.expect_instance(expected)
        try:
            answer = self.host.post_bytes("/instances", data)
        except HostError as error:
            if error.unreachable:
                raise  # the file stays where it is and is tried at the next poll
            raise NotImportable(f"refused by Orthanc: {error}") from None
        if not isinstance(answer, dict) or "ID" not in answer:
            raise NotImportable(f"refused by Orthanc: {answer!r}")
        instance_id = str(answer["ID"])
        if instance_id != expected:
            self.tables.expect_instance(instance_id)
        return instance_id

    # -- files out of the folder ---------------------------------------------------------------
    def _clear(self, path: Path) -> None:
        if self.settings.clear_after_import:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def _quarantine_target(self, label: str) -> Path:
        self.settings.quarantine.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
        flat = label.replace("/", "__").replace("!", "__").replace("\\", "__").lstrip(".")
        return self.settings.quarantine / f"{stamp}_{flat}"

    def _quarantine_file(self, path: Path, relative: str, reason: str) -> None:
        target = self._quarantine_target(relative)
        shutil.move(str(path), target)  # moved, never deleted: a person decides what it was
        self._write_reason(target, relative, reason)

    def _quarantine_bytes(self, data: bytes, label: str, reason: str) -> None:
        target = self._quarantine_target(label)
        target.write_bytes(data)
        self._write_reason(target, label, reason)

    def _write_reason(self, target: Path, label: str, reason: str) -> None:
        target.with_name(target.name + ".reason").write_text(f"{label}\n{reason}\n")
        with self.recorder.db.transaction() as connection:
            self.recorder.quarantine(connection, f"import:{label}", f"import: {reason}",
                                     detail=str(target))


def _read_member(archive: zipfile.ZipFile, member: zipfile.ZipInfo, limit: int) -> bytes:
    """A member's bytes, or NotImportable: encrypted, an unknown method, corrupt, or larger
    unpacked than `limit` (a ZIP bomb announces a small size and inflates without end)."""
    if member.flag_bits & 0x1:
        raise NotImportable("encrypted (a password is needed)")
    if member.file_size > limit:
        raise NotImportable(f"{member.file_size} bytes unpacked, more than {limit}")
    try:
        with archive.open(member) as handle:
            data = handle.read(limit + 1)
    except (RuntimeError, NotImplementedError, zipfile.BadZipFile, zlib.error, EOFError,
            OSError) as error:
        raise NotImportable(f"unreadable: {type(error).__name__}: {error}") from None
    if len(data) > limit:
        raise NotImportable(f"unpacks to more than {limit} bytes")
    return data


def _sha256_and_head(path: Path) -> tuple[str, bytes]:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        head = handle.read(4)
        digest.update(head)
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest(), head
