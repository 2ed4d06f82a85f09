"""bench/isolation: does the gateway's work slow Orthanc's receiving? Prints JSON.

In the same run, on the same gateway:
- ingest_idle: storescu of N CT slices (512x512) into the gateway while it has nothing to do;
- ingest_busy: the same while an overlay of a 160-slice 512x512 study is built on all three planes
  (started just before, in a worker process);
and, on two gateways that differ only in `Workers`:
- overlay_workers_1 / overlay_workers_2: time to build K axial overlay series (40 slices each)
  queued at once.
Ratios are what to read: ingest_busy / ingest_idle (goal <= 1.1) and the overlay throughput with
2 job workers against 1 (goal >= 1.7 on 2 cores). Each is the median of --rounds rounds.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pydicom.uid import generate_uid

from tests.support.orthanc import OrthancProcess, storescu
from tests.support.rtset import make_ct_series, make_rt_set, write_datasets

RULES = """
rules:
  - name: overlay
    on: instance
    match: {calling_aet: OVERLAY, modality: RTSTRUCT}
    actions:
      - overlay: {planes: [axial, coronal, sagittal], forward: VIEWER}
  - name: overlay for throughput
    on: instance
    match: {calling_aet: THROUGHPUT, modality: RTSTRUCT}
    actions:
      - overlay: {planes: [axial]}
"""


def overlay_jobs(gateway: OrthancProcess, state: str) -> int:
    with sqlite3.connect(gateway.gateway_db) as connection:
        return int(connection.execute(
            "SELECT COUNT(*) FROM jobs WHERE action='overlay' AND state=?", (state,)).fetchone()[0])


def wait(predicate, timeout: float = 600) -> None:  # type: ignore[no-untyped-def]
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise TimeoutError("bench condition not reached")


def ingest(files: list[Path], gateway: OrthancProcess) -> float:
    start = time.perf_counter()
    storescu(files, gateway.dicom_port, calling="NOBODY", called="RTGATEWAY")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--overlay-slices", type=int, default=160)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--overlays", type=int, default=4)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="rtgw-bench-isolation-"))
    viewer = OrthancProcess(work / "viewer", "VIEWER")
    gateways = {
        workers: OrthancProcess(work / f"gw-{workers}", "RTGATEWAY", plugin=True, rules=RULES,
                                modalities={"VIEWER": viewer},
                                gateway_settings={"Workers": workers})
        for workers in (1, 2)
    }
    times: dict[str, list[float]] = {"ingest_idle": [], "ingest_busy": [],
                                     "overlay_workers_1": [], "overlay_workers_2": []}
    busy_overlay_running: list[bool] = []
    try:
        viewer.start()
        for gateway in gateways.values():
            gateway.start()
        main_gateway = gateways[2]
        for round_number in range(args.rounds):
            folder = work / f"round-{round_number}"
            series = make_ct_series(
                patient_id=f"BENCH-{generate_uid()[-8:]}", patient_name="Bench^Isolation",
                study_uid=generate_uid(), frame_of_reference_uid=generate_uid(),
                n_slices=args.slices, rows=args.size, columns=args.size)
            idle_files = write_datasets(series, folder / "idle")
            main_gateway.reset_storage()
            times["ingest_idle"].append(ingest(idle_files, main_gateway))

            rtset = make_rt_set(f"BENCH-OV-{round_number}", n_slices=args.overlay_slices,
                                rows=args.size, columns=args.size, with_dose=False)
            storescu(write_datasets(rtset.ct, folder / "ct"), main_gateway.dicom_port,
                     calling="OVERLAY")
            done_before = overlay_jobs(main_gateway, "done")
            storescu(write_datasets([rtset.rtstruct], folder / "rs"), main_gateway.dicom_port,
                     calling="OVERLAY")
            wait(lambda gw=main_gateway: overlay_jobs(gw, "running") > 0)
            busy_files = write_datasets(
                make_ct_series(patient_id=f"BENCH-{generate_uid()[-8:]}",
                               patient_name="Bench^Isolation", study_uid=generate_uid(),
                               frame_of_reference_uid=generate_uid(), n_slices=args.slices,
                               rows=args.size, columns=args.size), folder / "busy")
            times["ingest_busy"].append(ingest(busy_files, main_gateway))
            # The ingest only counts as "busy" if the overlay was still building at its end.
            busy_overlay_running.append(overlay_jobs(main_gateway, "running") > 0)
            wait(lambda gw=main_gateway, n=done_before: overlay_jobs(gw, "done") > n)

            for workers, gateway in gateways.items():
                sets = [make_rt_set(f"BENCH-TP-{workers}-{round_number}-{k}", n_slices=40,
                                    rows=args.size, columns=args.size, with_dose=False)
                        for k in range(args.overlays)]
                for k, rt in enumerate(sets):
                    storescu(write_datasets(rt.ct, folder / f"tp{workers}-{k}"),
                             gateway.dicom_port, calling="THROUGHPUT")
                done = overlay_jobs(gateway, "done")
                structures = write_datasets([rt.rtstruct for rt in sets], folder / f"rs{workers}")
                start = time.perf_counter()
                storescu(structures, gateway.dicom_port, calling="THROUGHPUT")
                wait(lambda gw=gateway, n=done + args.overlays: overlay_jobs(gw, "done") >= n)
                times[f"overlay_workers_{workers}"].append(time.perf_counter() - start)
            shutil.rmtree(folder, ignore_errors=True)
    finally:
        for process in [*gateways.values(), viewer]:
            process.stop()
    median = {key: statistics.median(values) for key, values in times.items()}
    result = {
        "benchmark": "isolation",
        "slices": args.slices,
        "size": f"{args.size}x{args.size}",
        "overlay_slices": args.overlay_slices,
        "rounds": args.rounds,
        "seconds_median": {k: round(v, 3) for k, v in median.items()},
        "seconds_all": {k: [round(x, 3) for x in v] for k, v in times.items()},
        "overlay_still_building_when_busy_ingest_ended": busy_overlay_running,
        "ratio_ingest_busy_to_idle": round(median["ingest_busy"] / median["ingest_idle"], 3),
        "ratio_overlay_throughput_2_to_1_workers": round(
            median["overlay_workers_1"] / median["overlay_workers_2"], 3),
        "goals": {"ingest_busy_to_idle": 1.1, "overlay_throughput_2_to_1_workers": 1.7},
    }
    print(json.dumps(result, indent=2))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
