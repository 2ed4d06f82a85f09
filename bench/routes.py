"""bench/routes: what each REST route the gateway calls costs on Orthanc 1.12.7 (Debian trixie, in
the chroot scripts/trixie.sh makes) against 1.10.1 (bookworm), plain Orthancs without the plugin,
same data, same run, rounds alternating between the two. Prints JSON (`make bench` keeps it).

Issue 22 item 6: the gateway's recording cost is higher on 1.12 (watched Lua / Lua 1.25 against
1.09-1.18 on 1.10). The routes are those the intake, the forwarder and the plan tracker call per
instance or per job: the instance's description, its metadata, the changes log, a job's state, the
study's description, the file. Each is called --calls times per round over one kept-alive
connection (as the workers' client does); the median per call over --rounds rounds is printed, and
the ratio 1.12 / 1.10 per route.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import requests
from pydicom.uid import generate_uid

from tests.support.orthanc import PASSWORD, USER, OrthancProcess, storescu
from tests.support.rtset import make_ct_series, write_datasets

ROOT = Path(os.environ.get("RTGW_TRIXIE_ROOT", "/var/cache/rtgw/trixie"))
CHECKOUT = Path(__file__).resolve().parents[1]


class ChrootedOrthanc(OrthancProcess):
    """A plain Orthanc run from the trixie folder (its /tmp is the host's: the same paths)."""

    def start(self, *, wait: bool = True, config_overrides: dict[str, Any] | None = None) -> None:
        config = dict(self.config)
        config_path = self.folder / "orthanc.json"
        config_path.write_text(json.dumps(config, indent=2))
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            ["chroot", str(ROOT), "/usr/sbin/Orthanc", str(config_path)], stdout=log,
            stderr=subprocess.STDOUT, env=dict(os.environ, TCP_NODELAY="1"), cwd=self.folder)
        if wait:
            self.wait_ready()


def _routes(process: OrthancProcess) -> dict[str, str]:
    session = requests.Session()
    session.auth = (USER, PASSWORD)
    instance = session.get(f"{process.url}/instances").json()[0]
    study = session.get(f"{process.url}/studies").json()[0]
    job = session.post(f"{process.url}/studies/{study}/anonymize",
                       json={"Asynchronous": True}).json()["ID"]
    deadline = time.time() + 60
    while session.get(f"{process.url}/jobs/{job}").json()["State"] != "Success":
        if time.time() > deadline:
            raise RuntimeError("the anonymization job did not end")
        time.sleep(0.05)
    return {
        "instance": f"/instances/{instance}",
        "instance_metadata": f"/instances/{instance}/metadata?expand",
        "changes_100": "/changes?since=0&limit=100",
        "job": f"/jobs/{job}",
        "study": f"/studies/{study}",
        "instance_file": f"/instances/{instance}/file",
    }


def _per_call(process: OrthancProcess, path: str, calls: int) -> float:
    session = requests.Session()
    session.auth = (USER, PASSWORD)
    session.get(process.url + path).raise_for_status()   # warm: connection, caches
    start = time.perf_counter()
    for _ in range(calls):
        session.get(process.url + path).raise_for_status()
    return (time.perf_counter() - start) / calls


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--instances", type=int, default=50)
    args = parser.parse_args()
    subprocess.run([str(CHECKOUT / "scripts" / "trixie.sh"), "prepare"], check=True,
                   stdout=sys.stderr)
    subprocess.run([str(CHECKOUT / "scripts" / "trixie.sh"), "mount"], check=True,
                   stdout=sys.stderr)
    try:
        with tempfile.TemporaryDirectory(dir="/tmp") as folder:
            work = Path(folder)
            orthancs = {"1.10": OrthancProcess(work / "bookworm", "OLD"),
                        "1.12": ChrootedOrthanc(work / "trixie", "NEW")}
            series = make_ct_series(patient_id="ROUTES", patient_name="Bench^Routes",
                                    study_uid=generate_uid(),
                                    frame_of_reference_uid=generate_uid(),
                                    n_slices=args.instances, rows=64, columns=64)
            files = write_datasets(series, work / "files")
            try:
                for process in orthancs.values():
                    process.start()
                    storescu(files, process.dicom_port, calling="BENCH")
                paths = {version: _routes(process) for version, process in orthancs.items()}
                times: dict[str, dict[str, list[float]]] = {
                    version: {route: [] for route in paths[version]} for version in orthancs}
                for _ in range(args.rounds):
                    for route in paths["1.10"]:
                        for version, process in orthancs.items():
                            times[version][route].append(
                                _per_call(process, paths[version][route], args.calls))
                versions = {version: (process.get("/system").json().get("Version"))
                            for version, process in orthancs.items()}
            finally:
                for process in orthancs.values():
                    process.stop()
    finally:
        subprocess.run([str(CHECKOUT / "scripts" / "trixie.sh"), "umount"], check=False,
                       stdout=sys.stderr)
    result: dict[str, Any] = {"rounds": args.rounds, "calls": args.calls, "versions": versions,
                              "microseconds_median": {}, "ratio_112_to_110": {}}
    for route in times["1.10"]:
        old = statistics.median(times["1.10"][route]) * 1e6
        new = statistics.median(times["1.12"][route]) * 1e6
        result["microseconds_median"][route] = {"1.10": round(old, 1), "1.12": round(new, 1)}
        result["ratio_112_to_110"][route] = round(new / old, 3)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
