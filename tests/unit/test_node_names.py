"""Several gateway nodes on one database: each names its claims and transfer rows after itself
(RtGateway.NodeName), so a node's start repairs only what its own earlier workers left (on both
engines: conftest's make_database)."""

from __future__ import annotations

from pathlib import Path

import pytest

from orthanc_plugin.audit.metrics import Metrics
from orthanc_plugin.audit.recorder import AuditRecorder
from orthanc_plugin.audit.tables import SCHEMA as AUDIT_SCHEMA
from orthanc_plugin.audit.translog import TransactionLog
from orthanc_plugin.config import ConfigError, parse_config
from orthanc_plugin.jobs.tables import SCHEMA as JOBS_SCHEMA
from tests.conftest import MakeDatabase


def test_the_node_name_is_the_host_name_unless_set_and_must_be_a_plain_name(
        tmp_path: Path) -> None:
    assert parse_config({"SaveJobs": False}, tmp_path).node_name   # the host's, never empty
    named = parse_config({"SaveJobs": False, "RtGateway": {"NodeName": "rt-gw-2"}}, tmp_path)
    assert named.node_name == "rt-gw-2"
    for bad in ("", "a/b", "a:b", "-x", "x" * 64, 7):
        with pytest.raises(ConfigError, match="NodeName"):
            parse_config({"SaveJobs": False, "RtGateway": {"NodeName": bad}}, tmp_path)


def test_a_node_writes_the_orphaned_log_lines_of_its_own_dead_workers_only(
        tmp_path: Path, make_database: MakeDatabase) -> None:
    """Each node keeps its own transaction log: a row a neighbour's worker has not logged yet
    is the neighbour's to log, not a duplicate line in this node's log."""
    db = make_database([AUDIT_SCHEMA, JOBS_SCHEMA])
    recorder = AuditRecorder(db, TransactionLog(tmp_path / "logs"), Metrics(lambda *_: None))
    writers = {"node-a/1-1:11": "own earlier generation", "node-a/2-2:21": "own running",
               "node-b/3-3:31": "a neighbour's", "0-0:1": "before node names"}
    with db.transaction() as connection:
        for writer in writers:
            connection.execute(
                "INSERT INTO transfers(job_id, rule, resource_id, target, attempt, status, "
                "instances, bytes, started_at, ended_at, writer, logged) "
                "VALUES(1, 'r', 's', 'ARCHIVE', 1, 'ok', 1, 10, '2026-12-07T10:00:00Z', "
                "'2026-12-07T10:00:01Z', ?, 0)", (writer,))
    assert recorder.log_orphaned_transfers(generation="node-a/2-2") == 2
    logged = {row["writer"] for row in db.query("SELECT writer FROM transfers WHERE logged=1")}
    assert logged == {"node-a/1-1:11", "0-0:1"}
