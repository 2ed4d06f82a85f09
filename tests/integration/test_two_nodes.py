"""Two whole gateway nodes (Orthanc with the plugin and its workers) on one PostgreSQL: Orthanc's
index and the gateway's state shared, one storage folder, the DICOM front before them. Two senders
send 2,000 instances through the front; the node whose claim is mid-batch at a counting receiver
is killed whole (kill -9 of Orthanc; its workers follow it): every instance arrives, none twice,
the surviving node finishes the work (its lease takeover, then a C-FIND of what was in flight);
the killed node started again rejoins and new work is delivered. Before that, a plan whose CT
arrives on one node and whose RTPLAN and RTDOSE arrive on the other completes once and is
forwarded once."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.integration.conftest import keep_logs
from tests.integration.helpers import sop_uids
from tests.support.cluster_nodes import gateway_node
from tests.support.haproxy import dicom_front
from tests.support.orthanc import (
    OrthancProcess,
    process_gone,
    storescu,
    wait_until,
    worker_pids,
)
from tests.support.peers import CountingPeer
from tests.support.postgres import PostgresServer
from tests.support.rtset import make_rt_set, write_datasets

RULES = """
rules:
  - name: everything to the archive
    on: instance
    match: {calling_aet: [CT_ONE, CT_TWO, CT_THREE]}
    actions:
      - forward: [ARCHIVE]
  - name: split plans to the archive
    on: plan-complete
    match: {plan_label: SPLIT}
    actions:
      - forward: [ARCHIVE]
"""
# 2 senders x 10 patients x (97 CT + RTSTRUCT + RTPLAN + RTDOSE) = 2,000 instances
SETS_PER_SENDER = 10
SLICES = 97
LEASE_SECONDS = 10         # a dead node's claims wait this long before the other takes them


@pytest.fixture(scope="module")
def cluster(workdir: Path, postgres_server: PostgresServer) -> Iterator[dict[str, Any]]:
    receiver = CountingPeer("ARCHIVE")
    index_db, state_db = postgres_server.create_database(), postgres_server.create_database()
    shared = workdir / "shared-storage"
    nodes = {name: gateway_node(
        workdir, name, server=postgres_server, index_db=index_db, state_db=state_db,
        shared=shared, rules=RULES, modalities={"ARCHIVE": ("ARCHIVE", receiver.port)},
        gateway_settings={"ClaimLeaseSeconds": LEASE_SECONDS, "MaxInstancesPerAssociation": 10},
        # The receiver holds its stores while the test kills a node: longer than the suite's
        # 5 s, so the survivor's own associations wait rather than time out. (A store answered
        # after the timeout is a case of its own: test_executor_contracts, answer timed out.)
        orthanc_settings={"DicomScuTimeout": 90})
        for name in ("node-a", "node-b")}
    try:
        for gateway in nodes.values():   # one after the other: the first makes the schemas
            gateway.start()
        with dicom_front(workdir, {n: g.dicom_port for n, g in nodes.items()}) as front_port:
            yield {"nodes": nodes, "receiver": receiver, "front": front_port,
                   "state": state_db, "folder": workdir}
    finally:
        for name, gateway in nodes.items():
            gateway.stop()
            keep_logs(gateway, f"two-nodes-{name}")
        receiver.close()


def running_claims(state_db: str) -> dict[str, int]:
    """Running jobs per node (the claimant's node name)."""
    with psycopg.connect(state_db) as connection:
        rows = connection.execute("SELECT claimed_by FROM jobs WHERE state='running'").fetchall()
    counts: dict[str, int] = {}
    for (claimant,) in rows:
        name = str(claimant).split("/", 1)[0]
        counts[name] = counts.get(name, 0) + 1
    return counts


def test_a_plan_split_across_the_nodes_completes_once_and_is_forwarded_once(
        cluster: dict[str, Any], tmp_path: Path) -> None:
    """The CT and the structures reach node A, the plan and the dose node B (each node's own
    DICOM port, not the front): the plan is tracked from the shared state, complete once, and
    every instance reaches the archive once."""
    nodes: dict[str, OrthancProcess] = cluster["nodes"]
    receiver: CountingPeer = cluster["receiver"]
    rtset = make_rt_set("NODES-SPLIT", plan_label="SPLIT", n_slices=12)
    assert rtset.rtdose is not None
    storescu(write_datasets([*rtset.ct, rtset.rtstruct], tmp_path / "on-a"),
             nodes["node-a"].dicom_port, calling="TPS_A")
    storescu(write_datasets([rtset.rtplan, rtset.rtdose], tmp_path / "on-b"),
             nodes["node-b"].dicom_port, calling="TPS_B")
    expected = sop_uids(rtset.all())
    wait_until(lambda: expected <= receiver.uids(), 120, "the split plan at the archive")
    wait_until(lambda: not _unfinished_jobs(cluster["state"]), 60, "every job done")
    assert not set(receiver.duplicates()) & expected, receiver.duplicates()
    with psycopg.connect(cluster["state"]) as connection:
        bundles = connection.execute(
            "SELECT plan_label, complete FROM plan_bundles WHERE plan_label = 'SPLIT'").fetchall()
        forwards = connection.execute(
            "SELECT COUNT(*) FROM jobs WHERE rule = 'split plans to the archive'").fetchone()
        arrivals = connection.execute(
            "SELECT COUNT(*) FROM received r JOIN plan_bundles b ON b.study_uid = r.study_uid "
            "WHERE b.plan_label = 'SPLIT'").fetchone()
    assert bundles == [("SPLIT", 1)]
    assert forwards == (1,)                 # one plan-complete decision, on one node
    assert arrivals == (len(expected),)     # both nodes' arrivals in the one shared record


def test_a_node_killed_mid_forward_loses_nothing_and_sends_nothing_twice(
        cluster: dict[str, Any], tmp_path: Path) -> None:
    nodes: dict[str, OrthancProcess] = cluster["nodes"]
    receiver: CountingPeer = cluster["receiver"]
    before = receiver.uids()
    sets = [[make_rt_set(f"NODES-{sender}-{n}", plan_label="ADP1", n_slices=SLICES)
             for n in range(SETS_PER_SENDER)] for sender in (1, 2)]
    expected = {uid for batch in sets for rtset in batch for uid in sop_uids(rtset.all())}
    assert len(expected) == 2_000
    # The receiver holds one instance mid-batch: the kill lands mid-forward by construction.
    receiver.hold_after = len(before) + len(expected) // 3
    receiver.hold_seconds = 900   # held until the kill below, however slow the senders are
    senders = [threading.Thread(target=storescu, args=(
        write_datasets([ds for rtset in batch for ds in rtset.all()], tmp_path / f"in-{n}"),
        cluster["front"]), kwargs={"calling": f"CT_{'ONE' if n == 0 else 'TWO'}"})
        for n, batch in enumerate(sets)]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join(timeout=600)
    wait_until(receiver.holding.is_set, 120, "the receiver holding an instance mid-batch")
    # The node whose claim is at the receiver now: its claims are running.
    busy = wait_until(lambda: running_claims(cluster["state"]), 30, "a node with running claims")
    victim_name = max(busy, key=lambda name: busy[name])
    victim, survivor = nodes[victim_name], next(g for n, g in nodes.items() if n != victim_name)
    orphans = worker_pids(victim)
    victim.kill9()
    for pid in orphans:   # its workers follow Orthanc (PR_SET_PDEATHSIG); make sure of it
        wait_until(lambda pid=pid: process_gone(pid), 30,
                   f"worker {pid} of the killed node gone")
    receiver.release.set()
    assert 0 < receiver.distinct() - len(before) < len(expected)
    everything = before | expected
    wait_until(lambda: receiver.distinct() == len(everything), 600,
               "every instance delivered by the surviving node")
    # Every job done, not only "no claim running": a job taken over is pending until claimed
    # again, and one waiting out a retry delay is pending too.
    wait_until(lambda: not _unfinished_jobs(cluster["state"]), 120, "every job done")
    assert receiver.total() == len(everything), receiver.duplicates()
    with psycopg.connect(cluster["state"]) as connection:
        unfinished = connection.execute(
            "SELECT COUNT(*) FROM jobs WHERE state NOT IN ('done')").fetchone()
        taken_over = connection.execute(
            "SELECT COUNT(*) FROM jobs WHERE crashes > 0 OR last_status = 'lease-expired'"
        ).fetchone()
        finishers = {str(row[0]).split("/", 1)[0] for row in connection.execute(
            "SELECT DISTINCT claimed_by FROM jobs WHERE crashes > 0").fetchall()}
    assert unfinished == (0,)
    assert taken_over is not None and taken_over[0] > 0          # the victim's claims moved
    assert finishers == {next(n for n in nodes if n != victim_name)}
    assert survivor.get("/rt-gateway/health").status_code == 200

    # The killed node starts again and rejoins: new work sent to it arrives, once.
    victim.start()
    late = make_rt_set("NODES-3", plan_label="ADP1", n_slices=5)
    storescu(write_datasets(late.all(), tmp_path / "late"), victim.dicom_port,
             calling="CT_THREE")
    everything |= sop_uids(late.all())
    wait_until(lambda: receiver.distinct() == len(everything), 120, "new work after the rejoin")
    assert receiver.total() == len(everything), receiver.duplicates()
    assert victim.get("/rt-gateway/health").status_code == 200


def _unfinished_jobs(state_db: str) -> int:
    with psycopg.connect(state_db) as connection:
        row = connection.execute("SELECT COUNT(*) FROM jobs WHERE state <> 'done'").fetchone()
    return int(row[0]) if row else 0
