"""bench/harvest: a harvest through the gateway against DCMTK's movescu of the same series. Prints JSON.

A source Orthanc holds one patient with --series CT series of --slices slices each. In each of
--rounds rounds (the order of the two alternating from round to round):
- movescu: every series C-MOVEd, one movescu after the other, straight into a plain Orthanc
  (the baseline: what the link and the source allow without the gateway);
- harvest: the gateway's harvest of that patient (C-FIND study, C-FIND series, one C-MOVE a series,
  slice validation, ZIP), with a high cap (--cap), into an emptied gateway, until the harvest is done.
Then once, capped: the same harvest again into an emptied gateway under a low cap (--low-cap):
requests a minute achieved against the cap and the most in any 60 s window, from the gateway's
request audit.
Ratios are what to read: the machine is shared and absolute seconds move with its load. The ratio
of each round (the two measured seconds apart) and its median and quartiles say whether a goal is
decided.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pydicom.uid import generate_uid

from bench.relay import quartiles
from tests.support.orthanc import OrthancProcess, storescu
from tests.support.rtset import make_ct_series, write_datasets


def load_source(source: OrthancProcess, folder: Path, series: int, slices: int,
                size: int) -> tuple[str, str, list[str]]:
    patient_id, study_uid = f"BENCH-{generate_uid()[-8:]}", generate_uid()
    series_uids, files = [], []
    for number in range(series):
        datasets = make_ct_series(patient_id=patient_id, patient_name="Bench^Harvest",
                                  study_uid=study_uid, frame_of_reference_uid=generate_uid(),
                                  n_slices=slices, rows=size, columns=size)
        series_uids.append(str(datasets[0].SeriesInstanceUID))
        files += write_datasets(datasets, folder / f"series-{number}")
    storescu(files, source.dicom_port, calling="LOADER")
    return patient_id, study_uid, series_uids


def movescu_all(source: OrthancProcess, plain: OrthancProcess, study_uid: str, series_uids: list[str],
                expected: int) -> float:
    env = dict(os.environ, TCP_NODELAY="1")
    start = time.perf_counter()
    for uid in series_uids:
        subprocess.run(
            ["movescu", "-S", "-aet", "BENCHSCU", "-aec", source.aet, "-aem", plain.aet,
             "-k", "QueryRetrieveLevel=SERIES", "-k", f"StudyInstanceUID={study_uid}",
             "-k", f"SeriesInstanceUID={uid}", "127.0.0.1", str(source.dicom_port)],
            check=True, capture_output=True, env=env, timeout=600)
    elapsed = time.perf_counter() - start
    if plain.instance_count() != expected:
        raise RuntimeError(f"movescu: {plain.instance_count()} of {expected} instances arrived")
    return elapsed


def harvest(gateway: OrthancProcess, patient_id: str, cap: int) -> tuple[float, dict[str, Any], list]:
    start = time.perf_counter()
    answer = gateway.post("/rt-gateway/harvests", {
        "source": "SOURCE", "patients": [patient_id], "max_requests_per_minute": cap, "concurrency": 2})
    answer.raise_for_status()
    harvest_id = answer.json()["id"]
    while True:
        status = gateway.json(f"/rt-gateway/harvests/{harvest_id}")
        if status["state"] == "done":
            break
        time.sleep(0.1)
    elapsed = time.perf_counter() - start
    return elapsed, status, gateway.json(f"/rt-gateway/harvests/{harvest_id}/requests")


def max_in_window(times: list[float], window: float) -> int:
    return max((sum(1 for t in times[i:] if t < start + window) for i, start in enumerate(times)), default=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--series", type=int, default=20)
    parser.add_argument("--slices", type=int, default=100)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--cap", type=int, default=600)
    parser.add_argument("--low-cap", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="rtgw-bench-harvest-"))
    source = OrthancProcess(work / "source", "SOURCE",
                            extra={"DicomAlwaysAllowMove": True, "DicomAlwaysAllowFind": True})
    plain = OrthancProcess(work / "plain", "PLAIN")
    gateway = OrthancProcess(work / "gateway", "RTGATEWAY", plugin=True, rules="rules: []\n",
                             gateway_settings={"Harvest": {"PollSeconds": 0.05}})
    source.add_modality("PLAIN", plain)
    source.add_modality("RTGATEWAY", gateway)
    gateway.add_modality("SOURCE", source)
    processes = [source, plain, gateway]
    try:
        for process in processes:
            process.start()
        patient_id, study_uid, series_uids = load_source(
            source, work / "files", args.series, args.slices, args.size)
        shutil.rmtree(work / "files")
        total = args.series * args.slices
        times: dict[str, list[float]] = {"movescu": [], "harvest": []}
        request_counts: list[int] = []
        for round_number in range(args.rounds):
            plain.reset_storage()
            gateway.reset_storage()
            for name in (("movescu", "harvest") if round_number % 2 == 0 else ("harvest", "movescu")):
                if name == "movescu":
                    times[name].append(movescu_all(source, plain, study_uid, series_uids, total))
                    continue
                seconds, status, audit = harvest(gateway, patient_id, args.cap)
                if status["instances"]["stored"] != total or status["counts"]["series"] != {
                        "complete": args.series}:
                    raise RuntimeError(f"harvest: {status['instances']} instead of {total}")
                times[name].append(seconds)
                request_counts.append(len(audit))
        gateway.reset_storage()
        capped_seconds, capped_status, requests = harvest(gateway, patient_id, args.low_cap)
    finally:
        for process in processes:
            process.stop()
    stamps = [row["at_epoch"] for row in requests]
    span = stamps[-1] - stamps[0]
    median = {key: statistics.median(values) for key, values in times.items()}
    by_round = [round(h / m, 3) for h, m in zip(times["harvest"], times["movescu"], strict=True)]
    result = {
        "benchmark": "harvest",
        "series": args.series, "slices": args.slices, "size": f"{args.size}x{args.size}",
        "rounds": args.rounds,
        "seconds": {key: round(value, 3) for key, value in median.items()},
        "seconds_all": {key: [round(x, 3) for x in values] for key, values in times.items()},
        "ratio_harvest_to_movescu": round(median["harvest"] / median["movescu"], 3),
        "ratio_harvest_to_movescu_by_round": by_round,
        "ratio_harvest_to_movescu_median_of_rounds": round(statistics.median(by_round), 3),
        "ratio_harvest_to_movescu_quartiles_of_rounds": quartiles(by_round),
        # Requests to the source (C-FIND, C-MOVE) of one harvest, from the gateway's audit.
        "harvest_requests": max(request_counts),
        "goals": {"harvest_to_movescu": 1.1},
        "capped": {
            "cap_per_minute": args.low_cap,
            "requests": len(requests),
            "seconds": round(capped_seconds, 3),
            "achieved_per_minute": round((len(requests) - 1) / span * 60, 2) if span else None,
            "max_in_any_60s_window": max_in_window(stamps, 60.0),
            "series_complete": capped_status["counts"]["series"].get("complete", 0),
        },
    }
    print(json.dumps(result, indent=2))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
