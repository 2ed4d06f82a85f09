"""One harvest run by two whole gateway nodes at once (one PostgreSQL for Orthanc's index and the
gateway's state, one storage folder, one harvest folder, the DICOM front before them: the remote
PACS moves to the front's address). One node is killed (kill -9) mid-way: every selected series
is stored once and zipped once per patient, the survivor finishes the dead node's series when
their lease ends, and the requests-per-minute cap holds for both nodes together, counted in the
PACS's own log."""

from __future__ import annotations

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
from tests.support.postgres import PostgresServer
from tests.support.rtset import RtSet, make_rt_set, write_datasets
from tests.support.source_pacs import SourcePacs, max_in_window, zip_sop_uids

SOURCE = "HVSOURCE"
PATIENTS = ("HVN1", "HVN2", "HVN3", "HVN4")     # 4 series each: CT, RTSTRUCT, RTPLAN, RTDOSE
CAP = 16                 # requests per minute for both nodes together; the harvest asks ~20
LEASE_SECONDS = 10


@pytest.fixture(scope="module")
def pacs_data() -> dict[str, RtSet]:
    return {patient: make_rt_set(patient, f"Node^{patient}", n_slices=3) for patient in PATIENTS}


@pytest.fixture(scope="module")
def cluster(workdir: Path, postgres_server: PostgresServer, pacs_data: dict[str, RtSet]
            ) -> Iterator[dict[str, Any]]:
    source = SourcePacs(workdir / "source", SOURCE)
    index_db, state_db = postgres_server.create_database(), postgres_server.create_database()
    harvests = workdir / "harvests"     # shared by the nodes, like the storage
    nodes = {name: gateway_node(
        workdir, name, server=postgres_server, index_db=index_db, state_db=state_db,
        shared=workdir / "shared-storage", rules="rules: []\n", modalities={SOURCE: source},
        gateway_settings={"ClaimLeaseSeconds": LEASE_SECONDS,
                          "Harvest": {"Folder": str(harvests), "PollSeconds": 0.05,
                                      "Threads": 2}})
        for name in ("node-a", "node-b")}
    try:
        for gateway in nodes.values():   # one after the other: the first makes the schemas
            gateway.start()
        with dicom_front(workdir, {n: g.dicom_port for n, g in nodes.items()}) as front_port:
            source.add_modality("RTGATEWAY", ("RTGATEWAY", front_port))
            source.start()
            files = [path for patient, rtset in pacs_data.items()
                     for path in write_datasets(rtset.all(), workdir / "files" / patient)]
            storescu(files, source.dicom_port, calling="LOADER")
            yield {"nodes": nodes, "source": source, "state": state_db, "harvests": harvests}
    finally:
        for name, gateway in nodes.items():
            gateway.stop()
            keep_logs(gateway, f"harvest-nodes-{name}")
        source.stop()
        keep_logs(source, "harvest-nodes-source")


def series_rows(state_db: str) -> list[tuple[str, str, str | None, float | None]]:
    """Each series row: its UID, state, holder and lease."""
    with psycopg.connect(state_db) as connection:
        return [(str(uid), str(state), holder, lease) for uid, state, holder, lease in
                connection.execute("SELECT series_uid, state, claimed_by, lease_until "
                                   "FROM harvest_items WHERE level = 'series'").fetchall()]


def failed_moves(state_db: str, harvest_id: int) -> set[str]:
    """Series with a C-MOVE that failed or whose outcome its node did not live to record."""
    with psycopg.connect(state_db) as connection:
        return {str(uid) for (uid,) in connection.execute(
            "SELECT i.series_uid FROM harvest_requests r JOIN harvest_items i ON i.id = r.item_id "
            "WHERE r.harvest_id = %s AND r.kind = 'C-MOVE' AND r.outcome IN ('error', 'unknown')",
            (harvest_id,)).fetchall()}


def node_of(claimant: str | None) -> str:
    return str(claimant).split("/", 1)[0]


def test_a_harvest_shared_by_two_nodes_survives_one_killed_under_one_cap(
        cluster: dict[str, Any], pacs_data: dict[str, RtSet]) -> None:
    nodes: dict[str, OrthancProcess] = cluster["nodes"]
    source: SourcePacs = cluster["source"]
    mark = source.log_mark()
    started = nodes["node-a"].post("/rt-gateway/harvests", {
        "source": SOURCE, "patients": list(PATIENTS), "max_requests_per_minute": CAP,
        "concurrency": 4, "retry_delay_seconds": 1, "retry_max_delay_seconds": 2})
    assert started.status_code == 200, started.text
    harvest_id = int(started.json()["id"])

    # Mid-way: each node has completed a series of its own, and a node holds a live claim on
    # another. Waiting for "some series complete" was not enough: on a slow start one node could
    # have completed them all, so nothing proved the work was shared (failed once on trixie).
    def live_holder() -> str | None:
        rows = series_rows(cluster["state"])
        completed_by = {node_of(holder) for _, state, holder, _ in rows
                        if state == "complete" and holder}
        holders = [node_of(holder) for _, state, holder, lease in rows
                   if state != "complete" and lease is not None and holder]
        return holders[0] if completed_by == set(nodes) and holders else None

    victim_name = wait_until(live_holder, 240, "series complete and a live claim")
    victim = nodes[victim_name]
    survivor_name = next(name for name in nodes if name != victim_name)
    survivor = nodes[survivor_name]
    orphans = worker_pids(victim)
    victim.kill9()
    for pid in orphans:
        wait_until(lambda pid=pid: process_gone(pid), 30,
                   f"worker {pid} of the killed node gone")
    # What the dead node held, read once nothing of it runs: its rows keep their holder until
    # their lease (10 s) ends. Read before the kill, a series it finished meanwhile would count.
    before = series_rows(cluster["state"])

    final = wait_until(
        lambda: (s := survivor.json(f"/rt-gateway/harvests/{harvest_id}"))["state"] == "done"
        and s, 300, "the harvest done by the surviving node")
    wanted = list(pacs_data.values())
    assert final["counts"]["series"] == {"complete": 4 * len(PATIENTS)}
    # Orthanc's shared index holds every selected instance.
    assert survivor.sop_instance_uids() == sop_uids([ds for rtset in wanted for ds in rtset.all()])

    # Both nodes did part of it (what the dead node completed stays its own, done once); the
    # survivor finished what the dead node held.
    after = series_rows(cluster["state"])
    assert {node_of(holder) for _, state, holder, _ in after if state == "complete"} == set(nodes)
    held_by_victim = {uid for uid, state, holder, lease in before
                      if state != "complete" and lease is not None
                      and node_of(holder) == victim_name}
    assert held_by_victim
    assert all(node_of(holder) == survivor_name for uid, _, holder, _ in after
               if uid in held_by_victim)

    # Each series moved; one moved again is one the dead node had in hand, or one whose move
    # failed and was retried (a move the front still sent to the dead node in the moment before
    # its health check saw it down).
    moves = source.moves_per_series(mark)
    assert set(moves) == {str(ds.SeriesInstanceUID) for rtset in wanted for ds in rtset.all()}
    assert {uid for uid, n in moves.items() if n > 1} <= held_by_victim | failed_moves(
        cluster["state"], harvest_id)

    # The cap, counted at the PACS, for both nodes together: more requests than the cap, and no
    # 60 s window over it (each node on its own would have allowed the cap per node).
    times = source.request_times(mark)
    assert len(times) > CAP
    assert max_in_window(times, 60.0) <= CAP

    # One ZIP per patient in the shared folder, each with exactly its instances. "done" counts
    # series: a ZIP may still be being written (or rebuilt, when the dead node was building it).
    wait_until(lambda: len(survivor.json(f"/rt-gateway/harvests/{harvest_id}")["zips"])
               == len(PATIENTS), 120, "a ZIP for every patient")
    folder = cluster["harvests"] / f"harvest-{harvest_id}"
    zips = sorted(path.name for path in folder.glob("*.zip"))
    assert [name.split("__")[0] for name in zips] == sorted(PATIENTS)
    for path in folder.glob("*.zip"):
        assert zip_sop_uids(path) == sop_uids(pacs_data[path.name.split("__")[0]].all())
    assert not list(folder.glob(".*partial"))
