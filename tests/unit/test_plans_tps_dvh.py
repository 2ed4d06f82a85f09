import pytest
from pydicom.dataset import Dataset

from orthanc_plugin.plans.dvh_source import bundle_dvhs, planning_system_curve, summary_values
from tests.support.rtset import make_rt_set


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
    assert curve["dose_gy"] == [0.0, 1.0, 2.0] and curve["volume_pct"] == [100.0, 50.0, 25.0]
    # 5 cc in [0,1), 2.5 cc in [1,2), 2.5 cc in [2,3): mean 1.25 Gy, maximum 3 Gy, 10 cc.
    assert curve["total_volume"] == 10.0 and curve["curve_max_gy"] == 3.0
    assert curve["curve_mean_gy"] == pytest.approx(1.25)


def test_differential_dvh_in_cgy_is_summed_from_the_top() -> None:
    curve = planning_system_curve(dvh_item("DIFFERENTIAL", [100.0, 2.0, 100.0, 1.0, 100.0, 1.0], "CGY"))
    assert curve["dose_gy"] == [0.0, 1.0, 2.0]
    assert curve["volume_pct"] == [100.0, 50.0, 25.0]


def test_missing_data_gives_no_curve() -> None:
    assert planning_system_curve(dvh_item("CUMULATIVE", [])) == {}


def tps_item(stated: tuple[float, float, float], units: str = "GY") -> Dataset:
    """A cumulative DVH of 20 cc: 4 cc per 1 Gy bin up to 5 Gy (Dmax 5 Gy, Dmean 2.5 Gy)."""
    item = dvh_item("CUMULATIVE", [v for i in range(5) for v in (1.0, 20.0 - 4 * i)], units)
    item.DVHMinimumDose, item.DVHMeanDose, item.DVHMaximumDose = stated
    return item


def test_summary_stated_as_percent_of_the_prescription_is_read_as_such() -> None:
    """A planning system that writes Dmax 104.86 beside a curve ending at 5 Gy (Rx 4.768 Gy)."""
    item = tps_item((0.0, 52.43, 104.86))
    values = summary_values(item, planning_system_curve(item), rx=4.768)
    assert values["Dmax"] == pytest.approx(5.0, rel=0.01)
    assert values["Dmean"] == pytest.approx(2.5, rel=0.01)
    assert values["volume_cc"] == 20.0
    assert any("percent of the prescription" in check for check in values["checks"])


def test_summary_in_gy_that_agrees_with_the_curve_is_kept() -> None:
    item = tps_item((0.0, 2.5, 5.0))
    values = summary_values(item, planning_system_curve(item), rx=60.0)
    assert (values["Dmean"], values["Dmax"], values["checks"]) == (2.5, 5.0, [])


def test_summary_that_agrees_with_nothing_is_flagged_not_changed() -> None:
    item = tps_item((0.0, 2.5, 20.0))
    values = summary_values(item, planning_system_curve(item), rx=60.0)
    assert values["Dmax"] == 20.0 and "disagrees with the curve" in values["checks"][0]


def test_percent_volume_has_no_cc() -> None:
    item = dvh_item("CUMULATIVE", [1.0, 100.0, 1.0, 50.0], volume_units="PERCENT")
    assert summary_values(item, planning_system_curve(item), rx=None)["volume_cc"] is None


def test_relative_dose_is_converted_with_the_prescription_or_marked() -> None:
    rtset = make_rt_set("REL-1", n_slices=6)
    dose = rtset.rtdose.copy()
    gy = bundle_dvhs(rtset.rtstruct, dose, rtset.rtplan)
    ptv_gy = {row["roi"]: row for row in gy["computed"]}["PTV"]["Dmax"]
    relative = dose.copy()
    relative.DoseUnits = "RELATIVE"
    relative.DoseGridScaling = f"{float(dose.DoseGridScaling) / 60.0:.10g}"  # 1.0 = 60 Gy
    converted = bundle_dvhs(rtset.rtstruct, relative, rtset.rtplan)
    assert converted["dose_units"] == "GY" and "converted" in converted["dose_conversion"]
    assert {r["roi"]: r for r in converted["computed"]}["PTV"]["Dmax"] == pytest.approx(ptv_gy, rel=1e-3)
    unknown = bundle_dvhs(rtset.rtstruct, relative, None)
    assert unknown["dose_units"] == "RELATIVE"
    assert {r["roi"]: r for r in unknown["computed"]}["PTV"]["Dmax"] == pytest.approx(
        ptv_gy / 60.0, rel=1e-3)


def test_relative_dose_is_never_indexed_as_gy() -> None:
    from orthanc_plugin.index.rt_metrics import dose as dose_metrics

    relative = make_rt_set("REL-2", n_slices=2).rtdose.copy()
    relative.DoseUnits = "RELATIVE"
    values = dose_metrics(relative)
    assert values["Units"] == "RELATIVE" and values["DoseMaxGy"] is None


def test_a_dose_scaling_that_is_not_a_number_indexes_no_dose() -> None:
    from orthanc_plugin.index.rt_metrics import dose as dose_metrics

    broken = make_rt_set("NAN-DOSE", n_slices=2).rtdose.copy()
    broken.DoseGridScaling = "NaN"
    broken.PixelSpacing = ["inf", 2.5]
    values = dose_metrics(broken)
    assert values["DoseMinGy"] is values["DoseMeanGy"] is values["DoseMaxGy"] is None
    assert values["SpacingRow"] is None and values["SpacingCol"] == 2.5
