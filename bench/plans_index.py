"""bench/plans_index: what the RT index and the plan metrics cost. Prints JSON (and writes
bench/results/plans_index.json).

- index_ingest: N CT slices (512x512) sent with storescu to two gateways started in the same run,
  one with the index (RtGateway.Index) and one without; time from the first byte sent until every
  slice is described by the intake, and with the index until every slice has its DICOMimages row.
  The difference divided by N is the index update cost per stored instance as seen end to end.
- index_put: the same cost in-process (read a file, parse the header, write the four levels).
- dvh: plan metrics + DVH of a 200-slice CT with 10 structures and a 2.5 mm dose grid.
- query: Conquest-style queries over an index of --rows image rows (default 1,000,000).
Ratios and orders of magnitude are what to read: the machine is shared and absolute seconds move.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import sys
import tempfile
import time
from io import BytesIO
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pydicom import dcmread
from pydicom.uid import generate_uid

from orthanc_plugin.index.model import DEFAULT_LAYOUT, TABLES, all_columns
from orthanc_plugin.index.query import run_query
from orthanc_plugin.index.store import IndexStore
from orthanc_plugin.plans.dvh_source import bundle_dvhs
from tests.support.orthanc import OrthancProcess, storescu, wait_until
from tests.support.rtset import make_ct_series, make_rt_set, write_datasets

NO_RULES = "rules: []\n"


def _slices(folder: Path, count: int, size: int) -> list[Path]:
    series = make_ct_series(
        patient_id=f"BENCH-{generate_uid()[-8:]}", patient_name="Bench^Index",
        study_uid=generate_uid(), frame_of_reference_uid=generate_uid(), n_slices=count,
        rows=size, columns=size, origin=(-size / 2, -size / 2, 0.0),
    )
    return write_datasets(series, folder)


def bench_index_ingest(work: Path, count: int, size: int) -> dict[str, float]:
    with_index = OrthancProcess(work / "with", "WITHIDX", plugin=True, rules=NO_RULES)
    without = OrthancProcess(work / "without", "NOIDX", plugin=True, rules=NO_RULES,
                             gateway_settings={"Index": {"Enabled": False}})
    results: dict[str, float] = {}
    for process in (with_index, without):
        process.start()
    try:
        for name, process in (("without_index", without), ("with_index", with_index)):
            files = _slices(work / f"files-{name}", count, size)
            start = time.perf_counter()
            storescu(files, process.dicom_port, calling="BENCH")
            results[f"{name}_storescu_s"] = time.perf_counter() - start

            def described(p: OrthancProcess = process) -> bool:
                rows = p.get("/rt-gateway/audit", params={"kind": "received", "status": "ready",
                                                         "limit": str(count + 10)}).json()
                return len(rows) >= count

            wait_until(described, 600, f"{name}: all described", interval=0.05)
            results[f"{name}_described_s"] = time.perf_counter() - start
            if name == "with_index":
                def indexed(p: OrthancProcess = process) -> bool:
                    answer = p.post("/rt-gateway/index/query",
                                          {"sql": "select count(*) as n from DICOMimages"})
                    return bool(answer.ok and answer.json()["rows"][0]["n"] >= count)

                wait_until(indexed, 600, "all indexed", interval=0.05)
                results["with_index_indexed_s"] = time.perf_counter() - start
    finally:
        for process in (with_index, without):
            process.stop()
    results["index_cost_per_instance_ms"] = (
        (results["with_index_indexed_s"] - results["without_index_described_s"]) / count * 1000)
    return results


def bench_index_put(work: Path, count: int, size: int) -> dict[str, float]:
    files = _slices(work / "put", count, size)
    store = IndexStore(work / "put.sqlite", DEFAULT_LAYOUT)
    start = time.perf_counter()
    for number, path in enumerate(files):
        data = path.read_bytes()
        store.put(dcmread(BytesIO(data), stop_before_pixels=True), f"id-{number}", None)
    elapsed = time.perf_counter() - start
    return {"instances": count, "total_s": elapsed, "per_instance_ms": elapsed / count * 1000}


def _ten_structures(rtstruct: object) -> object:
    """BODY, PTV and Rectum plus seven copies under other names: ten structures, the copies of
    BODY being the costliest (largest) case."""
    ds = copy.deepcopy(rtstruct)
    rois, contours = list(ds.StructureSetROISequence), list(ds.ROIContourSequence)
    for extra in range(7):
        source = extra % 3
        roi = copy.deepcopy(rois[source])
        roi.ROINumber = 10 + extra
        roi.ROIName = f"Copy{extra}_{rois[source].ROIName}"
        contour = copy.deepcopy(contours[source])
        contour.ReferencedROINumber = 10 + extra
        rois.append(roi)
        contours.append(contour)
    ds.StructureSetROISequence, ds.ROIContourSequence = rois, contours
    return ds


def bench_dvh(slices: int, size: int) -> dict[str, float]:
    start = time.perf_counter()
    rtset = make_rt_set("BENCH-DVH", n_slices=slices, rows=size, columns=size)
    built = time.perf_counter() - start
    assert rtset.rtdose is not None
    rtstruct = _ten_structures(rtset.rtstruct)
    start = time.perf_counter()
    result = bundle_dvhs(rtstruct, rtset.rtdose, rtset.rtplan)  # type: ignore[arg-type]
    elapsed = time.perf_counter() - start
    grid = rtset.rtdose
    return {
        "ct_slices": slices, "structures": len(result["computed"]),
        "dose_grid": f"{grid.Columns}x{grid.Rows}x{grid.NumberOfFrames} at 2.5 mm",
        "dvh_s": elapsed, "data_build_s": built,
        "ptv_D95_gy": next(r["D95"] for r in result["computed"] if r["roi"] == "PTV"),
    }


def bench_query(work: Path, rows: int) -> dict[str, float]:
    path = work / "million.sqlite"
    store = IndexStore(path, DEFAULT_LAYOUT)
    images_per_series = 200
    series_count = rows // images_per_series
    image_columns = all_columns(DEFAULT_LAYOUT, "image")
    series_columns = all_columns(DEFAULT_LAYOUT, "series")
    start = time.perf_counter()
    with store.db.transaction() as connection:
        for s in range(series_count):
            series_uid = f"1.2.826.0.1.{s}"
            patient = f"P{s // 4:06d}"
            modality = ("CT", "RTSTRUCT", "RTPLAN", "RTDOSE")[s % 4]
            values = dict.fromkeys(series_columns, None)
            values.update(SeriesInst=series_uid, Modality=modality, SeriesPat=patient,
                          StudyInsta=f"1.2.826.1.{s // 4}")
            connection.execute(
                f"INSERT INTO {TABLES['series']}({','.join(values)}) "
                f"VALUES({','.join('?' * len(values))})", list(values.values()))
            batch = []
            for i in range(images_per_series):
                sop = f"{series_uid}.{i}"
                row = dict.fromkeys(image_columns, None)
                row.update(SOPInstanc=sop, SeriesInst=series_uid, ImagePat=patient,
                           ImageNumbe=str(i + 1), ObjectFile=hashlib.md5(sop.encode()).hexdigest())
                batch.append(list(row.values()))
            connection.executemany(
                f"INSERT INTO {TABLES['image']}({','.join(image_columns)}) "
                f"VALUES({','.join('?' * len(image_columns))})", batch)
    filled = time.perf_counter() - start
    queries = {
        "rtplan_series": "select seriesinst from dicomseries where modality='RTPLAN'",
        "images_of_one_series": "select SOPInstanc, ObjectFile from DICOMimages "
                                "where SeriesInst='1.2.826.0.1.2002' order by ImageNumbe",
        "images_of_rtplan_series_join": "select count(*) from dicomimages i join dicomseries s "
                                        "on s.seriesinst=i.seriesinst where s.modality='RTPLAN'",
        "images_of_one_patient_full_scan": "select count(*) from dicomimages where imagepat='P000123'",
    }
    timings: dict[str, float] = {"image_rows": series_count * images_per_series, "fill_s": filled}
    for name, sql in queries.items():
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            result = run_query(path, sql, max_rows=1_000_000)
            best = min(best, time.perf_counter() - start)
        timings[f"{name}_s"] = best
        timings[f"{name}_rows"] = len(result.rows)
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--skip-ingest", action="store_true")
    arguments = parser.parse_args()
    results: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        results["index_put"] = bench_index_put(work, arguments.slices, arguments.size)
        if not arguments.skip_ingest:
            results["index_ingest"] = bench_index_ingest(work, arguments.slices, arguments.size)
        results["dvh"] = bench_dvh(arguments.slices, arguments.size)
        results["query"] = bench_query(work, arguments.rows)
    text = json.dumps(results, indent=2)
    print(text)
    out = Path(__file__).resolve().parent / "results" / "plans_index.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(text + "\n")


if __name__ == "__main__":
    main()
