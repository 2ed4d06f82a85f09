"""bench/deid: de-identification throughput (instances/s) of the full profile on a CT series. Prints JSON.

In the same run, on the same 200-slice 512x512 CT series:
- model: the pure de-identification in this process (read Part 10 bytes, de-identify, write);
- gateway: the anonymize executor inside Orthanc (read the file from Orthanc, de-identify, POST
  the copy, record the mapping; a few copies in the making at once, --copy-threads), from the
  executor's own timing in its audit events: `busy` is instances per second of executor time
  summed over sender threads, `wall` from the first claim to the last copy stored;
- orthanc: Orthanc's own POST /studies/{id}/anonymize (its basic profile, UIDs regenerated in
  memory for that one call), the baseline.
Median of --rounds rounds, each with fresh UIDs, and the first and third quartiles of the
per-round ratio gateway/Orthanc (both measured in the same round, so a load of the moment on
this shared machine weighs on both).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime
from io import BytesIO
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pydicom
from pydicom.uid import generate_uid

from orthanc_plugin.deid.action import COPY_THREADS
from orthanc_plugin.deid.keys import Pseudonymizer
from orthanc_plugin.deid.model import DeidSettings, deidentify
from orthanc_plugin.deid.profile import Option, Profile
from tests.support.orthanc import OrthancProcess, storescu
from tests.support.rtset import make_ct_series, write_datasets

RULES = """
rules:
  - name: research copy
    on: stable-study
    match: {calling_aet: MODALITY}
    actions:
      - anonymize: {profile: full, options: [retain-longitudinal-modified-dates]}
"""
# After Orthanc's /anonymize answers, the gateway's intake still takes its copies in.
SETTLE_SECONDS = 1.0
SETTINGS = DeidSettings(Profile.FULL, frozenset({Option.RETAIN_LONGITUDINAL_MODIFIED_DATES}))


def make_slices(folder: Path, patient_id: str, slices: int, size: int) -> list[Path]:
    series = make_ct_series(
        patient_id=patient_id, patient_name="Bench^Deid", study_uid=generate_uid(),
        frame_of_reference_uid=generate_uid(), n_slices=slices, rows=size, columns=size,
    )
    return write_datasets(series, folder)


def model_rate(files: list[Path]) -> float:
    keys = Pseudonymizer("bench-secret-0123456789abcdef")
    data = [path.read_bytes() for path in files]
    start = time.perf_counter()
    for raw in data:
        ds = pydicom.dcmread(BytesIO(raw))
        deidentify(ds, SETTINGS, keys)
        ds.save_as(BytesIO(), enforce_file_format=True)
    return len(files) / (time.perf_counter() - start)


def gateway_rates(gateway: OrthancProcess, patient_id: str, count: int) -> tuple[float, float]:
    deadline = time.time() + 600
    while time.time() < deadline:
        answer = gateway.get("/rt-gateway/deid/mappings", params={"patient": patient_id})
        if answer.ok and len(answer.json()["copies"]) >= count:
            break
        time.sleep(0.2)
    else:
        raise TimeoutError("the gateway did not store every copy")
    pseudonym = answer.json()["new_patient_id"]
    events = [e for e in gateway.json("/rt-gateway/audit", params={"kind": "events",
                                                                     "patient": pseudonym})
              if e["event"] == "anonymize-stored"]
    spans = []
    phases: list[str] = []
    instances = 0
    for event in events:
        words = event["detail"].split()
        seconds = float(re.search(r" in ([0-9.]+) s", event["detail"]).group(1))
        phases.append(event["detail"])
        end = datetime.fromisoformat(event["at"]).timestamp()
        spans.append((end - seconds, end, seconds))
        instances += int(words[0])
    busy = sum(s for _, _, s in spans)
    wall = max(e for _, e, _ in spans) - min(s for s, _, _ in spans)
    print("gateway:", "; ".join(phases), file=sys.stderr)
    return instances / busy, instances / wall


def orthanc_rate(gateway: OrthancProcess, study_uid: str, count: int) -> float:
    (study,) = [m["ID"] for m in gateway.post("/tools/lookup", study_uid).json()
                if m["Type"] == "Study"]
    start = time.perf_counter()
    answer = gateway.post(f"/studies/{study}/anonymize", {"Synchronous": True})
    answer.raise_for_status()
    seconds = time.perf_counter() - start
    gateway.delete(f"/studies/{answer.json()['ID']}")
    return count / seconds


def cpu_seconds(root: int) -> dict[str, float]:
    """CPU seconds used so far by Orthanc and by its worker processes (the gateway's workers are
    Orthanc's children): where a copy's cost lands, for the notes on the issue."""
    tick = os.sysconf("SC_CLK_TCK")
    used = {"orthanc": 0.0, "workers": 0.0}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid, parent = int(stat.parent.name), int(fields[1])
        if pid == root or parent == root:
            used["orthanc" if pid == root else "workers"] += (int(fields[11]) + int(fields[12])) / tick
    return used


def cpu_since(root: int, before: dict[str, float]) -> dict[str, float]:
    now = cpu_seconds(root)
    return {name: round(now[name] - before[name], 2) for name in now}


def quartiles(ratios: list[float]) -> list[float]:
    """First and third quartile of per-round ratios: a goal inside them is not yet decided."""
    if len(ratios) < 2:
        return [round(ratios[0], 3)] * 2 if ratios else []
    q = statistics.quantiles(ratios, n=4)
    return [round(q[0], 3), round(q[2], 3)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--size", type=int, default=512)
    # Rounds on these shared machines spread widely (0.5x to 1.3x of their median): eight at least.
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--copy-threads", type=int, default=None,
                        help="RtGateway.Deid.CopyThreads (default: the gateway's own)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="rtgw-bench-deid-"))
    deid = {} if args.copy_threads is None else {"Deid": {"CopyThreads": args.copy_threads}}
    gateway = OrthancProcess(work / "gateway", "RTGATEWAY", plugin=True, rules=RULES, stable_age=1,
                             gateway_settings=deid)
    rates: dict[str, list[float]] = {k: [] for k in ("model", "gateway_busy", "gateway_wall",
                                                     "orthanc")}
    cpu: dict[str, list[dict[str, float]]] = {"gateway": [], "orthanc": []}
    try:
        gateway.start()
        assert gateway.process is not None
        root = gateway.process.pid
        for round_number in range(args.rounds):
            patient_id = f"BENCH-{generate_uid()[-8:]}"
            files = make_slices(work / f"round-{round_number}", patient_id, args.slices, args.size)
            study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
            rates["model"].append(model_rate(files))
            storescu(files, gateway.dicom_port, calling="MODALITY", called="RTGATEWAY")
            before = cpu_seconds(root)
            busy, wall = gateway_rates(gateway, patient_id, len(files))
            cpu["gateway"].append(cpu_since(root, before))
            rates["gateway_busy"].append(busy)
            rates["gateway_wall"].append(wall)
            before = cpu_seconds(root)
            rates["orthanc"].append(orthanc_rate(gateway, study_uid, len(files)))
            time.sleep(SETTLE_SECONDS)
            cpu["orthanc"].append(cpu_since(root, before))
            gateway.reset_storage()
            shutil.rmtree(work / f"round-{round_number}")
    finally:
        gateway.stop()
    median = {key: statistics.median(values) for key, values in rates.items()}
    paired = [g / o for g, o in zip(rates["gateway_wall"], rates["orthanc"], strict=True)]
    result = {
        "benchmark": "deid",
        "profile": SETTINGS.describe(),
        "slices": args.slices,
        "size": f"{args.size}x{args.size}",
        "rounds": args.rounds,
        "copy_threads": args.copy_threads or COPY_THREADS,
        "instances_per_second_median": {k: round(v, 1) for k, v in median.items()},
        "instances_per_second_all": {k: [round(x, 1) for x in v] for k, v in rates.items()},
        "ratio_gateway_wall_to_orthanc": round(median["gateway_wall"] / median["orthanc"], 3),
        "ratio_gateway_wall_to_orthanc_median_of_rounds": round(statistics.median(paired), 3),
        "ratio_gateway_wall_to_orthanc_quartiles_of_rounds": quartiles(paired),
        # From the end of the ingest to the last copy (gateway; includes the stable-age wait and
        # the intake's tail) or around /anonymize plus SETTLE_SECONDS (the intake of its copies).
        "cpu_seconds_median": {
            run: {name: round(statistics.median(r[name] for r in rows), 2)
                  for name in ("orthanc", "workers")}
            for run, rows in cpu.items()},
        "goals": {"gateway_wall_to_orthanc": 1.0},
    }
    print(json.dumps(result, indent=2))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
