from pydicom.dataset import Dataset

from orthanc_plugin.plans.dvh_source import planning_system_curve


def dvh_item(dvh_type: str, data: list[float], units: str = "GY", volume_units: str = "CM3") -> Dataset:
    item = Dataset()
    item.DVHType = dvh_type
    item.DoseUnits = units
    item.DVHVolumeUnits = volume_units
    item.DVHDoseScaling = 1.0
    item.DVHData = data
    return item


def test_cumulative_planning_system_dvh_becomes_percent_of_volume() -> None:
    curve = planning_system_curve(dvh_item("CUMULATIVE", [1.0, 10.0, 1.0, 5.0, 1.0, 2.5]))
    assert curve == {"dose_gy": [0.0, 1.0, 2.0], "volume_pct": [100.0, 50.0, 25.0]}


def test_differential_dvh_in_cgy_is_summed_from_the_top() -> None:
    curve = planning_system_curve(dvh_item("DIFFERENTIAL", [100.0, 2.0, 100.0, 1.0, 100.0, 1.0], "CGY"))
    assert curve["dose_gy"] == [0.0, 1.0, 2.0]
    assert curve["volume_pct"] == [100.0, 50.0, 25.0]


def test_missing_data_gives_no_curve() -> None:
    assert planning_system_curve(dvh_item("CUMULATIVE", [])) == {}
