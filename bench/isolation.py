"""bench/isolation: does the gateway's background work slow Orthanc's receiving? Prints JSON.

In the same run, on the same gateway (Workers 2):
- ingest_idle: storescu of N CT slices (512x512) into the gateway while it has nothing to do;
- ingest_<moment>: the same while an overlay of a 160-slice 512x512 study is built on all three
  planes (an `on: instance` rule, then forwarded), the ingest started at one of three moments of
  the overlay job's life:
    reading      as soon as the overlay job is claimed (it reads the RTSTRUCT and the CT);
    rasterizing  claim + half of the claim->built time measured on a quiet calibration overlay;
    storing      as soon as the job's `overlay-built` audit event appears (it stores the series);
and, unless --throughput-rounds 0, on two gateways that differ only in `Workers`:
- overlay_workers_1 / overlay_workers_2: time to build K axial overlay series (40 slices each)
  queued at once.
Ratios are what to read: each ingest_<moment> against ingest_idle of the same round (goal <= 1.1,
the median of the per-round ratios, with their quartiles), and the overlay throughput with 2 job
workers against 1 (goal >= 1.7 on 2 cores). The moments rotate from round to round.
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
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pydicom.uid import generate_uid

from bench.relay import SETTLE_SECONDS, quartiles
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
MOMENTS = ("reading", "rasterizing", "storing")


def query(gateway: OrthancProcess, sql: str, *args: object) -> int:
    with sqlite3.connect(gateway.gateway_db, timeout=30) as connection:
        return int(connection.execute(sql, args).fetchone()[0] or 0)


def overlay_jobs(gateway: OrthancProcess, state: str) -> int:
    return query(gateway, "SELECT COUNT(*) FROM jobs WHERE action='overlay' AND state=?", state)


def last_overlay_job(gateway: OrthancProcess) -> int:
    return query(gateway, "SELECT MAX(id) FROM jobs WHERE action='overlay'")


def job_state_is(gateway: OrthancProcess, job_id: int, states: tuple[str, ...]) -> bool:
    marks = ",".join("?" * len(states))
    return query(gateway, f"SELECT COUNT(*) FROM jobs WHERE id=? AND state IN ({marks})",
                 job_id, *states) > 0


def events_of(gateway: OrthancProcess, job_id: int, event: str) -> int:
    return query(gateway, "SELECT COUNT(*) FROM audit_events WHERE job_id=? AND event=?",
                 job_id, event)


def unfinished_jobs(gateway: OrthancProcess) -> int:
    return query(gateway, "SELECT COUNT(*) FROM jobs WHERE state IN ('pending','running')")


def wait(predicate: Callable[[], bool], timeout: float = 600, step: float = 0.02) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(step)
    raise TimeoutError("bench condition not reached")


def ingest(files: list[Path], gateway: OrthancProcess) -> float:
    start = time.perf_counter()
    storescu(files, gateway.dicom_port, calling="NOBODY", called="RTGATEWAY")
    return time.perf_counter() - start


def settle(gateway: OrthancProcess) -> None:
    """No job left and a quiet moment: the previous measurement's work stays out of the next."""
    wait(lambda: unfinished_jobs(gateway) == 0, step=0.2)
    time.sleep(SETTLE_SECONDS)


def ct_files(folder: Path, slices: int, size: int) -> list[Path]:
    return write_datasets(make_ct_series(
        patient_id=f"BENCH-{generate_uid()[-8:]}", patient_name="Bench^Isolation",
        study_uid=generate_uid(), frame_of_reference_uid=generate_uid(),
        n_slices=slices, rows=size, columns=size), folder)


def start_overlay(gateway: OrthancProcess, folder: Path, name: str, slices: int,
                  size: int) -> tuple[int, float]:
    """Sends a CT then its RTSTRUCT; answers the overlay job's ID and when it was claimed."""
    rtset = make_rt_set(name, n_slices=slices, rows=size, columns=size, with_dose=False)
    structure = write_datasets([rtset.rtstruct], folder / "rs")
    storescu(write_datasets(rtset.ct, folder / "ct"), gateway.dicom_port, calling="OVERLAY")
    settle(gateway)
    before = last_overlay_job(gateway)
    storescu(structure, gateway.dicom_port, calling="OVERLAY")
    wait(lambda: last_overlay_job(gateway) > before)
    job_id = last_overlay_job(gateway)
    wait(lambda: job_state_is(gateway, job_id, ("running", "done", "dead")))
    return job_id, time.perf_counter()


def calibrate(gateway: OrthancProcess, folder: Path, slices: int, size: int) -> dict[str, float]:
    """One overlay alone: how long from its claim to `overlay-built`, and to its end."""
    job_id, claimed = start_overlay(gateway, folder, "BENCH-OV-CAL", slices, size)
    wait(lambda: events_of(gateway, job_id, "overlay-built") > 0, step=0.01)
    built = time.perf_counter() - claimed
    wait(lambda: job_state_is(gateway, job_id, ("done", "dead")), step=0.01)
    return {"claim_to_built": round(built, 3), "claim_to_done": round(
        time.perf_counter() - claimed, 3)}


def busy_ingest(gateway: OrthancProcess, folder: Path, moment: str, args: argparse.Namespace,
                calibration: dict[str, float], name: str) -> tuple[float, dict[str, object]]:
    files = ct_files(folder / "busy", args.slices, args.size)
    job_id, claimed = start_overlay(gateway, folder, name, args.overlay_slices, args.size)
    if moment == "rasterizing":
        time.sleep(max(0.0, claimed + calibration["claim_to_built"] / 2 - time.perf_counter()))
    elif moment == "storing":
        wait(lambda: events_of(gateway, job_id, "overlay-built") > 0, step=0.01)
    started_at = {"built": events_of(gateway, job_id, "overlay-built"),
                  "stored_planes": events_of(gateway, job_id, "overlay-stored"),
                  "seconds_after_claim": round(time.perf_counter() - claimed, 2)}
    seconds = ingest(files, gateway)
    # The ingest only counts as "busy" if the overlay was still building at its end.
    running = job_state_is(gateway, job_id, ("running",))
    wait(lambda: job_state_is(gateway, job_id, ("done", "dead")), step=0.1)
    state = "done" if job_state_is(gateway, job_id, ("done",)) else "dead"
    return seconds, {"started_at": started_at, "overlay_running_at_ingest_end": running,
                     "overlay_state": state}


def overlays_done(gateway: OrthancProcess, count: int) -> Callable[[], bool]:
    return lambda: overlay_jobs(gateway, "done") >= count


def throughput(gateways: dict[int, OrthancProcess], folder: Path, args: argparse.Namespace,
               round_number: int, times: dict[str, list[float]]) -> None:
    for workers, gateway in gateways.items():
        sets = [make_rt_set(f"BENCH-TP-{workers}-{round_number}-{k}", n_slices=40,
                            rows=args.size, columns=args.size, with_dose=False)
                for k in range(args.overlays)]
        for k, rt in enumerate(sets):
            storescu(write_datasets(rt.ct, folder / f"tp{workers}-{k}"),
                     gateway.dicom_port, calling="THROUGHPUT")
        settle(gateway)
        done = overlay_jobs(gateway, "done")
        structures = write_datasets([rt.rtstruct for rt in sets], folder / f"rs{workers}")
        start = time.perf_counter()
        storescu(structures, gateway.dicom_port, calling="THROUGHPUT")
        wait(overlays_done(gateway, done + args.overlays))
        times[f"overlay_workers_{workers}"].append(time.perf_counter() - start)


def gate_stats(gateway: OrthancProcess) -> object:
    try:
        return gateway.json("/rt-gateway/stats").get("reception_first")
    except Exception:  # an older gateway without the section
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--overlay-slices", type=int, default=160)
    parser.add_argument("--size", type=int, default=512)
    # Rounds on these shared machines spread widely (1.07-1.65 measured): eight at least.
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--throughput-rounds", type=int, default=3)
    parser.add_argument("--overlays", type=int, default=4)
    parser.add_argument("--gateway-setting", action="append", default=[],
                        help="KEY=JSON added to the gateways' RtGateway section")
    args = parser.parse_args()
    extra = {key: json.loads(value) for key, value in
             (item.split("=", 1) for item in args.gateway_setting)}

    work = Path(tempfile.mkdtemp(prefix="rtgw-bench-isolation-"))
    viewer = OrthancProcess(work / "viewer", "VIEWER")
    worker_counts = (1, 2) if args.throughput_rounds else (2,)
    gateways = {
        workers: OrthancProcess(work / f"gw-{workers}", "RTGATEWAY", plugin=True, rules=RULES,
                                modalities={"VIEWER": viewer},
                                gateway_settings={"Workers": workers, **extra})
        for workers in worker_counts
    }
    times: dict[str, list[float]] = {"ingest_idle": [], **{f"ingest_{m}": [] for m in MOMENTS},
                                     "overlay_workers_1": [], "overlay_workers_2": []}
    notes: dict[str, list[dict[str, object]]] = {m: [] for m in MOMENTS}
    try:
        viewer.start()
        for gateway in gateways.values():
            gateway.start()
        main_gateway = gateways[2]
        calibration = calibrate(main_gateway, work / "calibration", args.overlay_slices,
                                args.size)
        for round_number in range(args.rounds):
            folder = work / f"round-{round_number}"
            main_gateway.reset_storage()
            viewer.reset_storage()
            idle_files = ct_files(folder / "idle", args.slices, args.size)
            settle(main_gateway)
            times["ingest_idle"].append(ingest(idle_files, main_gateway))
            shift = round_number % len(MOMENTS)
            for moment in MOMENTS[shift:] + MOMENTS[:shift]:
                seconds, note = busy_ingest(main_gateway, folder / moment, moment, args,
                                            calibration, f"BENCH-OV-{round_number}-{moment}")
                times[f"ingest_{moment}"].append(seconds)
                notes[moment].append(note)
            if round_number < args.throughput_rounds:
                throughput(gateways, folder, args, round_number, times)
            shutil.rmtree(folder, ignore_errors=True)
        reception_first = gate_stats(main_gateway)
    finally:
        for process in [*gateways.values(), viewer]:
            process.stop()

    def per_round(key: str) -> list[float]:
        return [round(a / b, 3) for a, b in zip(times[key], times["ingest_idle"], strict=True)]

    median = {key: statistics.median(values) for key, values in times.items() if values}
    moments = {}
    for moment in MOMENTS:
        ratios = per_round(f"ingest_{moment}")
        moments[moment] = {
            "ratio_to_idle_median_of_rounds": round(statistics.median(ratios), 3),
            "ratio_to_idle_quartiles_of_rounds": quartiles(ratios),
            "ratio_to_idle_by_round": ratios,
            "ratio_of_medians": round(median[f"ingest_{moment}"] / median["ingest_idle"], 3),
            "rounds": notes[moment],
        }
    result: dict[str, object] = {
        "benchmark": "isolation",
        "slices": args.slices,
        "size": f"{args.size}x{args.size}",
        "overlay_slices": args.overlay_slices,
        "rounds": args.rounds,
        "gateway_settings": extra,
        "quiet_overlay_seconds": calibration,
        "seconds_median": {k: round(v, 3) for k, v in median.items()},
        "seconds_all": {k: [round(x, 3) for x in v] for k, v in times.items()},
        "moments": moments,
        "ratio_ingest_busy_to_idle_worst_moment": max(
            m["ratio_to_idle_median_of_rounds"] for m in moments.values()),  # type: ignore[type-var]
        "reception_first": reception_first,
        "goals": {"ingest_busy_to_idle": 1.1, "overlay_throughput_2_to_1_workers": 1.7},
    }
    if times["overlay_workers_1"] and times["overlay_workers_2"]:
        result["ratio_overlay_throughput_2_to_1_workers"] = round(
            median["overlay_workers_1"] / median["overlay_workers_2"], 3)
    print(json.dumps(result, indent=2))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
