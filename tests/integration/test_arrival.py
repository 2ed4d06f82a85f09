"""Decide at arrival, record after (issue 22, item 3), on a real Orthanc with the plugin: a forward
rule the stored-instance note answers (calling AE, modality from the SOP class) is decided from
the note; every instance reaches the receiver once, and the description completes the records:
one matched evaluation per instance naming its study, one success transfer row per delivery
naming its study, one transaction-log line per row carrying the StudyInstanceUID."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from tests.integration.conftest import keep_logs, require_orthanc
from tests.support.orthanc import OrthancProcess, storescu, wait_until
from tests.support.peers import CountingPeer
from tests.support.rtset import make_ct_series, write_datasets

SLICES = 60
RULES = """
rules:
  - name: CT from the scanner to the TPS
    on: instance
    match: {calling_aet: SCANNER, modality: CT}
    actions:
      - forward: [TPS]
"""


@pytest.fixture(scope="module")
def receiver() -> Iterator[CountingPeer]:
    peer = CountingPeer("TPS")
    yield peer
    peer.close()


@pytest.fixture(scope="module")
def gateway(workdir: Path, receiver: CountingPeer) -> Iterator[OrthancProcess]:
    require_orthanc()
    process = OrthancProcess(workdir / "arrival", "RTGATEWAY", plugin=True, rules=RULES,
                             modalities={"TPS": ("TPS", receiver.port)})
    process.start()
    yield process
    process.stop()
    keep_logs(process, "arrival-gateway")


def rows(gateway: OrthancProcess, sql: str, parameters: tuple[object, ...] = ()) -> list[tuple]:
    with sqlite3.connect(gateway.gateway_db) as connection:
        return connection.execute(sql, parameters).fetchall()


def test_a_relay_decided_from_the_notes_is_delivered_once_and_recorded_whole(
        gateway: OrthancProcess, receiver: CountingPeer, workdir: Path) -> None:
    study_uid = generate_uid()
    series = make_ct_series(patient_id="ARR-1", patient_name="Arrival^Ada", study_uid=study_uid,
                            frame_of_reference_uid=generate_uid(), n_slices=SLICES,
                            rows=32, columns=32)
    storescu(write_datasets(series, workdir / "arrival-ct"), gateway.dicom_port,
             calling="SCANNER")

    wait_until(lambda: receiver.distinct() >= SLICES, 60, "the receiver holds the series")

    def recorded() -> bool:
        waiting = rows(gateway, "SELECT COUNT(*) FROM transfers WHERE logged<>1")[0][0]
        open_jobs = rows(gateway, "SELECT COUNT(*) FROM jobs WHERE state NOT IN ('done','dead')"
                                  " OR awaits_description=1")[0][0]
        decisions = rows(gateway, "SELECT COUNT(*) FROM arrival_decisions")[0][0]
        return waiting == 0 and open_jobs == 0 and decisions == 0
    wait_until(recorded, 60, "every record completed")

    assert receiver.distinct() == SLICES and receiver.duplicates() == {}
    stats = gateway.json("/rt-gateway/stats")
    assert stats["intake"]["decided_at_arrival"] == SLICES
    evaluations = rows(gateway, "SELECT study_uid, patient_id, new_instances FROM evaluations "
                                "WHERE matched=1 AND rule=?", ("CT from the scanner to the TPS",))
    assert len(evaluations) == SLICES
    assert set(evaluations) == {(study_uid, "ARR-1", 1)}
    transfers = rows(gateway, "SELECT id, study_uid, instances FROM transfers "
                              "WHERE status='success'")
    assert sum(row[2] for row in transfers) == SLICES
    assert {row[1] for row in transfers} == {study_uid}
    lines = [line for path in sorted(gateway.folder.rglob("transactions-*.log"))
             for line in path.read_text().splitlines()]
    for transfer_id, _, _ in transfers:
        mine = [line for line in lines if line.endswith(f"transfer {transfer_id}")
                or f"transfer {transfer_id}:" in line or f"transfer {transfer_id} " in line]
        assert len(mine) == 1, (transfer_id, mine)
        assert study_uid in mine[0]
