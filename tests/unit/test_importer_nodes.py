"""The import folder on shared storage, polled by two gateway nodes (two watchers, two handles on
one database) on both engines: each file is taken by one node only, a dead node's claim is taken
over, a paused node that lost its claim leaves the file to the new holder, and a file that
vanishes under a node is neither quarantined nor an error."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from orthanc_plugin.importer.model import inspect_dicom, read_settings
from orthanc_plugin.importer.tables import SCHEMA, ImportTables
from orthanc_plugin.importer.watcher import ImportWatcher
from tests.conftest import MakeDatabase
from tests.support.nodes import other_node
from tests.unit.test_importer_walk import FakeRecorder, age, dicom_bytes


class NodeHost:
    """One node's Orthanc. `on_first_store` runs inside the node's first store (while the node
    is in the middle of importing a file)."""

    def __init__(self, on_first_store: Callable[[], None] = lambda: None) -> None:
        self.stored: list[bytes] = []
        self.on_first_store = on_first_store

    def post_bytes(self, uri: str, data: bytes) -> Any:
        assert uri == "/instances"
        self.stored.append(data)
        if len(self.stored) == 1:
            self.on_first_store()
        return {"ID": inspect_dicom(data)}


class Recorder(FakeRecorder):
    def __init__(self) -> None:
        self.events: list[str] = []

    def event(self, name: str, *args: Any, **kwargs: Any) -> None:
        self.events.append(name)


def node(folder: Path, tables: ImportTables, host: NodeHost,
         errors: list[str] | None = None) -> ImportWatcher:
    settings = read_settings({"Folder": str(folder), "StableSeconds": 0, "ClearAfterImport": True},
                             folder.parent, folder.parent / "quarantine")
    return ImportWatcher(host, tables, Recorder(), settings,  # type: ignore[arg-type]
                         (errors if errors is not None else []).append)


def drop(folder: Path, count: int) -> dict[str, bytes]:
    folder.mkdir(parents=True, exist_ok=True)
    files = {f"ct{index}.dcm": dicom_bytes(f"NODES-{index}") for index in range(count)}
    for name, data in files.items():
        (folder / name).write_bytes(data)
        age(folder / name, 3600)
    return files


def test_two_nodes_polling_one_folder_import_each_file_once(
        tmp_path: Path, make_database: MakeDatabase) -> None:
    folder = tmp_path / "incoming"
    files = drop(folder, 6)
    first_db = make_database([SCHEMA])
    # Each node's first store waits until the other node stores too: both are in the middle of
    # an import at once (without claims both would be storing ct0.dcm, the first of the walk).
    meeting = threading.Barrier(2, timeout=60)
    hosts = [NodeHost(meeting.wait), NodeHost(meeting.wait)]
    failures: list[BaseException] = []

    def poll(watcher: ImportWatcher) -> None:
        try:
            for _ in range(200):
                if not any(folder.iterdir()):
                    return
                watcher.scan()
        except BaseException as error:  # reported by the test, not lost in the thread
            failures.append(error)

    with other_node(first_db, [SCHEMA]) as second_db:
        watchers = [node(folder, ImportTables(first_db), hosts[0]),
                    node(folder, ImportTables(second_db), hosts[1])]
        threads = [threading.Thread(target=poll, args=(watcher,)) for watcher in watchers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    assert failures == []
    stored = hosts[0].stored + hosts[1].stored
    assert sorted(stored) == sorted(files.values())   # every file once, none twice
    assert hosts[0].stored and hosts[1].stored         # both nodes took part
    assert list(folder.iterdir()) == []
    rows = first_db.query("SELECT path, state FROM import_files ORDER BY path")
    assert [(row["path"], row["state"]) for row in rows] == [(name, "stored") for name in sorted(files)]
    claims = ImportTables(first_db).claims()
    assert {claim["node"] for claim in claims} == {watcher.node for watcher in watchers}
    assert all(claim["done_at"] for claim in claims) and len(claims) == len(files)


def test_a_dead_nodes_claim_is_taken_over_and_a_live_one_left_alone(
        tmp_path: Path, make_database: MakeDatabase) -> None:
    folder = tmp_path / "incoming"
    files = drop(folder, 2)
    tables = ImportTables(make_database([SCHEMA]))
    now = time.time()
    for name, owner, until in (("ct0.dcm", "dead-node", now - 1), ("ct1.dcm", "live-node",
                                                                    now + 3600)):
        info = (folder / name).stat()
        assert tables.claim(name, info.st_size, info.st_mtime_ns, owner, until, now - 600)
    host = NodeHost()
    watcher = node(folder, tables, host)

    watcher.scan()
    watcher.scan()

    assert host.stored == [files["ct0.dcm"]]
    assert [path.name for path in folder.iterdir()] == ["ct1.dcm"]   # the live claim's file stays
    claims = {claim["path"]: claim for claim in tables.claims()}
    assert claims["ct0.dcm"]["node"] == watcher.node and claims["ct0.dcm"]["done_at"]
    assert claims["ct1.dcm"]["node"] == "live-node" and not claims["ct1.dcm"]["done_at"]


def test_a_paused_node_that_lost_its_claim_neither_records_nor_clears(
        tmp_path: Path, make_database: MakeDatabase) -> None:
    """Node A is paused in the middle of a store for longer than its claim (here: a claim that
    runs out at once); node B takes the file over and imports it. When A resumes, the file is
    B's: A records nothing and counts nothing."""
    folder = tmp_path / "incoming"
    files = drop(folder, 1)
    first_db = make_database([SCHEMA])
    with other_node(first_db, [SCHEMA]) as second_db:
        node_b = node(folder, ImportTables(second_db), NodeHost())
        node_b.scan()   # each node has seen the file once: ready at its next look
        node_a = node(folder, ImportTables(first_db), NodeHost(node_b.scan))
        node_a.scan()
        node_a.claim_seconds = -1.0

        assert node_a.scan() == 0

    assert node_a.host.stored == node_b.host.stored == [files["ct0.dcm"]]  # type: ignore[attr-defined]
    rows = first_db.query("SELECT state FROM import_files WHERE path=?", ("ct0.dcm",))
    assert [row["state"] for row in rows] == ["stored"]           # B's row alone
    assert "imported" not in node_a.recorder.events  # type: ignore[attr-defined]
    assert [claim["node"] for claim in ImportTables(first_db).claims()] == [node_b.node]


def test_a_file_that_vanishes_under_a_node_is_no_error_and_not_quarantined(
        tmp_path: Path, make_database: MakeDatabase) -> None:
    """The other node cleared the file (or a person removed it) between this node's look and
    its read."""
    folder = tmp_path / "incoming"
    drop(folder, 1)
    tables = ImportTables(make_database([SCHEMA]))
    errors: list[str] = []
    watcher = node(folder, tables, NodeHost(), errors)
    claim = tables.claim

    def claim_then_vanish(*args: Any) -> bool:
        won = claim(*args)
        (folder / "ct0.dcm").unlink()
        return won

    tables.claim = claim_then_vanish  # type: ignore[method-assign]
    watcher.scan()
    assert watcher.scan() == 0

    assert watcher.host.stored == [] and errors == []  # type: ignore[attr-defined]
    assert not (tmp_path / "quarantine").exists()
    assert tables.claims() == []   # released: nothing is left held for a file that is gone
    assert tables.progress()["files_seen"] == 0
