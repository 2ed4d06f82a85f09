"""Whole gateway nodes on one PostgreSQL (issue 25), for benches and tests that start several:
Orthanc's index on the server through orthanc-postgresql (its lock off, so that several Orthanc
share it), the gateway's state in another database on the same server, one storage folder shared
by every node, each node named. deploy/several-nodes/orthanc-node.json is the same set-up for a
site; tests/integration/test_two_nodes.py starts its two nodes with these settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.support.orthanc import PLUGIN, OrthancProcess
from tests.support.postgres import PostgresServer

PG_INDEX = "/usr/share/orthanc/plugins/libOrthancPostgreSQLIndex.so"


def index_settings(server: PostgresServer, index_db: str) -> dict[str, Any]:
    """Orthanc's "PostgreSQL" section for the index in database `index_db` (a conninfo)."""
    return {"EnableIndex": True, "EnableStorage": False, "Lock": False,
            "Host": "127.0.0.1", "Port": server.port,
            "Database": index_db.rsplit("dbname=", 1)[1], "Username": "postgres",
            "Password": "", "MaximumConnectionRetries": 20, "ConnectionRetryInterval": 1}


def gateway_node(folder: Path, name: str, *, server: PostgresServer, index_db: str,
                 state_db: str, shared: Path, rules: str,
                 modalities: dict[str, OrthancProcess | tuple[str, int]],
                 gateway_settings: dict[str, Any] | None = None,
                 stable_age: int = 2, orthanc_settings: dict[str, Any] | None = None
                 ) -> OrthancProcess:
    """One node (not started) in folder/name; start the nodes one after the other, the first
    makes the schemas."""
    return OrthancProcess(
        folder / name, "RTGATEWAY", plugin=True, rules=rules, modalities=modalities,
        stable_age=stable_age,
        gateway_settings={"PostgreSQL": state_db, "NodeName": name, **(gateway_settings or {})},
        extra={"Plugins": [PLUGIN, PG_INDEX], "StorageDirectory": str(shared),
               "IndexDirectory": str(folder / name / "index"),
               "PostgreSQL": index_settings(server, index_db), **(orthanc_settings or {})})
