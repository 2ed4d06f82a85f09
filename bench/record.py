"""Keeps one benchmark run: `bench/record.py NAME FILE` wraps the JSON a bench printed with what it
ran on (cores, memory, Orthanc's version, the commit and whether the tree was clean, the time)
and writes it to bench/results/NAME/<time>-<commit>.json, which is committed, so that the next
run shows a regression against this one. Prints every ratio beside the previous run's."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def _run(command: list[str]) -> str:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=30,
                              check=False).stdout.strip()
    except OSError:
        return ""


def _orthanc_root() -> list[str]:
    """The chroot prefix when the bench ran Orthanc in trixie's root (scripts/trixie.sh)."""
    root = os.environ.get("RTGW_ORTHANC_CHROOT", "")
    return ["chroot", root] if root else []


def machine() -> dict[str, Any]:
    memory_kb = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_kb = int(line.split()[1])
    except OSError:
        pass
    commit = _run(["git", "rev-parse", "HEAD"])
    return {
        "cores": os.cpu_count(),
        "memory_gb": round(memory_kb / 1024 / 1024, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "orthanc": (_run([*_orthanc_root(), "Orthanc", "--version"]).splitlines() or [""])[0],
        **({"orthanc_root": os.environ["RTGW_ORTHANC_CHROOT"],
            "worker_python": _run([*_orthanc_root(), "/opt/rtgw-venv/bin/python", "-c",
                                   "import platform; print(platform.python_version())"])}
           if _orthanc_root() else {}),
        "commit": commit,
        "tree_clean": _run(["git", "status", "--porcelain", "--untracked-files=no"]) == "",
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def ratios(results: Any, prefix: str = "") -> dict[str, float]:
    """Every number under a key that names a ratio, by its path in the JSON."""
    found: dict[str, float] = {}
    if isinstance(results, dict):
        for key, value in results.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            if isinstance(value, int | float) and "ratio" in path:
                found[path] = float(value)
            else:
                found.update(ratios(value, path))
    return found


def main() -> None:
    name, source = sys.argv[1], Path(sys.argv[2])
    results = json.loads(source.read_text())
    folder = RESULTS / name
    folder.mkdir(parents=True, exist_ok=True)
    previous_files = sorted(folder.glob("*.json"))
    previous = json.loads(previous_files[-1].read_text())["results"] if previous_files else None
    about = machine()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = folder / f"{stamp}-{about['commit'][:7] or 'nocommit'}.json"
    path.write_text(json.dumps({"bench": name, "machine": about, "results": results},
                               indent=2) + "\n")
    print(f"{name}: kept in {path.relative_to(RESULTS.parent.parent)}")
    before = ratios(previous) if previous is not None else {}
    for key, value in ratios(results).items():
        last = f" (last run {before[key]:.3f})" if key in before else ""
        print(f"  {key}: {value:.3f}{last}")


if __name__ == "__main__":
    main()
