import itertools

import numpy as np

from orthanc_plugin.plans.dvh import cumulative_curve


def test_cumulative_curve_starts_at_100_percent_and_falls_to_the_maximum() -> None:
    dose = np.array([1.0, 2.0, 3.0, 4.0])
    weight = np.array([1.0, 1.0, 1.0, 1.0])
    doses, volumes = cumulative_curve(dose, weight)
    assert doses[0] == 0.0 and doses[-1] == 4.0
    assert volumes[0] == 100.0
    assert volumes[-1] == 25.0                      # only the 4 Gy sample receives >= 4 Gy
    assert all(a >= b for a, b in itertools.pairwise(volumes))
    half = doses.index(2.0)
    assert volumes[half] == 75.0                    # 2, 3 and 4 Gy receive >= 2 Gy
