"""bench/dvh_conventions: the gateway's computed DVH against the planning system's own DVHs and
against dicompyler-core's get_dvh, per structure, on a real planning-system export.

The plan is dicompyler-core's example data (CT, structure set of 9 ROIs, plan, and a dose grid
carrying the planning system's DVHs), taken from dicompyler-core's source distribution on PyPI at
run time into bench/.cache (never copied into the project). dicompyler-core needs pydicom 2.4:
it runs in its own venv (bench/.cache/venv-dicompyler), made here once.

Prints JSON: per structure the planning system's volume (cc), Dmean and Dmax (Gy, read as the
gateway reads them: the summary is in percent of the prescription there), the gateway's with
its default conventions and the difference under each convention (interpolation between planes
x end caps x inner contours), dicompyler-core's, and for each convention on how many structures the gateway is
closer to the planning system than dicompyler-core. Same data, same machine, same run.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import tarfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from pydicom import dcmread

from orthanc_plugin.plans.dvh import (
    DEFAULT_END_CAPS,
    DEFAULT_INNER_CONTOURS,
    DEFAULT_INTERPOLATION,
    END_CAPS,
    INNER_CONTOURS,
    INTERPOLATIONS,
    Contour,
    DoseGrid,
    dvh,
)
from orthanc_plugin.plans.dvh_source import (
    dose_grid,
    planning_system_dvhs,
    prescription,
    roi_contours,
)

CACHE = Path(__file__).resolve().parent / ".cache"
VERSION = "0.5.6"
DICOMPYLER = f"dicompyler-core=={VERSION}"
PINS = ["pydicom==2.4.4", "numpy<2", "matplotlib<3.9", "six", "shapely<2.1"]
DICOMPYLER_SCRIPT = """
import json, sys
from dicompylercore import dicomparser, dvhcalc
folder, names = sys.argv[1], json.loads(sys.argv[2])
structures = dicomparser.DicomParser(folder + "/rtss.dcm").GetStructures()
out = {}
for number, structure in structures.items():
    if structure["name"] not in names:
        continue
    calc = dvhcalc.get_dvh(folder + "/rtss.dcm", folder + "/rtdose.dcm", number)
    out[structure["name"]] = {"volume_cc": float(calc.volume), "Dmean": float(calc.mean),
                              "Dmax": float(calc.max)}
print(json.dumps(out))
"""


def example_data() -> Path:
    folder = CACHE / f"dicompyler-core-{VERSION}" / "tests" / "testdata" / "example_data"
    if folder.exists():
        return folder
    CACHE.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary",
                    ":all:", DICOMPYLER, "-d", str(CACHE)], check=True)
    with tarfile.open(next(CACHE.glob(f"dicompyler-core-{VERSION}.tar.gz")), "r:gz") as archive:
        # Only the example data, plain files with no ".." (Python 3.11.2 has no extraction filter).
        wanted = [member for member in archive.getmembers()
                  if member.isfile() and "/example_data/" in member.name
                  and ".." not in Path(member.name).parts and not member.name.startswith("/")]
        archive.extractall(CACHE, members=wanted)
    return folder


def dicompyler_python() -> Path:
    venv = CACHE / "venv-dicompyler"
    python = venv / "bin" / "python"
    if not (venv / ".ready").exists():
        subprocess.run(["/usr/bin/python3", "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", DICOMPYLER, *PINS], check=True)
        (venv / ".ready").write_text(VERSION)
    return python


# The sampling lattice shifted by these fractions of a sample (x, y): the spread of the answers is
# the method's own sampling noise, below which "closer" cannot be told.
LATTICE_SHIFTS = ((0.0, 0.0), (0.5, 0.0), (0.0, 0.5), (0.5, 0.5), (0.25, 0.75))
KEYS = ("volume_cc", "Dmean", "Dmax")


def shifted(contours: list[Contour], grid: DoseGrid, ox: float, oy: float
            ) -> tuple[list[Contour], DoseGrid]:
    """Structure and dose moved together by (ox, oy) mm: the same plan, another sample lattice."""
    moved = [Contour(c.z, np.asarray(c.points, float) + np.array([ox, oy])) for c in contours]
    return moved, dataclasses.replace(grid, xs=grid.xs + ox, ys=grid.ys + oy)


def sampling_noise(contours: list[Contour], grid: DoseGrid, rx: float | None
                   ) -> dict[str, float]:
    """Per value, the range (max - min) of the default method's answers over LATTICE_SHIFTS."""
    answers: dict[str, list[float]] = {key: [] for key in KEYS}
    probe = dvh(contours, grid, rx)
    if probe is None:
        return {}
    step_x, step_y = (s / probe.supersampling for s in grid.spacing)
    for fx, fy in LATTICE_SHIFTS:
        result = dvh(*shifted(contours, grid, fx * step_x, fy * step_y), rx)
        if result is not None:
            for key, value in zip(KEYS, (result.volume_cc, result.d_mean, result.d_max),
                                  strict=True):
                answers[key].append(value)
    return {key: max(values) - min(values) for key, values in answers.items() if values}


def verdict(mine: float, other: float, reference: float, noise: float) -> str:
    """closer / further, or "within noise" when the two distances differ by less than the
    gateway's own sampling noise."""
    gap = abs(other - reference) - abs(mine - reference)
    if abs(gap) <= noise:
        return "within noise"
    return "closer" if gap > 0 else "further"


def relative(value: float | None, reference: float | None) -> float | None:
    if value is None or not reference:
        return None
    return round((value - reference) / reference * 100.0, 2)


def main() -> None:
    folder = example_data()
    structure, dose, plan = (dcmread(folder / name) for name in
                             ("rtss.dcm", "rtdose.dcm", "rtplan.dcm"))
    rx = prescription(plan)
    tps = planning_system_dvhs(dose, structure, rx)
    grid = dose_grid(dose)
    contours = roi_contours(structure)
    ours: dict[str, dict[str, dict[str, float]]] = {}
    seconds: dict[str, float] = {}
    # interpolation between planes / end caps / inner contours
    conventions = [f"{interp}/{caps}/{inner}" for interp in INTERPOLATIONS for caps in END_CAPS
                   for inner in INNER_CONTOURS]
    default = f"{DEFAULT_INTERPOLATION}/{DEFAULT_END_CAPS}/{DEFAULT_INNER_CONTOURS}"
    for convention in conventions:
        interp, caps, inner = convention.split("/")
        started = time.perf_counter()
        for name in tps:
            result = dvh(contours[name], grid, rx, end_caps=caps, interpolation=interp,
                         inner_contours=inner)
            if result is not None:
                ours.setdefault(name, {})[convention] = {
                    "volume_cc": result.volume_cc, "Dmean": result.d_mean, "Dmax": result.d_max}
        seconds[convention] = time.perf_counter() - started
    started = time.perf_counter()
    done = subprocess.run([str(dicompyler_python()), "-c", DICOMPYLER_SCRIPT, str(folder),
                           json.dumps(sorted(tps))], capture_output=True, text=True, check=True)
    seconds["dicompyler-core"] = time.perf_counter() - started
    theirs = json.loads(done.stdout)
    noise = {name: sampling_noise(contours[name], grid, rx) for name in tps}
    verdicts = {key: {"closer": 0, "within noise": 0, "further": 0} for key in KEYS}
    rows = []
    closer = {convention: {"volume_cc": 0, "Dmean": 0, "Dmax": 0} for convention in conventions}
    for name in sorted(tps):
        row: dict[str, object] = {"roi": name}
        for key in KEYS:
            reference = tps[name].get(key)
            other = theirs.get(name, {}).get(key)
            mine = ours.get(name, {}).get(default, {}).get(key)
            row[key] = {
                "planning_system": reference,
                "gateway": mine,
                "dicompyler_core": other,
                "gateway_diff_pct": relative(mine, reference),
                "dicompyler_diff_pct": relative(other, reference),
                "gateway_sampling_noise_pct": relative(
                    reference + noise.get(name, {}).get(key, 0.0), reference),
                "gateway_vs_dicompyler": None if None in (mine, other, reference) else verdict(
                    mine, other, reference, noise.get(name, {}).get(key, 0.0)),
                "gateway_diff_pct_by_convention": {
                    convention: relative(ours.get(name, {}).get(convention, {}).get(key),
                                         reference) for convention in conventions},
            }
            if row[key]["gateway_vs_dicompyler"]:
                verdicts[key][row[key]["gateway_vs_dicompyler"]] += 1
            for convention in conventions:
                value = ours.get(name, {}).get(convention, {}).get(key)
                if (value is not None and other is not None and reference is not None
                        and abs(value - reference) <= abs(other - reference)):
                    closer[convention][key] += 1
        rows.append(row)
    report = {
        "bench": "dvh_conventions",
        "data": f"dicompyler-core {VERSION} example_data (real planning-system export, 9 ROIs)",
        "prescription_gy": rx,
        "default": default,
        "structures": rows,
        "gateway_closer_or_equal": {key: f"{count} of {len(rows)}"
                                    for key, count in closer[default].items()},
        "gateway_vs_dicompyler_beyond_sampling_noise": verdicts,
        "sampling_noise": "range of the default's answers with the sample lattice shifted by "
                          f"{list(LATTICE_SHIFTS)} of a sample",
        "closer_or_equal_by_convention": {
            convention: {key: f"{count} of {len(rows)}" for key, count in counts.items()}
            for convention, counts in closer.items()},
        "seconds": {key: round(value, 2) for key, value in seconds.items()},
    }
    text = json.dumps(report, indent=2)
    (Path(__file__).resolve().parent / "results").mkdir(exist_ok=True)
    (Path(__file__).resolve().parent / "results" / "dvh_conventions.json").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
