"""The streamed DVH statistics (dvh_histogram.py) against the same samples taken in full."""

import itertools

import numpy as np
import pytest

from orthanc_plugin.plans.dvh_histogram import DoseHistogram


def test_cumulative_curve_starts_at_100_percent_and_falls_to_the_maximum() -> None:
    histogram = DoseHistogram(4.0)
    histogram.add(np.array([1.0, 2.0, 3.0, 4.0]), 1.0)
    doses, volumes = histogram.curve()
    assert doses[0] == 0.0 and doses[-1] == 4.0
    assert volumes[0] == 100.0
    assert volumes[-1] == 25.0                      # only the 4 Gy sample receives >= 4 Gy
    assert all(a >= b for a, b in itertools.pairwise(volumes))
    half = doses.index(2.0)
    assert volumes[half] == 75.0                    # 2, 3 and 4 Gy receive >= 2 Gy


def test_streamed_layers_match_the_statistics_of_all_samples_at_once() -> None:
    rng = np.random.default_rng(7)
    layers = [(rng.gamma(4.0, 12.0, size=rng.integers(1, 5000)).clip(0, 70.0), float(w))
              for w in rng.uniform(0.5, 3.0, size=40)]
    histogram = DoseHistogram(70.0, prescription_gy=50.0)
    for dose, each in layers:
        histogram.add(dose, each)
    dose = np.concatenate([d for d, _ in layers])
    weight = np.concatenate([np.full(len(d), w) for d, w in layers])
    assert histogram.samples == len(dose)
    assert histogram.volume == pytest.approx(weight.sum(), rel=1e-12)
    assert histogram.mean == pytest.approx((dose * weight).sum() / weight.sum(), rel=1e-12)
    assert (histogram.low, histogram.high) == (dose.min(), dose.max())
    assert histogram.prescription_percent() == pytest.approx(
        weight[dose >= 50.0].sum() / weight.sum() * 100.0, rel=1e-12)
    order = np.argsort(dose)[::-1]
    cumulative = np.cumsum(weight[order])
    one_bin = 70.0 / (1 << 18)
    for percent in (2.0, 50.0, 95.0, 98.0):
        exact = dose[order][np.searchsorted(cumulative, weight.sum() * percent / 100 - 1e-9)]
        assert exact - one_bin <= histogram.dose_at(percent) <= exact


def test_a_uniform_dose_gives_that_dose_exactly() -> None:
    histogram = DoseHistogram(61.8)
    histogram.add(np.full(100, 61.8), 0.5)
    assert histogram.dose_at(2.0) == histogram.dose_at(95.0) == histogram.mean == 61.8
