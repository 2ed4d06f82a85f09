"""Harvest of a remote archive: a second real Orthanc is the PACS; C-FINDs and C-MOVEs are counted
in its own log (started with --verbose, identifiers not masked)."""

from __future__ import annotations

import csv
import io
import itertools
import json
import sqlite3
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import (
    CTImageStorage,
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
)

from tests.integration.conftest import keep_logs, require_orthanc
from tests.integration.helpers import sop_uids
from tests.support.orthanc import PASSWORD, USER, OrthancProcess, free_port, storescu, wait_until
from tests.support.rtset import RtSet, make_ct_series, make_rt_set, write_datasets
from tests.support.source_pacs import SourcePacs, max_in_window, zip_sop_uids

SOURCE = "HVSOURCE"
@pytest.fixture(scope="module")
def pacs_data() -> dict[str, list[RtSet]]:
    return {
        "HVA1": [make_rt_set("HVA1", "Harvest^One", n_slices=6),
                 make_rt_set("HVA1", "Harvest^One", n_slices=5, plan_label="BOOST")],
        "HVA2": [make_rt_set("HVA2", "Harvest^Two", n_slices=4)],
        "HVB3": [make_rt_set("HVB3", "Other^Three", n_slices=4)],
    }


@pytest.fixture(scope="module")
def processes(
    workdir: Path, pacs_data: dict[str, list[RtSet]]
) -> Iterator[tuple[SourcePacs, OrthancProcess]]:
    require_orthanc()
    source = SourcePacs(workdir / "source", SOURCE)
    gateway = OrthancProcess(
        workdir / "gateway", "RTGATEWAY", plugin=True, rules="rules: []\n",
        gateway_settings={"Harvest": {"Folder": str(workdir / "harvests"), "PollSeconds": 0.05,
                                      "Threads": 3}},
    )
    source.add_modality("RTGATEWAY", gateway)
    gateway.add_modality(SOURCE, source)
    source.start()
    gateway.start()
    files = [path for sets in pacs_data.values() for n, rtset in enumerate(sets)
             for path in write_datasets(rtset.all(), workdir / "files" / f"{rtset.patient_id}-{n}")]
    storescu(files, source.dicom_port, calling="LOADER")
    yield source, gateway
    gateway.stop()
    source.stop()
    keep_logs(gateway, "harvest-gateway")
    keep_logs(source, "harvest-source")


def start_harvest(gateway: OrthancProcess, **definition: Any) -> int:
    answer = gateway.post("/rt-gateway/harvests", {"source": SOURCE, **definition})
    assert answer.status_code == 200, answer.text
    return int(answer.json()["id"])


def status(gateway: OrthancProcess, harvest_id: int) -> dict[str, Any]:
    return gateway.json(f"/rt-gateway/harvests/{harvest_id}")


def wait_done(gateway: OrthancProcess, harvest_id: int, timeout: float = 120) -> dict[str, Any]:
    return wait_until(lambda: (s := status(gateway, harvest_id))["state"] == "done" and s, timeout,
                      f"harvest {harvest_id} done")


def series_uids(rtsets: list[RtSet]) -> set[str]:
    return {str(ds.SeriesInstanceUID) for rtset in rtsets for ds in rtset.all()}


def test_invalid_definitions_are_refused_with_the_field(processes: tuple[SourcePacs, OrthancProcess]) -> None:
    _, gateway = processes
    unknown = gateway.post("/rt-gateway/harvests", {"source": "NOWHERE", "patients": ["X"]})
    assert unknown.status_code == 400 and unknown.json()["path"] == "source"
    bad_date = gateway.post("/rt-gateway/harvests",
                            {"source": SOURCE, "patients": {"StudyDate": "2020/01/01"}})
    assert bad_date.status_code == 400 and bad_date.json()["path"] == "patients.StudyDate"
    assert gateway.get("/rt-gateway/harvests/999").status_code == 404


first_harvest: list[int] = []   # the next test refreshes the harvest of the first


def test_selection_brings_exactly_its_series_once_under_the_cap(
    processes: tuple[SourcePacs, OrthancProcess], pacs_data: dict[str, list[RtSet]], workdir: Path
) -> None:
    source, gateway = processes
    mark = source.log_mark()
    cap = 60
    started = time.time()
    harvest_id = start_harvest(gateway, patients={"PatientID": "HVA*"}, max_requests_per_minute=cap,
                               concurrency=2, retry_delay_seconds=1, retry_max_delay_seconds=2)
    final = wait_done(gateway, harvest_id)
    elapsed = time.time() - started
    first_harvest.append(harvest_id)

    wanted = pacs_data["HVA1"] + pacs_data["HVA2"]
    assert gateway.sop_instance_uids() == sop_uids([ds for rtset in wanted for ds in rtset.all()])
    assert final["counts"]["series"] == {"complete": 12}
    assert final["instances"]["expected"] == final["instances"]["stored"] == 6 + 5 + 4 + 3 * 3

    # Every matching series was moved exactly once, nothing of HVB3 was asked for.
    moves = source.moves_per_series(mark)
    assert set(moves) == series_uids(wanted) and set(moves.values()) == {1}

    # The cap, counted at the source: 1 selection + 3 study C-FINDs + 12 C-MOVEs, spread out.
    times = source.request_times(mark)
    assert len(times) == 16
    assert max_in_window(times, 60.0) <= cap
    rate_per_second = (cap - 1) / 60
    assert max_in_window(times, 10.0) <= 1 + int(rate_per_second * 10) + 1
    assert elapsed >= (len(times) - 1) / rate_per_second - 1.5     # the cap did slow it down
    audit = gateway.json(f"/rt-gateway/harvests/{harvest_id}/requests")
    assert [row["kind"] for row in audit].count("C-MOVE") == 12
    gaps = [b["at_epoch"] - a["at_epoch"] for a, b in itertools.pairwise(audit)]
    assert min(gaps) >= 1 / rate_per_second - 0.05

    # One ZIP per patient, named after it, holding exactly its instances.
    folder = workdir / "harvests" / f"harvest-{harvest_id}"
    assert sorted(p.name for p in folder.glob("*.zip")) == [
        "HVA1__seriesCount8.zip", "HVA2__seriesCount4.zip"]
    for name, sets in (("HVA1__seriesCount8.zip", pacs_data["HVA1"]),
                       ("HVA2__seriesCount4.zip", pacs_data["HVA2"])):
        assert zip_sop_uids(folder / name) == sop_uids([ds for rtset in sets for ds in rtset.all()])
    assert not list(folder.glob(".*partial"))

    # The inventory: two patients, three studies, twelve series with both counts.
    answer = gateway.get(f"/rt-gateway/harvests/{harvest_id}/inventory.csv")
    assert answer.headers["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(answer.text)))
    assert Counter(row["level"] for row in rows) == {"patient": 2, "study": 3, "series": 12}
    ct = [row for row in rows if row["level"] == "series" and row["modality"] == "CT"]
    assert sorted(int(row["expected_instances"]) for row in ct) == [4, 5, 6]
    series_rows = [row for row in rows if row["level"] == "series"]
    assert all(row["expected_instances"] == row["stored_instances"] for row in series_rows)
    assert {row["zip_name"] for row in rows if row["level"] == "patient"} == {
        "HVA1__seriesCount8.zip", "HVA2__seriesCount4.zip"}
    assert (folder / "inventory.csv").read_text() == answer.text


def test_a_new_series_at_the_source_is_added_by_the_next_pass(
    processes: tuple[SourcePacs, OrthancProcess], pacs_data: dict[str, list[RtSet]], workdir: Path
) -> None:
    source, gateway = processes
    harvest_id = first_harvest[0]
    assert status(gateway, harvest_id)["state"] == "done"
    rtset = pacs_data["HVA2"][0]
    extra = make_ct_series(patient_id="HVA2", patient_name="Harvest^Two", study_uid=rtset.study_uid,
                           frame_of_reference_uid=rtset.frame_of_reference_uid, n_slices=3)
    storescu(write_datasets(extra, workdir / "files" / "extra"), source.dicom_port, calling="LOADER")
    mark = source.log_mark()

    assert gateway.post(f"/rt-gateway/harvests/{harvest_id}/refresh").status_code == 200
    final = wait_done(gateway, harvest_id)

    assert final["counts"]["series"] == {"complete": 13} and final["pass"] == 2
    assert source.moves_per_series(mark) == {str(extra[0].SeriesInstanceUID): 1}
    folder = workdir / "harvests" / f"harvest-{harvest_id}"
    assert sorted(p.name for p in folder.glob("*.zip")) == [
        "HVA1__seriesCount8.zip", "HVA2__seriesCount5.zip"]
    assert zip_sop_uids(folder / "HVA2__seriesCount5.zip") == sop_uids([*rtset.all(), *extra])
    assert gateway.post(f"/rt-gateway/harvests/{harvest_id}/resume").status_code == 409


def series_states(gateway: OrthancProcess, harvest_id: int) -> dict[str, str]:
    with sqlite3.connect(f"file:{gateway.gateway_db}?mode=ro", uri=True) as db:
        return dict(db.execute("SELECT series_uid, state FROM harvest_items WHERE harvest_id=? AND "
                               "level='series'", (harvest_id,)).fetchall())


def test_a_killed_gateway_resumes_without_moving_a_complete_series_twice(
    processes: tuple[SourcePacs, OrthancProcess], pacs_data: dict[str, list[RtSet]]
) -> None:
    source, gateway = processes
    gateway.reset_storage()
    mark = source.log_mark()
    harvest_id = start_harvest(gateway, patients=["HVA1", "HVA2"], max_requests_per_minute=100,
                               concurrency=2, retry_delay_seconds=1, retry_max_delay_seconds=2)
    wait_until(lambda: status(gateway, harvest_id)["counts"].get("series", {}).get("complete", 0) >= 4,
               90, "four series complete")
    gateway.kill9()
    before = series_states(gateway, harvest_id)
    complete_before = {uid for uid, state in before.items() if state == "complete"}
    assert 4 <= len(complete_before) < 13

    gateway.start()
    final = wait_done(gateway, harvest_id)

    assert final["counts"]["series"] == {"complete": 13}
    moves = source.moves_per_series(mark)
    assert all(moves[uid] == 1 for uid in complete_before)
    in_flight = {uid for uid, state in before.items() if state == "moving"}
    assert {uid for uid, n in moves.items() if n > 1} <= in_flight
    # every series of the two patients was moved, the ones found after the restart included
    after = series_states(gateway, harvest_id)
    assert set(moves) == set(after) and len(after) == 13
    assert series_uids(pacs_data["HVA1"] + pacs_data["HVA2"]) < set(after)
    assert sum(moves.values()) == final["moves"]


def test_a_source_down_mid_harvest_is_waited_for(
    processes: tuple[SourcePacs, OrthancProcess], pacs_data: dict[str, list[RtSet]]
) -> None:
    source, gateway = processes
    gateway.reset_storage()
    harvest_id = start_harvest(gateway, patients=["HVA1"], max_requests_per_minute=100, concurrency=1,
                               retry_delay_seconds=0.5, retry_max_delay_seconds=1, max_attempts=100)
    # Paused: what was in flight ends, nothing new starts until resumed.
    assert gateway.post(f"/rt-gateway/harvests/{harvest_id}/pause").json()["state"] == "paused"
    time.sleep(1.5)
    paused_moves = status(gateway, harvest_id)["moves"]
    time.sleep(1.5)
    assert status(gateway, harvest_id)["moves"] == paused_moves
    assert gateway.post(f"/rt-gateway/harvests/{harvest_id}/resume").json()["state"] == "running"
    wait_until(lambda: status(gateway, harvest_id)["counts"].get("series", {}).get("complete", 0) >= 2,
               90, "two series complete")
    source.stop()
    # Down until the harvest has met the outage (a request answered by an error), not for a time.
    wait_until(lambda: any(row["outcome"] == "error" for row in
                           gateway.json(f"/rt-gateway/harvests/{harvest_id}/requests")),
               60, "a request failed while the source is down")
    source.start()
    final = wait_done(gateway, harvest_id)

    assert final["counts"]["series"] == {"complete": 8}
    assert gateway.sop_instance_uids() == sop_uids([ds for s in pacs_data["HVA1"] for ds in s.all()])
    audit = gateway.json(f"/rt-gateway/harvests/{harvest_id}/requests")
    assert any(row["outcome"] == "error" for row in audit)   # the outage was met, then waited out


class ShortPacs:
    """A PACS whose C-FIND announces more instances than its C-MOVE delivers (pynetdicom)."""

    def __init__(self, gateway: OrthancProcess, announced: int, delivered: int) -> None:
        self.port = free_port()
        self.gateway = gateway
        self.slices = make_ct_series(patient_id="HVSHORT", patient_name="Short^Series",
                                     study_uid=pydicom.uid.generate_uid(),
                                     frame_of_reference_uid=pydicom.uid.generate_uid(), n_slices=announced)
        self.delivered = delivered
        self.moves = 0
        ae = AE(ae_title="SHORTPACS")
        for context in (PatientRootQueryRetrieveInformationModelFind,
                        StudyRootQueryRetrieveInformationModelFind,
                        PatientRootQueryRetrieveInformationModelMove,
                        StudyRootQueryRetrieveInformationModelMove):
            ae.add_supported_context(context)
        ae.add_requested_context(CTImageStorage)
        self.server = ae.start_server(("127.0.0.1", self.port), block=False, evt_handlers=[
            (evt.EVT_C_FIND, self._find), (evt.EVT_C_MOVE, self._move)])

    def _find(self, event: evt.Event) -> Iterator[tuple[int, Dataset | None]]:
        first = self.slices[0]
        answer = Dataset()
        answer.QueryRetrieveLevel = event.identifier.QueryRetrieveLevel
        answer.PatientID, answer.StudyInstanceUID = first.PatientID, first.StudyInstanceUID
        if answer.QueryRetrieveLevel == "SERIES":
            answer.SeriesInstanceUID, answer.Modality = first.SeriesInstanceUID, "CT"
            answer.NumberOfSeriesRelatedInstances = str(len(self.slices))
        yield 0xFF00, answer

    def _move(self, event: evt.Event) -> Iterator[Any]:
        self.moves += 1
        yield "127.0.0.1", self.gateway.dicom_port
        yield self.delivered
        for dataset in self.slices[: self.delivered]:
            yield 0xFF00, dataset

    def close(self) -> None:
        self.server.shutdown()


def test_a_series_that_stays_short_is_reported_incomplete_with_both_counts(
    processes: tuple[SourcePacs, OrthancProcess]
) -> None:
    _, gateway = processes
    pacs = ShortPacs(gateway, announced=4, delivered=2)
    try:
        put = requests.put(f"{gateway.url}/modalities/SHORTPACS", auth=(USER, PASSWORD), timeout=30,
                           data=json.dumps(["SHORTPACS", "127.0.0.1", pacs.port]))
        assert put.ok, put.text
        answer = gateway.post("/rt-gateway/harvests", {
            "source": "SHORTPACS", "patients": ["HVSHORT"], "max_attempts": 2,
            "retry_delay_seconds": 0.2, "retry_max_delay_seconds": 0.2})
        assert answer.status_code == 200, answer.text
        final = wait_done(gateway, answer.json()["id"], timeout=60)
    finally:
        pacs.close()
    assert final["counts"]["series"] == {"incomplete": 1}
    assert pacs.moves == 2                      # retried once, then given up
    rows = list(csv.DictReader(io.StringIO(
        gateway.get(f"/rt-gateway/harvests/{final['id']}/inventory.csv").text)))
    series = next(row for row in rows if row["level"] == "series")
    counts = (series["state"], series["expected_instances"], series["stored_instances"])
    assert counts == ("incomplete", "4", "2")
    assert "2 of 4 instance(s) stored" in series["last_error"]
    assert final["zips"] == []                  # nothing complete: no ZIP



RULES_HARVEST = """\
rules: []
harvests:
  - name: rules-hva2
    source: HVSOURCE
    patients: [HVA2]
    modalities: %s
    max_requests_per_minute: 600
    retry_delay_seconds: 1
    retry_max_delay_seconds: 2
"""


def harvests_named(gateway: OrthancProcess, name: str) -> list[dict[str, Any]]:
    return [h for h in gateway.json("/rt-gateway/harvests") if h["name"] == name]


def test_a_harvest_in_the_rules_file_runs_at_start_and_a_reload_does_not_start_it_again(
    processes: tuple[SourcePacs, OrthancProcess], pacs_data: dict[str, list[RtSet]]
) -> None:
    source, gateway = processes
    gateway.reset_storage()
    gateway.stop()
    gateway.rules_path.write_text(RULES_HARVEST % "[]")
    mark = source.log_mark()
    gateway.start()

    (started,) = wait_until(lambda: harvests_named(gateway, "rules-hva2"), 30, "the rules harvest")
    final = wait_done(gateway, started["id"])
    states = series_states(gateway, started["id"])
    assert set(states.values()) == {"complete"} and series_uids(pacs_data["HVA2"]) <= set(states)
    moves = source.moves_per_series(mark)
    assert set(moves) == set(states) and set(moves.values()) == {1}

    # The same file again: nothing new, not a single request to the source.
    mark = source.log_mark()
    reload = gateway.post("/rt-gateway/rules/reload")
    assert reload.status_code == 200, reload.text
    time.sleep(3)
    assert source.request_times(mark) == []
    (again,) = harvests_named(gateway, "rules-hva2")
    assert again["id"] == final["id"] and again["state"] == "done" and again["moves"] == final["moves"]

    # A broken harvest refuses the whole file; the rules in force stay.
    gateway.rules_path.write_text(RULES_HARVEST.replace("[HVA2]", "{StudyDate: 2020/01/01}") % "[]")
    refused = gateway.post("/rt-gateway/rules/reload")
    assert refused.status_code == 400 and refused.json()["path"] == "harvests[0].patients.StudyDate"
    assert refused.json()["rules_in_force"] == reload.json()["sha256"]

    # A changed definition is a new version: it walks again but moves no series stored whole.
    mark = source.log_mark()
    gateway.rules_path.write_text(RULES_HARVEST % "[CT]")
    assert gateway.post("/rt-gateway/rules/reload").status_code == 200
    old, new = wait_until(lambda: len(h := harvests_named(gateway, "rules-hva2")) == 2 and h, 30,
                          "a second version")
    assert old["id"] == final["id"] and old["state"] == "done"
    newest = wait_done(gateway, new["id"])
    assert newest["definition"]["modalities"] == ["CT"]
    assert newest["counts"]["series"]["complete"] >= 1 and newest["moves"] == 0
    assert source.moves_per_series(mark) == Counter()
    gateway.rules_path.write_text("rules: []\n")
    assert gateway.post("/rt-gateway/rules/reload").status_code == 200
