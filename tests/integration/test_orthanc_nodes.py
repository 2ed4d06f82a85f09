"""Two Orthanc nodes on one PostgreSQL index (Debian's orthanc-postgresql) and one shared storage
folder: what several gateway nodes stand on. What one node receives, the other lists, reads and
sees in the shared changes log; each reports its index as a database plugin (the gateway's intake
then waits at gaps in the changes log: jobs/changes_cursor.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.orthanc import OrthancProcess, storescu, wait_until
from tests.support.postgres import PostgresServer
from tests.support.rtset import make_rt_set, write_datasets

PG_INDEX = "/usr/share/orthanc/plugins/libOrthancPostgreSQLIndex.so"


def postgresql_index(server: PostgresServer, database: str) -> dict[str, Any]:
    """The Orthanc settings of a node on the shared index: Lock off (several nodes), SaveJobs
    off (a node's jobs are its own; the gateway refuses it on anyway)."""
    name = database.rsplit("dbname=", 1)[1]
    return {
        "Plugins": [PG_INDEX],
        "PostgreSQL": {"EnableIndex": True, "EnableStorage": False, "Lock": False,
                       "Host": "127.0.0.1", "Port": server.port, "Database": name,
                       "Username": "postgres", "Password": "",
                       "MaximumConnectionRetries": 20, "ConnectionRetryInterval": 1},
    }


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory,
          postgres_server: PostgresServer) -> Iterator[dict[str, OrthancProcess]]:
    folder = tmp_path_factory.mktemp("nodes")
    shared = folder / "shared-storage"
    index = postgresql_index(postgres_server, postgres_server.create_database())
    running = {name: OrthancProcess(folder / name, "RTGW", extra={
        **index, "StorageDirectory": str(shared), "IndexDirectory": str(folder / name)})
        for name in ("node-a", "node-b")}
    try:
        for node in running.values():     # one after the other: the first makes the schema
            node.start()
        yield running
    finally:
        for node in running.values():
            node.stop()


def test_what_one_node_receives_the_other_lists_reads_and_sees_in_the_changes_log(
        nodes: dict[str, OrthancProcess], tmp_path: Path) -> None:
    a, b = nodes["node-a"], nodes["node-b"]
    for node in (a, b):
        # e.g. /usr/lib/orthanc/libOrthancPostgreSQLIndex.so.4.0 on bookworm
        assert "PostgreSQLIndex" in str(node.json("/system").get("DatabaseBackendPlugin"))
    last_before = int(b.json("/changes?last")["Last"])
    ct = make_rt_set(patient_id="NODES1", n_slices=5).ct
    storescu(write_datasets(ct, tmp_path / "in"), a.dicom_port, calling="CT_SCANNER")
    wait_until(lambda: b.instance_count() == 5, 30, "node-b lists node-a's instances")
    instance = b.json("/instances")[0]
    file = b.get(f"/instances/{instance}/file")
    assert file.ok and file.content[128:132] == b"DICM"      # read from the shared storage
    changes = b.json(f"/changes?since={last_before}&limit=100")["Changes"]
    new = [change for change in changes if change["ChangeType"] == "NewInstance"]
    assert len(new) == 5 and all(change["Seq"] > last_before for change in new)
    assert sorted(b.json("/instances")) == sorted(a.json("/instances"))
