"""DVHs of outsized structures in a process limited as a worker is: a whole body (the samples are
streamed: 20 million samples needed 1.7 GB when kept) and a 100,000-point contour (the scan-line
test runs a block of rows at a time: 660 MB at once before)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LIMIT_MB = 1024
PRELUDE = f"""
import json, math, resource, sys
sys.path.insert(0, {str(ROOT)!r})
resource.setrlimit(resource.RLIMIT_AS, ({LIMIT_MB} << 20, {LIMIT_MB} << 20))
import numpy as np
from orthanc_plugin.plans.dvh import Contour, DoseGrid, dvh
def peak_mb():
    # VmHWM: this program's own peak (ru_maxrss keeps the parent's across exec).
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) // 1024
"""
WHOLE_BODY = PRELUDE + """
# Total body irradiation: a 2.5 mm dose grid over 50 x 30 x 170 cm, 12 Gy everywhere; the body
# an ellipse of 44 x 26 cm on 341 planes 5 mm apart.
xs, ys, zs = (np.arange(-250, 250.1, 2.5), np.arange(-150, 150.1, 2.5),
              np.arange(0, 1700.1, 2.5))
grid = DoseGrid(xs, ys, zs, np.full((len(zs), len(ys), len(xs)), 12.0, dtype=np.float32))
angles = np.linspace(0, 2 * math.pi, 400, endpoint=False)
ellipse = np.stack([220 * np.cos(angles), 130 * np.sin(angles)], axis=1)
result = dvh([Contour(float(z), ellipse) for z in np.arange(0, 1700.1, 5.0)], grid, 12.0)
print(json.dumps({"volume_cc": result.volume_cc, "samples": result.samples,
                  "d_mean": result.d_mean, "d95": result.d95, "v_rx": result.v_prescription_pct,
                  "peak_mb": peak_mb()}))
"""
HUGE_CONTOUR = PRELUDE + """
# A 20 cm circle drawn with 100,000 points on three planes, in a 2 Gy field.
xs = np.arange(-150, 150.1, 2.5)
grid = DoseGrid(xs, xs.copy(), np.arange(-10, 10.1, 2.5), np.full((9, len(xs), len(xs)), 2.0))
angles = np.linspace(0, 2 * math.pi, 100_000, endpoint=False)
circle = np.stack([100 * np.cos(angles), 100 * np.sin(angles)], axis=1)
result = dvh([Contour(z, circle) for z in (-2.5, 0.0, 2.5)], grid, 2.0)
print(json.dumps({"volume_cc": result.volume_cc, "d_mean": result.d_mean, "peak_mb": peak_mb()}))
"""


def run_limited(program: str) -> dict[str, float]:
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return dict(json.loads(done.stdout))


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_AS as the workers use it: Linux")
def test_whole_body_dvh_fits_in_a_worker_memory_limit() -> None:
    result = run_limited(WHOLE_BODY)
    assert result["samples"] > 15_000_000
    # 340 gaps of 5 mm plus two quarter-slab end caps (1.25 mm each).
    area_mm2 = 400 / 2 * 220 * 130 * math.sin(2 * math.pi / 400)
    assert result["volume_cc"] == pytest.approx(area_mm2 * (1700 + 2.5) / 1000, rel=0.005)
    assert result["d_mean"] == pytest.approx(12.0) and result["d95"] == pytest.approx(12.0)
    assert result["v_rx"] == pytest.approx(100.0)
    assert result["peak_mb"] < 400


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_AS as the workers use it: Linux")
def test_a_100k_point_contour_stays_small() -> None:
    result = run_limited(HUGE_CONTOUR)
    # 5 mm between the outer planes plus two quarter-slab end caps of 0.625 mm.
    assert result["volume_cc"] == pytest.approx(math.pi * 100**2 * 6.25 / 1000, rel=0.005)
    assert result["d_mean"] == pytest.approx(2.0)
    assert result["peak_mb"] < 300
