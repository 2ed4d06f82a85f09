"""Reception first (issue 22, item 4), with a real Orthanc: while a modality sends, an overlay job
holds its REST calls to Orthanc, and it completes once the burst has ended (reception.py).

States only, never timings: the gate's counters in GET stats and the overlay's audit events.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from tests.integration.conftest import keep_logs, require_orthanc
from tests.integration.helpers import gateway_rows, prometheus
from tests.support.orthanc import OrthancProcess, storescu, wait_until
from tests.support.rtset import make_ct_series, make_rt_set, write_datasets

RULES = """
rules:
  - name: overlay
    on: instance
    match: {calling_aet: OVERLAY, modality: RTSTRUCT}
    actions: [{overlay: {planes: [axial, coronal]}}]
"""
# A long pause: the overlay stays held for the whole burst, whatever the machine's load.
SETTINGS = {"ReceptionFirst": {"QuietSeconds": 1.0, "MaxPauseSeconds": 120}}
CHUNKS = 24
CHUNK_SLICES = 120


@pytest.fixture(scope="module")
def gateway(workdir: Path) -> Iterator[OrthancProcess]:
    require_orthanc()
    process = OrthancProcess(workdir / "gateway", "RTGATEWAY", plugin=True, rules=RULES,
                             gateway_settings=SETTINGS, stable_age=60)
    process.start()
    yield process
    keep_logs(process, "reception_first")
    process.stop()


def reception(gateway: OrthancProcess) -> dict:  # type: ignore[type-arg]
    return dict(gateway.json("/rt-gateway/stats")["reception_first"])


def overlay_state(gateway: OrthancProcess) -> str:
    with sqlite3.connect(gateway.gateway_db) as connection:
        row = connection.execute(
            "SELECT state FROM jobs WHERE action='overlay' ORDER BY id DESC LIMIT 1").fetchone()
    return str(row[0]) if row else ""


def test_overlay_holds_while_a_modality_sends_and_completes_after(
    gateway: OrthancProcess, workdir: Path
) -> None:
    before = reception(gateway)
    assert before["enabled"] is True
    assert before["held_calls"] == 0

    rtset = make_rt_set("RECEPTION-FIRST", n_slices=24, rows=128, columns=128, with_dose=False)
    storescu(write_datasets(rtset.ct, workdir / "ct"), gateway.dicom_port, calling="OVERLAY")
    structure = write_datasets([rtset.rtstruct], workdir / "rs")
    # Fresh series per chunk (a duplicate is no new arrival), written before the burst starts.
    chunks = [write_datasets(make_ct_series(
        patient_id=f"BURST-{n}", patient_name="Burst^Modality", study_uid=generate_uid(),
        frame_of_reference_uid=generate_uid(), n_slices=CHUNK_SLICES, rows=64, columns=64),
        workdir / f"burst-{n}") for n in range(CHUNKS)]

    stop = threading.Event()
    sent: list[int] = []
    errors: list[BaseException] = []

    def modality() -> None:
        # One storescu after another: the gaps between them are far below QuietSeconds.
        try:
            for files in chunks:
                if stop.is_set():
                    return
                storescu(files, gateway.dicom_port, calling="CTSCANNER")
                sent.append(len(files))
        except BaseException as error:  # the assertion below names it
            errors.append(error)

    burst = threading.Thread(target=modality, name="burst")
    burst.start()
    try:
        wait_until(lambda: len(sent) >= 1, 120, "the burst started")
        storescu(structure, gateway.dicom_port, calling="OVERLAY")
        # The overlay job is claimed during the burst, and its first REST call is held.
        wait_until(lambda: reception(gateway)["held_calls"] > 0, 120,
                   "a background REST call held while instances arrive")
        during = reception(gateway)
        assert during["instances_arriving"] is True, (during, sent)
        assert overlay_state(gateway) == "running"
    finally:
        stop.set()
        burst.join(300)

    # The burst has ended: the overlay catches up by itself and stores its two series.
    wait_until(lambda: overlay_state(gateway) == "done", 300, "the overlay completed")
    # "overlay-done" is written just after the job is settled: wait for it, not one read.
    events = wait_until(lambda: (e := [row["event"] for row in gateway_rows(
        gateway, kind="events", study=rtset.study_uid)]) and "overlay-done" in e and e, 30,
        "the overlay's end audited")
    assert events.count("overlay-stored") == 2 and "overlay-done" in events
    after = reception(gateway)
    assert after["held_calls"] >= during["held_calls"] > 0
    assert after["held_seconds"] > 0
    # Held for the burst, never released by the longest pause.
    assert after["pass_windows"] == 0
    wait_until(lambda: not reception(gateway)["instances_arriving"], 30, "quiet again")
    # Reception itself was never refused nor held: every storescu of the burst succeeded.
    assert errors == []
    assert gateway.json("/statistics")["CountInstances"] >= sum(sent) > 0
    # What a site's monitoring sees: the same count in Orthanc's Prometheus metrics.
    wait_until(lambda: (prometheus(gateway, "rtgw_reception_first_held_calls_total") or 0)
               >= after["held_calls"], 60, "the held calls in Prometheus")
