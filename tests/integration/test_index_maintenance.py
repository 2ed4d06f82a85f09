"""Index maintenance end to end: one gateway and one destination Orthanc for the module.

The tests run in file order and share the stored sets; deletion comes last.
"""

from __future__ import annotations

import csv
import io
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import keep_logs, require_orthanc
from tests.integration.helpers import gateway_rows, sop_uids
from tests.support.orthanc import OrthancProcess, storescu, wait_until
from tests.support.rtset import RtSet, make_rt_set, write_datasets

COUNT_IMAGES = "select count(*) as n from DICOMimages"
INDEX_TABLES = ("DICOMpatients", "DICOMstudies", "DICOMseries", "DICOMimages", "RTstructs", "RTrois",
                "RTplans", "RTbeams", "RTdoses", "RTreferences")


@pytest.fixture(scope="module")
def destination(workdir: Path) -> Iterator[OrthancProcess]:
    require_orthanc()
    peer = OrthancProcess(workdir / "dest", "DEST")
    peer.start()
    yield peer
    peer.stop()


@pytest.fixture(scope="module")
def copy_root(workdir: Path) -> Path:
    return workdir / "exports" / "copies"


@pytest.fixture(scope="module")
def gateway(workdir: Path, destination: OrthancProcess, copy_root: Path) -> Iterator[OrthancProcess]:
    process = OrthancProcess(workdir / "gateway", "RTGATEWAY", plugin=True, rules="rules: []\n",
                             modalities={"DEST": destination},
                             gateway_settings={"Index": {"CopyRoot": str(copy_root)}})
    process.start()
    yield process
    process.stop()
    keep_logs(process, "index-maintenance-gateway")


@pytest.fixture(scope="module")
def stored(gateway: OrthancProcess, workdir: Path) -> dict[str, RtSet]:
    sets = {
        "MAINT-A": make_rt_set("MAINT-A", plan_label="HIGH", n_slices=4, rows=32, columns=32,
                               prescription_gy=60.0),
        "../../etc": make_rt_set("../../etc", plan_label="LOW", n_slices=3, rows=32, columns=32,
                                 prescription_gy=30.0),
        "A/B": make_rt_set("A/B", plan_label="NODOSE", n_slices=3, rows=32, columns=32, with_dose=False),
    }
    everything = [ds for rtset in sets.values() for ds in rtset.all()]
    storescu(write_datasets(everything, workdir / "sent"), gateway.dicom_port, calling="PLANNER",
             called="RTGATEWAY")
    wait_until(lambda: image_count(gateway) == len(everything), 90, "all instances indexed")
    return sets


def query(gateway: OrthancProcess, sql: str) -> list[dict[str, Any]]:
    answer = gateway.post("/rt-gateway/index/query", {"sql": sql})
    answer.raise_for_status()
    return list(answer.json()["rows"])


def image_count(gateway: OrthancProcess) -> int:
    return int(query(gateway, COUNT_IMAGES)[0]["n"])


def rebuild(gateway: OrthancProcess, scope: Any, limit: int) -> list[dict[str, Any]]:
    """Every batch answer until done."""
    answers: list[dict[str, Any]] = []
    after = 0
    while True:
        answer = gateway.post("/rt-gateway/index/rebuild", {"scope": scope, "after": after, "limit": limit})
        assert answer.status_code == 200, answer.text
        answers.append(answer.json())
        if answers[-1]["done"]:
            return answers
        after = answers[-1]["next"]
        assert len(answers) < 100


def total(answers: list[dict[str, Any]], key: str) -> int:
    return sum(answer[key] for answer in answers)


def orthanc_series(peer: OrthancProcess, uid: str) -> list[str]:
    return list(peer.post("/tools/find", {"Level": "Series", "Query": {"SeriesInstanceUID": uid}}).json())


def test_rebuild_after_the_index_file_was_emptied_brings_the_rows_back(
    gateway: OrthancProcess, stored: dict[str, RtSet]
) -> None:
    count = sum(len(rtset.all()) for rtset in stored.values())
    plans_sql = "select SOPInstanc, PrescriptionGy from RTplans order by SOPInstanc"
    plans_before = query(gateway, plans_sql)
    index_file = gateway.gateway_db.parent / "conquest.sqlite"
    with sqlite3.connect(index_file) as outside:
        for table in INDEX_TABLES:
            outside.execute(f"DELETE FROM {table}")
    assert image_count(gateway) == 0

    missing = rebuild(gateway, "missing", limit=5)
    assert len(missing) == -(-count // 5)   # bounded batches of 5
    assert total(missing, "indexed") == count and total(missing, "failed") == 0
    assert image_count(gateway) == count
    assert query(gateway, plans_sql) == plans_before
    again = rebuild(gateway, "missing", limit=50)
    assert total(again, "indexed") == 0 and total(again, "already_indexed") == count

    full = rebuild(gateway, "all", limit=7)
    assert total(full, "indexed") == count and image_count(gateway) == count
    one = rebuild(gateway, {"patient": "MAINT-A"}, limit=100)
    assert total(one, "indexed") == len(stored["MAINT-A"].all())
    assert one[-1]["total"] == total(one, "examined")

    events = [row for row in gateway_rows(gateway, kind="events") if row["event"] == "index-rebuild"]
    assert any(row["status"] == "done" and "patient MAINT-A" in row["detail"] for row in events)
    bad = gateway.post("/rt-gateway/index/rebuild", {"scope": "everything"})
    assert bad.status_code == 400 and "scope" in bad.json()["error"]


def test_max_dose_gt_filters_plans_as_json_and_csv(gateway: OrthancProcess, stored: dict[str, RtSet]) -> None:
    wait_until(lambda: len(gateway.json("/rt-gateway/plans")) == 3, 60, "three plans listed")
    high = gateway.json("/rt-gateway/plans", params={"max_dose_gt": "45"})
    assert [plan["label"] for plan in high] == ["HIGH"]
    assert abs(high[0]["max_dose_gy"] - 61.8) < 1e-3
    both = gateway.json("/rt-gateway/plans", params={"max_dose_gt": "20"})
    assert sorted(plan["label"] for plan in both) == ["HIGH", "LOW"]   # no dose: no max, not listed
    answer = gateway.get("/rt-gateway/plans", params={"max_dose_gt": "45", "format": "csv"})
    assert answer.headers["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(answer.text)))
    assert [row["label"] for row in rows] == ["HIGH"] and abs(float(rows[0]["max_dose_gy"]) - 61.8) < 1e-3
    bad = gateway.get("/rt-gateway/plans", params={"max_dose_gt": "lots"})
    assert bad.status_code == 400 and "max_dose_gt" in bad.json()["error"]


def test_send_by_patient_delivers_the_series_to_the_destination(
    gateway: OrthancProcess, destination: OrthancProcess, stored: dict[str, RtSet]
) -> None:
    rtset = stored["MAINT-A"]
    answer = gateway.post("/rt-gateway/index/series/send",
                          {"select": {"patient": "MAINT-A"}, "targets": ["DEST"]})
    assert answer.status_code == 200, answer.text
    jobs = answer.json()["jobs"]
    assert len(jobs) == 4 and all(job["id"] for job in jobs)
    assert sum(job["instances"] for job in jobs) == len(rtset.all())
    wait_until(lambda: sop_uids(rtset.all()) <= destination.sop_instance_uids(), 90,
               "patient MAINT-A at DEST")
    assert not any(str(ds.SOPInstanceUID) in destination.sop_instance_uids() for ds in stored["A/B"].all())
    wait_until(lambda: all(gateway.json(f"/rt-gateway/jobs/{job['id']}")["state"] == "done" for job in jobs),
               60, "send jobs done")
    events = [row for row in gateway_rows(gateway, kind="events") if row["event"] == "index-series-send"]
    assert len(events) == 4 and {row["target"] for row in events} == {"DEST"}
    unknown = gateway.post("/rt-gateway/index/series/send",
                           {"select": {"patient": "MAINT-A"}, "targets": ["NOWHERE"]})
    assert unknown.status_code == 400 and "NOWHERE" in unknown.json()["error"]


def test_copy_writes_one_safe_folder_per_patient_and_series(
    gateway: OrthancProcess, stored: dict[str, RtSet], copy_root: Path
) -> None:
    for patient in ("../../etc", "A/B"):
        answer = gateway.post("/rt-gateway/index/series/copy",
                              {"select": {"patient": patient}, "folder": "export1"})
        assert answer.status_code == 200, answer.text
    files = sorted(copy_root.rglob("*.dcm"))
    expected = [*stored["../../etc"].all(), *stored["A/B"].all()]
    assert len(files) == len(expected)
    root = copy_root.resolve()
    assert all(path.resolve().is_relative_to(root) for path in files)
    relative = [path.relative_to(copy_root).parts for path in files]
    assert all(len(parts) == 4 and parts[0] == "export1" for parts in relative)
    patient_folders = {parts[1] for parts in relative}
    assert len(patient_folders) == 2 and all(".." not in name and "/" not in name for name in patient_folders)
    series = {str(ds.SeriesInstanceUID) for ds in expected}
    assert {parts[2] for parts in relative} == series
    assert {path.name for path in files} == {f"{ds.SOPInstanceUID}.dcm" for ds in expected}
    assert not (copy_root.parent.parent / "etc").exists() and not (copy_root / "etc").exists()
    by_query = gateway.post("/rt-gateway/index/series/copy", {
        "select": {"query": "select SeriesInst from DICOMseries "
                            "where modality='RTPLAN' and SeriesPat='MAINT-A'"},
        "folder": "plans"}).json()["copied"]
    assert len(by_query) == 1 and by_query[0]["files"] == 1
    bad = gateway.post("/rt-gateway/index/series/copy", {"select": {"patient": "A/B"}, "folder": "../out"})
    assert bad.status_code == 400 and "folder" in bad.json()["error"]
    events = [row for row in gateway_rows(gateway, kind="events") if row["event"] == "index-series-copy"]
    assert len(events) == 4 + 3 + 1 and all(row["status"] == "copied" for row in events)


def test_delete_removes_the_series_from_orthanc_and_the_index(
    gateway: OrthancProcess, stored: dict[str, RtSet]
) -> None:
    ct_series = str(stored["../../etc"].ct[0].SeriesInstanceUID)
    plan_series = str(stored["../../etc"].rtplan.SeriesInstanceUID)
    answer = gateway.post("/rt-gateway/index/series/delete",
                          {"select": {"series": [ct_series, plan_series, "1.2.3.404"]}})
    assert answer.status_code == 200, answer.text
    assert [item["instances"] for item in answer.json()["deleted"]] == [3, 1]
    assert answer.json()["not_in_orthanc"] == ["1.2.3.404"]
    assert orthanc_series(gateway, ct_series) == [] and orthanc_series(gateway, plan_series) == []
    left = query(gateway, "select SeriesInst from DICOMseries where SeriesPat='../../etc'")
    assert {row["SeriesInst"] for row in left} == {str(stored["../../etc"].rtstruct.SeriesInstanceUID),
                                                   str(stored["../../etc"].rtdose.SeriesInstanceUID)}
    assert query(gateway, f"select * from RTplans where SeriesInst='{plan_series}'") == []
    events = [row for row in gateway_rows(gateway, kind="events") if row["event"] == "index-series-delete"]
    assert len(events) == 2 and all(row["status"] == "deleted" for row in events)
    # The follower sees Orthanc's deletions too and does not bring the rows back.
    missing = rebuild(gateway, "missing", limit=100)
    assert total(missing, "indexed") == 0
    assert image_count(gateway) == sum(len(s.all()) for s in stored.values()) - 4
