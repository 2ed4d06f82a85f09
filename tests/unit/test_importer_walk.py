"""The import folder's walk on a real folder, Orthanc faked: filters, minimum age, symbolic links
leading out, and skipped files left where they are and counted by reason."""

from __future__ import annotations

import os
import time
from io import BytesIO
from pathlib import Path
from typing import Any

from orthanc_plugin.importer.model import inspect_dicom, read_settings
from orthanc_plugin.importer.tables import SCHEMA, ImportTables
from orthanc_plugin.importer.watcher import ImportWatcher
from tests.conftest import MakeDatabase
from tests.support.rtset import make_rt_set


class FakeHost:
    def __init__(self) -> None:
        self.stored: list[bytes] = []

    def post_bytes(self, uri: str, data: bytes) -> Any:
        assert uri == "/instances"
        self.stored.append(data)
        return {"ID": inspect_dicom(data)}


class FakeRecorder:
    def event(self, *args: Any, **kwargs: Any) -> None:
        pass


def dicom_bytes(patient: str) -> bytes:
    buffer = BytesIO()
    make_rt_set(patient, n_slices=1).ct[0].save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def watcher_for(folder: Path, tmp_path: Path, make_database: MakeDatabase,
                **raw: Any) -> tuple[ImportWatcher, FakeHost]:
    host = FakeHost()
    settings = read_settings({"Folder": str(folder), "StableSeconds": 0, "ClearAfterImport": True,
                              **raw}, tmp_path, tmp_path / "quarantine")
    # Both engines: an SQLite file, then a real PostgreSQL (tests/conftest.py).
    tables = ImportTables(make_database([SCHEMA]))
    watcher = ImportWatcher(host, tables, FakeRecorder(), settings,  # type: ignore[arg-type]
                            lambda message: None)
    return watcher, host


def age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then), follow_symlinks=False)


def test_nested_tree_filters_and_minimum_age(tmp_path: Path, make_database: MakeDatabase) -> None:
    folder = tmp_path / "incoming"
    files = {"a/b/ct1.dcm": dicom_bytes("WALK-1"), "a/tmp/ct2.dcm": dicom_bytes("WALK-2"),
             "young.dcm": dicom_bytes("WALK-3"), "notes.txt": b"not wanted",
             "a/b/ct4.dcm.part": b"half copied"}
    for relative, data in files.items():
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_bytes(data)
        age(folder / relative, 3600)
    age(folder / "young.dcm", 0)
    watcher, host = watcher_for(folder, tmp_path, make_database, MinimumAgeSeconds=600,
                                Include=["**/*.dcm", "**/*.zip"], Exclude=["**/tmp/**", "*.part"])

    for _ in range(3):  # the first look only notes sizes; later polls must not count again
        watcher.scan()
    assert host.stored == [files["a/b/ct1.dcm"]]
    skipped = watcher.skips.snapshot()
    expected = {"excluded": 2, "not_included": 1, "too_young": 1, "outside": 0}
    assert skipped["last_walk"] == expected and skipped["total"] == expected
    # Skipped files stay, byte for byte; only the imported one was cleared.
    left = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert left == set(files) - {"a/b/ct1.dcm"}
    assert (folder / "a/tmp/ct2.dcm").read_bytes() == files["a/tmp/ct2.dcm"]

    age(folder / "young.dcm", 601)
    watcher.scan()  # mtime changed: stability looks once more
    watcher.scan()
    assert host.stored[-1] == files["young.dcm"] and len(host.stored) == 2
    skipped = watcher.skips.snapshot()
    assert skipped["last_walk"]["too_young"] == 0 and skipped["total"]["too_young"] == 1


def test_links_leading_out_of_the_folder_are_never_read(tmp_path: Path,
                                                         make_database: MakeDatabase) -> None:
    folder = tmp_path / "incoming"
    outside = tmp_path / "elsewhere"
    (folder / "inner").mkdir(parents=True)
    outside.mkdir()
    secret = outside / "other-patient.dcm"
    secret.write_bytes(dicom_bytes("WALK-OUT"))
    (outside / "deep.dcm").write_bytes(dicom_bytes("WALK-DEEP"))
    real = folder / "inner" / "real.dcm"
    real.write_bytes(dicom_bytes("WALK-IN"))
    (folder / "out.dcm").symlink_to(secret)
    (folder / "up.dcm").symlink_to(Path("..") / "elsewhere" / "other-patient.dcm")
    (folder / "linked-folder").symlink_to(outside, target_is_directory=True)
    (folder / "dangling.dcm").symlink_to(tmp_path / "missing.dcm")
    (folder / "inside-link.dcm").symlink_to(real)
    for path in (secret, real, *folder.iterdir()):
        age(path, 3600)
    watcher, host = watcher_for(folder, tmp_path, make_database)

    inner = real.read_bytes()
    watcher.scan()
    watcher.scan()
    # The link inside the folder is read (the file it names is then a duplicate); nothing else.
    assert host.stored == [inner]
    assert watcher.skips.snapshot()["last_walk"]["outside"] == 2
    assert secret.exists() and (outside / "deep.dcm").exists()
    assert (folder / "out.dcm").is_symlink() and (folder / "up.dcm").is_symlink()
