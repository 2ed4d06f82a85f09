"""DRAW export into one folder from several workers at once, on both engines: two nodes sharing
the folder (a job taken over from a node that was merely slow), or two rules. Each file name is
claimed in the database before it is written, so each file is written once."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
import pytest

from orthanc_plugin.db_engine import StateDatabase
from orthanc_plugin.db_postgres import PostgresDatabase
from orthanc_plugin.export import exporter
from orthanc_plugin.export.exporter import ExportHeld, ExportOutcome, Source, export_instance
from orthanc_plugin.export.model import DEFAULT_TEMPLATE, Claim, Decision
from orthanc_plugin.export.tables import (
    SCHEMA,
    FileClaim,
    claim_file,
    export_claims,
    publish_claimed,
    transfers,
)
from tests.conftest import MakeDatabase
from tests.support.fake_orthanc import FakeOrthanc
from tests.support.gateway_site import build_site
from tests.support.nodes import other_node
from tests.unit.test_export_model import part10

SOURCE = Source("orthanc-id", "AUTOSEG", "DRAW export")


@pytest.fixture
def renames(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every file put in place under its final name in the export folder."""
    done: list[str] = []
    real = exporter.put_in_place

    def counted(temporary: Path, folder: Path, name: str) -> Path:
        done.append(name)
        return real(temporary, folder, name)

    monkeypatch.setattr(exporter, "put_in_place", counted)
    return done


@pytest.fixture
def nodes(make_database: MakeDatabase) -> Iterator[tuple[StateDatabase, StateDatabase]]:
    first = make_database([SCHEMA])
    with other_node(first, [SCHEMA]) as second:
        yield first, second


def wait_until(condition: Callable[[], bool]) -> None:
    """Waits for a state (no time is asserted: the bound only ends a hung test)."""
    deadline = time.monotonic() + 60
    while not condition():
        assert time.monotonic() < deadline, "the state never came"
        time.sleep(0.01)


def claim_done(db: StateDatabase) -> bool:
    return any(claim["done_at"] for claim in export_claims(db))


def only_files(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())   # temporary files start with a dot


def test_two_nodes_exporting_the_same_instance_at_once_write_it_once(
        tmp_path: Path, nodes: tuple[StateDatabase, StateDatabase], renames: list[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "draw"
    folder.mkdir()
    data = part10("PAT1")
    # Both look at the folder (no file yet, nothing recorded) before either goes on: without a
    # claim each would write the file.
    meeting = threading.Barrier(2, timeout=60)
    looked: set[int] = set()
    real_sha256_of = exporter.sha256_of

    def look_together(path: Path) -> str | None:
        found = real_sha256_of(path)
        if threading.get_ident() not in looked:
            looked.add(threading.get_ident())
            meeting.wait()
        return found

    monkeypatch.setattr(exporter, "sha256_of", look_together)
    outcomes: list[ExportOutcome] = []
    held: list[str] = []
    failures: list[BaseException] = []

    def export_on(db: StateDatabase) -> None:
        try:
            while True:
                try:
                    outcomes.append(export_instance(db, folder, DEFAULT_TEMPLATE, data, SOURCE))
                    return
                except ExportHeld as waiting:   # the executor postpones the job: same here
                    held.append(waiting.name)
                    wait_until(lambda: claim_done(db))
        except BaseException as error:
            failures.append(error)

    threads = [threading.Thread(target=export_on, args=(db,)) for db in nodes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert failures == []
    sop = str(pydicom.dcmread(BytesIO(data)).SOPInstanceUID)
    name = f"DRAW_PAT1_{sop}.dcm"
    assert renames == [name]                                      # written once
    assert sorted(o.decision for o in outcomes) == [Decision.SKIP, Decision.WRITE]
    assert {o.name for o in outcomes} == {name}
    assert only_files(folder) == [name] and (folder / name).read_bytes() == data
    assert [row["ModifiedFileName"] for row in transfers(nodes[0], {})] == [name]
    (claim,) = export_claims(nodes[1])
    assert claim["name"] == name and claim["done_at"]


def test_a_stale_claim_is_taken_over_and_its_slow_holder_writes_nothing(
        tmp_path: Path, nodes: tuple[StateDatabase, StateDatabase], renames: list[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Node A is stopped (SIGSTOP) after claiming the file and writing its temporary copy, for
    longer than its claim (here: a claim that runs out at once). Node B takes the name over and
    exports the file. When A resumes, its rename is refused: the file was written once, by B."""
    folder = tmp_path / "draw"
    folder.mkdir()
    data = part10("PAT2")
    paused, resume = threading.Event(), threading.Event()
    real_write = exporter.write_temporary
    node_a: dict[str, Any] = {}

    def stopped_after_writing(*args: Any) -> Path:
        temporary = real_write(*args)
        if threading.current_thread().name == "node-a":
            paused.set()
            resume.wait()
        return temporary

    monkeypatch.setattr(exporter, "write_temporary", stopped_after_writing)

    def run_a() -> None:
        try:
            node_a["outcome"] = export_instance(nodes[0], folder, DEFAULT_TEMPLATE, data, SOURCE,
                                                claim_seconds=-1.0)
        except BaseException as error:
            node_a["error"] = error

    thread = threading.Thread(target=run_a, name="node-a")
    thread.start()
    paused.wait()
    try:
        taken_over = export_instance(nodes[1], folder, DEFAULT_TEMPLATE, data, SOURCE)
    finally:
        resume.set()
        thread.join()

    assert taken_over.decision is Decision.WRITE
    assert isinstance(node_a.get("error"), ExportHeld)    # the executor postpones its job
    assert renames == [taken_over.name]
    assert only_files(folder) == [taken_over.name]       # A's temporary copy is gone too
    assert (folder / taken_over.name).read_bytes() == data
    assert len(transfers(nodes[0], {})) == 1
    (claim,) = export_claims(nodes[0])
    assert claim["done_at"]
    again = export_instance(nodes[0], folder, DEFAULT_TEMPLATE, data, SOURCE)
    assert again.decision is Decision.SKIP and again.name == taken_over.name


def test_a_name_claimed_for_other_content_is_never_written_over(
        tmp_path: Path, nodes: tuple[StateDatabase, StateDatabase], renames: list[str]) -> None:
    """Another node claimed the name for a different version of the instance and has not
    written it yet: this content takes the next version's name."""
    folder = tmp_path / "draw"
    folder.mkdir()
    data = part10("PAT3")
    sop = str(pydicom.dcmread(BytesIO(data)).SOPInstanceUID)
    first = f"DRAW_PAT3_{sop}.dcm"
    now = time.time()
    assert claim_file(nodes[0], str(folder), first, "other-content",
                      FileClaim("node-a", "a1", now + 3600), now) == (Claim.MINE, now + 3600)

    outcome = export_instance(nodes[1], folder, DEFAULT_TEMPLATE, data, SOURCE)

    assert outcome.decision is Decision.WRITE and outcome.name == f"DRAW_PAT3_{sop}_v2.dcm"
    assert renames == [outcome.name]


def test_a_live_claim_postpones_the_export_job_without_spending_an_attempt(
        tmp_path: Path) -> None:
    """The executor: another node is writing this very file; the job waits (no attempt spent,
    nothing written), then finds it exported and skips it."""
    folder = tmp_path / "draw"
    folder.mkdir()
    orthanc = FakeOrthanc({})
    rules = ("rules:\n  - name: DRAW\n    on: instance\n    match: {modality: RTSTRUCT}\n"
             f"    actions:\n      - export: {{folder: {folder}}}\n")
    site = build_site(tmp_path, rules, orthanc)
    data = part10("PAT4")
    structures = orthanc.receive(pydicom.dcmread(BytesIO(data)), calling_aet="AUTOSEG")
    data = orthanc.instances[structures].file
    name = f"DRAW_PAT4_{pydicom.dcmread(BytesIO(data)).SOPInstanceUID}.dcm"
    now = time.time()
    other = FileClaim("node-b", "b1", now + 3600)
    digest = hashlib.sha256(data).hexdigest()
    assert claim_file(site.gateway.db, str(folder), name, digest, other, now)[0] is Claim.MINE
    site.note_stored(structures)
    site.take_in()
    site.run_queue()

    (job,) = site.jobs("export")
    assert (job["state"], job["attempts"]) == ("pending", 0)
    assert job["last_error"].startswith("waiting: ") and list(folder.iterdir()) == []

    # Node B finishes: the file in place, recorded, its claim done.
    (folder / name).write_bytes(data)
    assert publish_claimed(site.gateway.db, str(folder), name, "b1", lambda: None, {
        "SOPInstanceUID": str(pydicom.dcmread(BytesIO(data)).SOPInstanceUID),
        "ModifiedFileName": name, "DestinationPath": str(folder), "ExportDate": "now",
        "ContentSHA256": digest})
    site.time_passes()
    site.run_queue()

    (job,) = site.jobs("export")
    assert job["state"] == "done"
    assert len(site.events("export-skipped")) == 1 and site.events("exported") == []
    assert site.errors_logged() == []


def test_a_holder_stopped_while_putting_the_file_in_place_keeps_it_on_postgresql(
        tmp_path: Path, postgres_conninfo: str, renames: list[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Node A's claim ran out, but A is in the middle of its rename (its claim's row locked):
    node B neither waits on the lock nor takes the name over; A finishes, once."""
    folder = tmp_path / "draw"
    folder.mkdir()
    data = part10("PAT5")
    first = PostgresDatabase(postgres_conninfo, [SCHEMA])
    second = PostgresDatabase(postgres_conninfo, [SCHEMA])
    renaming, resume = threading.Event(), threading.Event()
    counted = exporter.put_in_place

    def stopped_in_the_rename(temporary: Path, where: Path, name: str) -> Path:
        if threading.current_thread().name == "node-a":
            renaming.set()
            resume.wait()
        return counted(temporary, where, name)

    monkeypatch.setattr(exporter, "put_in_place", stopped_in_the_rename)
    results: dict[str, Any] = {}

    def run(node: str, db: StateDatabase, claim_seconds: float) -> None:
        try:
            results[node] = export_instance(db, folder, DEFAULT_TEMPLATE, data, SOURCE,
                                            claim_seconds=claim_seconds)
        except BaseException as error:
            results[node] = error

    node_a = threading.Thread(target=run, args=("a", first, -1.0), name="node-a")
    node_b = threading.Thread(target=run, args=("b", second, 120.0), name="node-b")
    try:
        node_a.start()
        renaming.wait()
        node_b.start()
        wait_until(lambda: "b" in results)
    finally:
        resume.set()
        node_a.join()
        node_b.join()
        first.close()
        second.close()

    assert isinstance(results["b"], ExportHeld)
    assert isinstance(results["a"], ExportOutcome) and results["a"].decision is Decision.WRITE
    assert renames == [results["a"].name] and only_files(folder) == [results["a"].name]
