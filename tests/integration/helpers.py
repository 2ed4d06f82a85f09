"""Small queries the integration tests share."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

from tests.integration.conftest import keep_logs, require_orthanc
from tests.support.orthanc import OrthancProcess
from tests.support.peers import CountingPeer


def study_sop_uids(peer: OrthancProcess, study_uid: str) -> set[str]:
    answer = peer.post(
        "/tools/find",
        {"Level": "Instance", "Query": {"StudyInstanceUID": study_uid}, "Expand": True},
    )
    answer.raise_for_status()
    return {item["MainDicomTags"]["SOPInstanceUID"] for item in answer.json()}


def sop_uids(datasets: list[Dataset]) -> set[str]:
    return {str(ds.SOPInstanceUID) for ds in datasets}


def arrival_order(peer: OrthancProcess, study_uid: str) -> list[str]:
    """Modalities of the study's instances in the order the peer stored them."""
    wanted = study_sop_uids(peer, study_uid)
    order: list[str] = []
    since = 0
    while True:
        changes = peer.json("/changes", params={"since": since, "limit": 1000})
        for change in changes["Changes"]:
            if change["ChangeType"] != "NewInstance":
                continue
            instance = peer.json(f"/instances/{change['ID']}")
            if instance["MainDicomTags"]["SOPInstanceUID"] in wanted:
                series = peer.json(f"/series/{instance['ParentSeries']}")
                order.append(series["MainDicomTags"]["Modality"])
        since = changes["Last"]
        if changes["Done"]:
            return order


def item_states(gateway: OrthancProcess, study_uid: str,
                second: str = "i.status") -> dict[str, tuple[str, Any]]:
    """SOP Instance UID -> (state, `second`) of every queued item of the study, read from the
    gateway's database (`second`: a column of the item `i`, e.g. status, or of forwarding's record
    of it `f`, e.g. its commit state)."""
    with sqlite3.connect(gateway.gateway_db) as connection:
        rows = connection.execute(
            f"SELECT r.sop_instance_uid, i.state, {second} FROM job_items i "
            "JOIN jobs j ON j.id = i.job_id JOIN received r ON r.instance_id = i.instance_id "
            "LEFT JOIN forward_items f ON f.job_id = i.job_id AND f.instance_id = i.instance_id "
            "WHERE j.study_uid = ?", (study_uid,)).fetchall()
    return {row[0]: (row[1], row[2]) for row in rows}


def gateway_rows(gateway: OrthancProcess, **filters: str) -> list[dict[str, Any]]:
    answer = gateway.get("/rt-gateway/audit", params=filters)
    answer.raise_for_status()
    return list(answer.json())


def study_jobs_done(gateway: OrthancProcess, study_uid: str) -> list[dict[str, Any]]:
    """The study's jobs once every one is done, [] until then (for wait_until): a receiver
    answers the last C-STORE a moment before the gateway settles the job and writes its rows."""
    jobs = [job for job in gateway.json("/rt-gateway/jobs", params={"limit": 10_000})
            if job["study_uid"] == study_uid]
    return jobs if jobs and all(job["state"] == "done" for job in jobs) else []


def prometheus(gateway: OrthancProcess, name: str) -> float | None:
    """One value of Orthanc's Prometheus endpoint, None when it is not there (yet)."""
    for line in gateway.get("/tools/metrics-prometheus").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


@contextmanager
def running_peers(workdir: Path, *names: str) -> Iterator[dict[str, OrthancProcess]]:
    """Plain Orthancs named by their AE titles, each in its own folder; stopped afterwards."""
    peers = {name: OrthancProcess(workdir / name.lower(), name) for name in names}
    try:
        for peer in peers.values():
            peer.start()
        yield peers
    finally:
        for peer in peers.values():
            peer.stop()


def counting_peers(*names: str) -> Iterator[dict[str, CountingPeer]]:
    """Counting receivers by AE title, closed when the module ends (yield from a fixture)."""
    made = {name: CountingPeer(name) for name in names}
    yield made
    for peer in made.values():
        peer.close()


def gateway_to_peers(workdir: Path, peers: dict[str, CountingPeer], rules: str, log_name: str,
                     **settings: Any) -> Iterator[OrthancProcess]:
    """One gateway Orthanc whose modalities are the peers (yield from a module fixture)."""
    require_orthanc()
    process = OrthancProcess(workdir / "gateway", "RTGATEWAY", plugin=True, rules=rules,
                             modalities={name: (name, peer.port) for name, peer in peers.items()},
                             **settings)
    process.start()
    yield process
    process.stop()
    keep_logs(process, log_name)
