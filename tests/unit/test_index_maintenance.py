"""Index maintenance, pure parts: safe folder names, rebuild scope parsing, series selection,
clear/has_image and the plan max dose."""

from __future__ import annotations

from pathlib import Path

import pytest

from orthanc_plugin.api.router import ApiError
from orthanc_plugin.index.plan_details import max_dose_by_plan
from orthanc_plugin.index.rebuild import RebuildScope, parse_batch, parse_scope
from orthanc_plugin.index.safe_names import inside, safe_name
from orthanc_plugin.index.selection import select_series
from orthanc_plugin.index.store import IndexStore
from tests.conftest import MakeIndex
from tests.support.rtset import RtSet, make_rt_set


@pytest.fixture(scope="module")
def rtset() -> RtSet:
    return make_rt_set("MAINT-1", plan_label="ADP1", n_slices=4, rows=32, columns=32,
                       prescription_gy=50.0)


@pytest.fixture()
def store(make_index: MakeIndex, rtset: RtSet) -> IndexStore:
    """On each engine (an SQLite file, the real PostgreSQL)."""
    index = make_index()
    for number, ds in enumerate(rtset.all()):
        index.put(ds, f"orthanc-{number}", None)
    return index


@pytest.mark.parametrize("value", ["../../etc", "A/B", "..", ".", "", "C:\\x", "a\x00b", "/abs"])
def test_unsafe_names_become_one_plain_folder_inside_the_root(tmp_path: Path, value: str) -> None:
    name = safe_name(value)
    assert "/" not in name and "\\" not in name and name not in ("", ".", "..")
    path = inside(tmp_path, value, value)
    assert path.is_relative_to(tmp_path.resolve()) and len(path.relative_to(tmp_path.resolve()).parts) == 2


def test_safe_names_keep_plain_values_and_keep_changed_ones_apart() -> None:
    assert safe_name("PAT-001_x.1") == "PAT-001_x.1"
    assert safe_name("1.2.840.10008") == "1.2.840.10008"
    assert safe_name("A/B") != safe_name("A_B") and safe_name("A/B").startswith("A_B-")


def test_rebuild_scope_and_batch_parsing() -> None:
    assert parse_scope("all") == RebuildScope("all")
    assert parse_scope("missing") == RebuildScope("missing")
    assert parse_scope({"patient": "P1"}) == RebuildScope("patient", "P1")
    for bad in (None, "some", {"patient": ""}, {"patient": 3}, {"patient": "P", "x": 1}):
        with pytest.raises(ApiError):
            parse_scope(bad)
    assert parse_batch({}) == (0, 200)
    assert parse_batch({"after": 400, "limit": 50}) == (400, 50)
    for bad in ({"after": -1}, {"limit": 0}, {"limit": 10_000}, {"after": True}, {"after": "3"}):
        with pytest.raises(ApiError):
            parse_batch(bad)


def test_select_by_patient_series_list_and_query(store: IndexStore, rtset: RtSet) -> None:
    all_series = {str(ds.SeriesInstanceUID) for ds in rtset.all()}
    assert set(select_series(store, {"patient": "MAINT-1"})) == all_series
    assert select_series(store, {"patient": "nobody"}) == []
    assert select_series(store, {"series": ["x", "y", "x"]}) == ["x", "y"]
    plan_series = str(rtset.rtplan.SeriesInstanceUID)
    assert select_series(store, {"query": "select seriesinst from dicomseries where modality='RTPLAN'"}) \
        == [plan_series]


@pytest.mark.parametrize("select", [None, {}, {"patient": ""}, {"series": []}, {"series": [1]},
                                    {"query": "select 1 as other"}, {"query": "delete from DICOMseries"},
                                    {"patient": "a", "series": ["b"]}, {"colour": "red"}])
def test_bad_selections_are_refused_clearly(store: IndexStore, select: object) -> None:
    with pytest.raises(ApiError) as raised:
        select_series(store, select)
    assert raised.value.status == 400


def test_clear_empties_the_index_and_has_image_follows(store: IndexStore, rtset: RtSet) -> None:
    sop = str(rtset.ct[0].SOPInstanceUID)
    assert store.has_image(sop)
    store.clear()
    assert not store.has_image(sop)
    assert store.db.query(f"SELECT COUNT(*) FROM {store.table('DICOMseries')}")[0][0] == 0
    assert store.db.query(f"SELECT COUNT(*) FROM {store.table('RTplans')}")[0][0] == 0


def test_max_dose_of_a_plan_is_its_highest_rtdose_maximum(store: IndexStore, rtset: RtSet) -> None:
    assert rtset.rtdose is not None
    dose = {"modality": "RTDOSE", "sop_instance_uid": str(rtset.rtdose.SOPInstanceUID)}
    plans = [{"id": "with", "objects": [dose]}, {"id": "without", "objects": []}]
    maxima = max_dose_by_plan(store, plans)
    assert maxima["without"] is None
    assert maxima["with"] == pytest.approx(50.0 * 1.03, rel=0.02)
