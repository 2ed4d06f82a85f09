"""The import folder end to end: files and ZIPs dropped in a folder, stored into a real Orthanc,
run through the rules as IMPORT_FOLDER; broken files quarantined with a reason; duplicates not."""

from __future__ import annotations

import os
import shutil
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from tests.integration.conftest import keep_logs, require_orthanc
from tests.integration.helpers import gateway_rows
from tests.support.orthanc import OrthancProcess, wait_until
from tests.support.rtset import make_ct_series, make_rt_set, write_datasets, write_malformed

RULES = """
rules:
  - name: structures from the import folder
    on: instance
    match: {{source: IMPORT_FOLDER, modality: RTSTRUCT}}
    actions:
      - export: {export}
"""


@pytest.fixture(scope="module")
def folders(workdir: Path) -> dict[str, Path]:
    paths = {name: workdir / name for name in ("incoming", "quarantine", "export")}
    for path in paths.values():
        path.mkdir()
    return paths


@pytest.fixture(scope="module")
def gateway(workdir: Path, folders: dict[str, Path]) -> Iterator[OrthancProcess]:
    require_orthanc()
    process = OrthancProcess(
        workdir / "gateway", "RTGATEWAY", plugin=True, rules=RULES.format(export=folders["export"]),
        gateway_settings={"Import": {
            "Folder": str(folders["incoming"]), "QuarantineFolder": str(folders["quarantine"]),
            "ClearAfterImport": True, "PollSeconds": 0.3, "StableSeconds": 0.3,
        }},
    )
    process.start()
    yield process
    process.stop()
    keep_logs(process, "importer-gateway")


def progress(gateway: OrthancProcess) -> dict:
    return gateway.json("/rt-gateway/import/progress")


def files_left(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


def test_nested_folders_and_a_zip_are_imported_and_run_through_the_rules(
    gateway: OrthancProcess, folders: dict[str, Path], tmp_path: Path
) -> None:
    rtset = make_rt_set("IMPORT-1", n_slices=4)
    staging = tmp_path / "staging"
    paths = write_datasets(rtset.all(), staging)
    nested = folders["incoming"] / "site" / "2024" / "ct"
    nested.mkdir(parents=True)
    for path in paths[:3]:
        shutil.copy(path, nested / path.name)
    archive = staging / "rest.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for path in paths[3:]:
            zipped.write(path, f"inner/{path.name}")
    shutil.move(archive, folders["incoming"] / "rest.zip")

    wait_until(lambda: progress(gateway)["stored"] >= len(paths), 60, "all imported")
    study = gateway.post("/tools/lookup", rtset.study_uid).json()
    assert study and len(gateway.json(f"/studies/{study[0]['ID']}/instances")) == len(paths)
    # Stored is not yet described: the intake takes each instance in shortly after.
    received = wait_until(lambda: (lambda rows: rows if len(rows) == len(paths) else None)(
        gateway_rows(gateway, kind="received", study=rtset.study_uid)), 30, "all taken in")
    assert {row["source"] for row in received} == {"IMPORT_FOLDER"}
    sop = str(rtset.rtstruct.SOPInstanceUID)
    wait_until(lambda: list(folders["export"].glob(f"*{sop}*")), 60, "rule fired on the import")
    wait_until(lambda: files_left(folders["incoming"]) == [], 30, "imported files cleared")
    events = gateway_rows(gateway, kind="events")
    zipped_summary = f"{len(paths) - 3} stored, 0 duplicate(s), 0 quarantined"
    assert any(e["event"] == "imported-zip" and e["detail"] == zipped_summary for e in events)


def test_broken_files_go_to_quarantine_with_a_reason(
    gateway: OrthancProcess, folders: dict[str, Path], tmp_path: Path
) -> None:
    before = gateway.instance_count()
    bad = write_malformed(tmp_path / "bad")
    text = tmp_path / "notes.txt"
    text.write_text("not DICOM at all")
    for path in [*bad, text]:
        shutil.copy(path, folders["incoming"] / path.name)
    wait_until(lambda: progress(gateway)["quarantined"] >= 4, 60, "all quarantined")
    reasons = {p.read_text().splitlines()[0]: p.read_text() for p in
               folders["quarantine"].glob("*.reason")}
    assert "truncated" in reasons["truncated.dcm"]
    assert "not a DICOM file" in reasons["random-bytes.dcm"]
    assert "no SOPInstanceUID" in reasons["no-sop-instance-uid.dcm"]
    assert "not a DICOM file" in reasons["notes.txt"]
    # Moved, not lost: each bad file sits beside its reason, byte for byte.
    kept = {p.name.split("_", 1)[1]: p for p in folders["quarantine"].iterdir()
            if not p.name.endswith(".reason")}
    assert kept["notes.txt"].read_text() == "not DICOM at all"
    assert kept["truncated.dcm"].read_bytes() == bad[0].read_bytes()
    assert gateway.instance_count() == before
    assert files_left(folders["incoming"]) == []
    quarantine_rows = gateway_rows(gateway, kind="quarantine")
    assert any(r["instance_id"] == "import:notes.txt" for r in quarantine_rows)


def test_the_same_file_twice_is_stored_once(
    gateway: OrthancProcess, folders: dict[str, Path], tmp_path: Path
) -> None:
    (path,) = write_datasets(make_rt_set("IMPORT-DUP", n_slices=1).ct, tmp_path)
    before = progress(gateway)
    shutil.copy(path, folders["incoming"] / "first.dcm")
    wait_until(lambda: progress(gateway)["stored"] == before["stored"] + 1, 60, "stored")
    count = gateway.instance_count()
    shutil.copy(path, folders["incoming"] / "again.dcm")
    wait_until(lambda: progress(gateway)["duplicate"] == before["duplicate"] + 1, 60, "duplicate")
    assert gateway.instance_count() == count
    assert progress(gateway)["stored"] == before["stored"] + 1
    wait_until(lambda: files_left(folders["incoming"]) == [], 30, "cleared")


def test_a_folder_of_2000_files(gateway: OrthancProcess, folders: dict[str, Path],
                                tmp_path: Path) -> None:
    series = make_ct_series(patient_id="IMPORT-BULK", patient_name="Bulk^Import",
                            study_uid="1.2.826.0.1.3680043.8.498.77", n_slices=2000, rows=8,
                            columns=8, frame_of_reference_uid="1.2.826.0.1.3680043.8.498.78")
    staging = tmp_path / "bulk"
    write_datasets(series, staging)
    before = progress(gateway)["stored"]
    start = time.perf_counter()
    shutil.move(staging, folders["incoming"] / "bulk")
    wait_until(lambda: progress(gateway)["stored"] >= before + 2000, 150, "2000 imported",
               interval=1.0)
    seconds = time.perf_counter() - start
    print(f"2000 files imported in {seconds:.1f} s ({2000 / seconds:.0f} files/s)")
    study = gateway.post("/tools/lookup", "1.2.826.0.1.3680043.8.498.77").json()
    assert len(gateway.json(f"/studies/{study[0]['ID']}/instances")) == 2000
    wait_until(lambda: files_left(folders["incoming"]) == [], 60, "cleared")

def test_poison_files_are_quarantined_once_and_not_retried(
    gateway: OrthancProcess, folders: dict[str, Path], tmp_path: Path
) -> None:
    """An IS value that does not parse, an encrypted ZIP, a ZIP with a corrupt member: each leaves
    the folder once, with its reason, and no later poll touches it again."""
    import subprocess

    rtset = make_rt_set("IMPORT-POISON", n_slices=2)
    good, other = write_datasets(rtset.ct, tmp_path / "good")
    bad_value = tmp_path / "bad-is.dcm"
    ds = rtset.ct[0].copy()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.8.498.77"
    ds.NumberOfFrames = "987654"
    ds.save_as(bad_value, enforce_file_format=True)
    raw = bad_value.read_bytes()
    assert raw.count(b"987654") == 1
    bad_value.write_bytes(raw.replace(b"987654", b"98x654"))

    encrypted = tmp_path / "locked.zip"
    subprocess.run(["zip", "-q", "-j", "-P", "secret", str(encrypted), str(good)], check=True)
    corrupt = tmp_path / "corrupt.zip"
    with zipfile.ZipFile(corrupt, "w", compression=zipfile.ZIP_DEFLATED) as zipped:
        zipped.write(other, "a.dcm")
    data = bytearray(corrupt.read_bytes())
    start = 30 + len("a.dcm")  # the deflated member's first bytes follow its local header
    data[start + 40:start + 80] = bytes(40)
    corrupt.write_bytes(bytes(data))

    before = progress(gateway)["quarantined"]
    for path in (bad_value, encrypted, corrupt):
        shutil.copy(path, folders["incoming"] / path.name)
    wait_until(lambda: progress(gateway)["quarantined"] >= before + 3, 60, "three quarantined")
    wait_until(lambda: files_left(folders["incoming"]) == [], 30, "folder empty")
    reasons = {p.read_text().splitlines()[0]: p.read_text() for p in
               folders["quarantine"].glob("*.reason")}
    assert "unreadable DICOM value" in reasons["bad-is.dcm"], reasons.get("bad-is.dcm")
    assert "encrypted" in reasons["locked.zip"], reasons.get("locked.zip")
    assert "unreadable" in reasons["corrupt.zip"], reasons.get("corrupt.zip")
    kept = {p.name.split("_", 1)[1]: p for p in folders["quarantine"].iterdir()
            if not p.name.endswith(".reason")}
    assert kept["locked.zip"].read_bytes() == encrypted.read_bytes()  # whole, nothing lost
    time.sleep(2.0)  # several polls (PollSeconds 0.3)
    rows = [r for r in gateway_rows(gateway, kind="quarantine")
            if r["instance_id"] in ("import:bad-is.dcm", "import:locked.zip", "import:corrupt.zip")]
    assert sorted(r["instance_id"] for r in rows) == [
        "import:bad-is.dcm", "import:corrupt.zip", "import:locked.zip"]
    assert "Traceback" not in gateway.log_tail(400)


FILTERS = {"Include": ["**/*.dcm", "**/*.zip"], "Exclude": ["**/tmp/**", "*.part"],
           "MinimumAgeSeconds": 600}


@pytest.fixture
def filtered(workdir: Path) -> Iterator[tuple[OrthancProcess, Path]]:
    """A gateway of its own: its filters would leave the other tests' files in the folder."""
    require_orthanc()
    incoming = workdir / "filtered-incoming"
    incoming.mkdir()
    process = OrthancProcess(
        workdir / "filtered-gateway", "RTGWFILTER", plugin=True, rules="rules: []\n",
        gateway_settings={"Import": {
            "Folder": str(incoming), "QuarantineFolder": str(workdir / "filtered-quarantine"),
            "ClearAfterImport": True, "PollSeconds": 0.3, "StableSeconds": 0.3, **FILTERS,
        }},
    )
    process.start()
    yield process, incoming
    process.stop()
    keep_logs(process, "importer-filtered-gateway")


def aged(path: Path, seconds: float) -> Path:
    then = time.time() - seconds
    os.utime(path, (then, then))
    return path


def test_filters_and_minimum_age_leave_skipped_files_in_place_and_count_them(
    filtered: tuple[OrthancProcess, Path], tmp_path: Path
) -> None:
    gateway, incoming = filtered
    ct1, ct2, young = write_datasets(make_rt_set("IMPORT-FILTER", n_slices=3).ct,
                                     tmp_path / "staging")
    uid = {path: str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
           for path in (ct1, ct2, young)}
    tree = tmp_path / "tree"
    for source, relative in ((ct1, "a/b/ct1.dcm"), (ct2, "a/tmp/ct2.dcm")):
        (tree / relative).parent.mkdir(parents=True, exist_ok=True)
        aged(Path(shutil.copy(source, tree / relative)), 3600)
    (tree / "notes.txt").write_text("a note")
    aged(tree / "notes.txt", 3600)
    shutil.copy(young, tree / "young.dcm")  # written now: younger than MinimumAgeSeconds
    for entry in tree.iterdir():  # a move keeps each file's mtime
        shutil.move(entry, incoming / entry.name)

    counts = {"excluded": 1, "not_included": 1, "too_young": 1, "outside": 0}
    wait_until(lambda: progress(gateway)["stored"] == 1
               and progress(gateway)["skipped"]["last_walk"] == counts, 60, "first walk")
    assert gateway.sop_instance_uids() == {uid[ct1]}
    wait_until(lambda: not (incoming / "a/b/ct1.dcm").exists(), 30, "imported file cleared")
    left = {p.relative_to(incoming).as_posix() for p in files_left(incoming)}
    assert left == {"a/tmp/ct2.dcm", "notes.txt", "young.dcm"}
    assert (incoming / "notes.txt").read_text() == "a note"
    # Later polls see the same files again: the totals do not grow.
    walks = progress(gateway)["skipped"]["walks"]
    status = wait_until(lambda: (lambda p: p if p["skipped"]["walks"] >= walks + 3 else None)(
        progress(gateway)), 30, "three more walks")
    assert status["skipped"]["total"] == counts and status["skipped"]["last_walk"] == counts
    assert status["filters"]["minimum_age_seconds"] == 600
    assert status["filters"]["include"] == FILTERS["Include"]
    assert gateway.sop_instance_uids() == {uid[ct1]}

    aged(incoming / "young.dcm", 601)  # old enough now, without waiting ten minutes
    wait_until(lambda: uid[young] in gateway.sop_instance_uids(), 60, "old enough, imported")
    done = {**counts, "too_young": 0}
    status = wait_until(lambda: (lambda p: p if p["skipped"]["last_walk"] == done else None)(
        progress(gateway)), 30, "nothing too young")
    assert status["stored"] == 2
    assert status["skipped"]["total"] == counts  # the young file counted once, not at each poll
    assert uid[ct2] not in gateway.sop_instance_uids()
    wait_until(lambda: not (incoming / "young.dcm").exists(), 30, "cleared once imported")
    left = {p.relative_to(incoming).as_posix() for p in files_left(incoming)}
    assert left == {"a/tmp/ct2.dcm", "notes.txt"}
    assert not list((incoming.parent / "filtered-quarantine").glob("*"))  # never quarantined
