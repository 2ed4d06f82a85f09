"""Name normalization (issue 27, item 1): the TG-263 table, site synonyms and the dataset rename."""

from __future__ import annotations

import csv
from copy import deepcopy
from pathlib import Path

import pytest
from pydicom import Dataset

from orthanc_plugin.transform.names import (
    SHIPPED_CSV,
    NameTable,
    NameTableError,
    Via,
    normal_key,
    target_name,
)
from orthanc_plugin.transform.rename import Renamed, Status, normalize_dataset, unmapped
from tests.support.rtset import make_rt_set


@pytest.fixture(scope="module")
def table() -> NameTable:
    return NameTable.load()


def _site(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "site-names.csv"
    path.write_text(text, encoding="utf-8")
    return path


def _shipped_rows() -> list[tuple[str, list[str]]]:
    lines = [line for line in SHIPPED_CSV.read_text(encoding="utf-8").splitlines()
             if line.strip() and not line.startswith("#")]
    rows = list(csv.reader(lines))
    assert rows[0] == ["name", "synonyms"]
    return [(name, [s for s in synonyms.split("|") if s]) for name, synonyms in rows[1:]]


# -- the table --------------------------------------------------------------------------------

def test_issue_names_through_the_table(table: NameTable) -> None:
    assert table.map("PTV_High") == "PTV_High"
    assert table.map("Lt Parotid") == "Parotid_L"
    assert table.map("parotid_l") == "Parotid_L"
    assert table.map("SpinalCord") == "SpinalCord"
    assert table.map("z_ring") is None
    assert table.explain("z_ring").via is Via.HELPER


def test_case_and_separators_do_not_matter(table: NameTable) -> None:
    assert normal_key("Lt Parotid") == normal_key("lt_parotid") == normal_key("LT-PAROTID")
    assert normal_key("Spinal.Cord") == normal_key("spinal cord")
    for spelling in ("Lt Parotid", "lt_parotid", "LT-PAROTID", "lt.parotid", "LTPAROTID", " Lt  Parotid "):
        assert table.map(spelling) == "Parotid_L", spelling
    for spelling in ("spinal cord", "SPINAL_CORD", "Spinal-Cord", "spinalcord"):
        assert table.map(spelling) == "SpinalCord", spelling


def test_left_and_right_are_never_confused(table: NameTable) -> None:
    assert normal_key("Parotid_L") != normal_key("Parotid_R")
    lefts = ("Parotid_L", "Lt Parotid", "Left Parotid", "L_Parotid", "LParotid", "Parotid Lt", "parotid l")
    rights = ("Parotid_R", "Rt Parotid", "Right Parotid", "R_Parotid", "RParotid", "Parotid Rt", "parotid r")
    assert {table.map(name) for name in lefts} == {"Parotid_L"}
    assert {table.map(name) for name in rights} == {"Parotid_R"}
    # Over the whole table: no name with a left marker maps to a right structure, and back.
    for name, synonyms in _shipped_rows():
        for synonym in synonyms:
            words = set(synonym.replace("_", " ").split())
            if words & {"Left", "Lt", "L"}:
                assert table.map(synonym) == name and not name.endswith("_R"), synonym
            if words & {"Right", "Rt", "R"}:
                assert table.map(synonym) == name and not name.endswith("_L"), synonym


def test_no_match_is_reported_not_guessed(table: NameTable) -> None:
    for name in ("Parotid", "Lung", "Ring", "Rectum-PTV", "PTVHigh", "Prost", "", "   "):
        assert table.map(name) is None, name
    assert table.explain("Ring").via is Via.NONE


def test_helper_structures_are_never_renamed(table: NameTable) -> None:
    for name in ("z_ring", "zRing", "Z_PTV_opt", "zPTV", "z Bladder", "z"):
        assert table.map(name) is None, name
        assert table.explain(name).via is Via.HELPER
    # A lower-case letter after z is a word (zygoma), not TG-263's helper prefix.
    assert table.explain("zygoma").via is Via.NONE


def test_target_rule() -> None:
    assert target_name("PTV_High") == "PTV_High"
    assert target_name("ptv_high") == "PTV_High"
    assert target_name("PTV 70") == "PTV_70"
    assert target_name("ptv_70gy") == "PTV_70Gy"
    assert target_name("PTV_5040cgy") == "PTV_5040cGy"
    assert target_name("PTV_50.4Gy") == "PTV_50.4Gy"
    assert target_name("PTV  low") == "PTV_Low"
    assert target_name("ptv_eval") == "PTV_Eval"
    assert target_name("gtvp") == "GTVp"
    assert target_name("CTVN_High") == "CTVn_High"
    assert target_name("ctvsb") == "CTVsb"
    assert target_name("PTV2") == "PTV2"
    assert target_name("igtv") == "IGTV"
    assert target_name("PTV70") == "PTV70"  # a spatial index to TG-263: kept, not read as a dose
    assert target_name("PTV_Boost_MR") == "PTV_Boost_MR"  # other qualifiers as written
    for name in ("PTV-Rectum", "PTV+5mm", "PTVHigh", "GTVparotid", "Ptvx", "xPTV", "Parotid_L"):
        assert target_name(name) is None, name


def test_targets_through_the_table(table: NameTable) -> None:
    assert table.map("ptv 70") == "PTV_70"
    assert table.explain("ptv 70").via is Via.TARGET
    assert table.map("ptv") == "PTV"
    assert table.map("PTV-Rectum") is None


# -- site table --------------------------------------------------------------------------------

def test_site_synonyms_extend_the_table(tmp_path: Path) -> None:
    site = _site(tmp_path, "# site names\nsite_name,maps_to\n"
                           "Parotide G,Parotid_L\n"
                           "Moelle,SpinalCord\n"
                           "PTV Haut,PTV_High\n"
                           "ADP1,site:Prostate_ADP\n"
                           "Prostate adaptive,Prostate_ADP\n")
    table = NameTable.load(site)
    assert table.map("parotide_g") == "Parotid_L"
    assert table.map("MOELLE") == "SpinalCord"
    assert table.map("ptv haut") == "PTV_High"
    assert table.map("ADP1") == "Prostate_ADP"
    assert table.map("prostate adaptive") == "Prostate_ADP"
    assert table.map("Prostate_ADP") == "Prostate_ADP"
    assert table.explain("Moelle").via is Via.SITE
    assert table.site_names == {"Prostate_ADP"}
    # Without the site file none of these is known.
    assert NameTable.load().map("Moelle") is None


@pytest.mark.parametrize(("text", "line", "words"), [
    ("site_name,maps_to\nMoelle,Spinal_Cord_X\n", 2, "not a TG-263 name"),
    ("site_name,maps_to\nMoelle,spinalcord\n", 2, "did you mean 'SpinalCord'"),
    ("# c\n\nMoelle,SpinalCord\nmoelle,Brainstem\n", 4, "already maps to 'SpinalCord'"),
    ("site_name,maps_to\nCord,Brainstem\n", 2, "already maps to 'SpinalCord'"),
    ("site_name,maps_to\nParotid_R,Parotid_L\n", 2, "already maps to 'Parotid_R'"),
    ("site_name,maps_to\nMoelle,SpinalCord,extra\n", 2, "expected 2 columns"),
    ("site_name,maps_to\nz_ring,External\n", 2, "helper"),
    ("site_name,maps_to\nMoelle,\n", 2, "empty maps_to"),
    ("site_name,maps_to\nX,site:Spinal Cord\n", 2, "already 'SpinalCord'"),
])
def test_site_file_errors_name_file_and_line(tmp_path: Path, text: str, line: int, words: str) -> None:
    site = _site(tmp_path, text)
    with pytest.raises(NameTableError) as error:
        NameTable.load(site)
    message = str(error.value)
    assert message.startswith(f"{site}:{line}:"), message
    assert words in message, message


def test_site_duplicate_of_same_mapping_is_harmless(tmp_path: Path) -> None:
    site = _site(tmp_path, "Moelle,SpinalCord\nmoelle,SpinalCord\nSpinal Cord,SpinalCord\n")
    assert NameTable.load(site).map("MOELLE") == "SpinalCord"


# -- shipped data integrity ---------------------------------------------------------------------

def test_shipped_table_integrity(table: NameTable) -> None:
    rows = _shipped_rows()
    names = [name for name, _ in rows]
    assert len(names) >= 150
    assert len(set(names)) == len(names)
    assert table.tg263_names == set(names)
    text = SHIPPED_CSV.read_text(encoding="utf-8")
    assert text.startswith("#") and "TG-263" in text.splitlines()[0]
    owner: dict[str, str] = {}
    for name, synonyms in rows:
        assert table.map(name) == name, name
        for spelling in (name, *synonyms):
            key = normal_key(spelling)
            assert owner.setdefault(key, name) == name, f"{spelling!r}: {owner[key]} and {name}"
            assert table.map(spelling) == name, spelling
    for required in ("Parotid_L", "Parotid_R", "SpinalCord", "Brainstem", "Lung_L", "Heart", "Bladder",
                     "Rectum", "Femur_Head_L", "OpticNrv_L", "Eye_L", "Lens_L", "Cochlea_L", "Esophagus",
                     "Bone_Mandible", "Larynx", "Body", "External", "GTV", "CTV", "ITV", "PTV"):
        assert required in table.tg263_names, required


def test_shipped_file_with_a_clash_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "tg263.csv"
    bad.write_text("name,synonyms\nParotid_L,Lt Parotid\nParotid_R,lt_parotid\n", encoding="utf-8")
    with pytest.raises(NameTableError, match=r"tg263.csv:3: 'lt_parotid'"):
        NameTable.load(tg263_csv=bad)


# -- datasets ---------------------------------------------------------------------------------

def _with_rois(ds: Dataset, names: list[str]) -> Dataset:
    """The synthetic structure set with its ROIs named `names` (numbers 1..n kept distinct)."""
    template = ds.StructureSetROISequence[0]
    observation = ds.RTROIObservationsSequence[0]
    rois, observations = [], []
    for number, name in enumerate(names, start=1):
        roi = deepcopy(template)
        roi.ROINumber = number
        roi.ROIName = name
        rois.append(roi)
        item = deepcopy(observation)
        item.ObservationNumber = number
        item.ReferencedROINumber = number
        observations.append(item)
    ds.StructureSetROISequence = rois
    ds.RTROIObservationsSequence = observations
    ds.ROIContourSequence = ds.ROIContourSequence[:1]
    return ds


def test_rtstruct_renamed_in_place_and_nothing_else(table: NameTable) -> None:
    rtstruct = make_rt_set(n_slices=3, rows=16, columns=16).rtstruct
    assert [roi.ROIName for roi in rtstruct.StructureSetROISequence] == ["BODY", "PTV", "Rectum"]
    before = deepcopy(rtstruct)
    rtstruct.StructureSetROISequence[2].ROIName = "rectum"
    before.StructureSetROISequence[2].ROIName = "rectum"

    results = normalize_dataset(rtstruct, table)

    assert [(r.before, r.after, r.status) for r in results] == [
        ("BODY", "Body", Status.RENAMED), ("PTV", "PTV", Status.KEPT), ("rectum", "Rectum", Status.RENAMED),
    ]
    assert [r.roi_number for r in results] == [1, 2, 3]
    assert [roi.ROIName for roi in rtstruct.StructureSetROISequence] == ["Body", "PTV", "Rectum"]
    # Everything but the names is as it was: numbers, references, UIDs.
    assert [roi.ROINumber for roi in rtstruct.StructureSetROISequence] == [1, 2, 3]
    assert rtstruct.ReferencedFrameOfReferenceSequence == before.ReferencedFrameOfReferenceSequence
    assert rtstruct.ROIContourSequence == before.ROIContourSequence
    assert rtstruct.RTROIObservationsSequence == before.RTROIObservationsSequence
    assert rtstruct.SOPInstanceUID == before.SOPInstanceUID
    for roi, old in zip(rtstruct.StructureSetROISequence, before.StructureSetROISequence, strict=True):
        old.ROIName = roi.ROIName
        assert roi == old
    before.StructureSetROISequence = rtstruct.StructureSetROISequence
    assert rtstruct == before


def test_issue_set_in_a_structure_set_with_conflict(table: NameTable) -> None:
    rtstruct = _with_rois(make_rt_set(n_slices=3, rows=16, columns=16).rtstruct,
                          ["PTV_High", "Lt Parotid", "parotid_l", "SpinalCord", "z_ring", "Ring"])
    results = normalize_dataset(rtstruct, table, plan_label=False)
    got = {r.before: (r.after, r.status) for r in results}
    assert got["PTV_High"] == ("PTV_High", Status.KEPT)
    assert got["SpinalCord"] == ("SpinalCord", Status.KEPT)
    assert got["z_ring"] == (None, Status.HELPER)
    assert got["Ring"] == (None, Status.NO_MATCH)
    # Both parotids would become Parotid_L: neither is renamed, both are reported.
    assert got["Lt Parotid"] == (None, Status.CONFLICT)
    assert got["parotid_l"] == (None, Status.CONFLICT)
    conflict = next(r for r in results if r.before == "Lt Parotid")
    assert "Parotid_L" in conflict.detail and "ROI 3" in conflict.detail
    assert [roi.ROIName for roi in rtstruct.StructureSetROISequence] == [
        "PTV_High", "Lt Parotid", "parotid_l", "SpinalCord", "z_ring", "Ring"]
    assert unmapped(results) == ["Ring"]


def test_exact_name_keeps_it_and_the_synonym_is_the_conflict(table: NameTable) -> None:
    rtstruct = _with_rois(make_rt_set(n_slices=3, rows=16, columns=16).rtstruct,
                          ["Lt Parotid", "Parotid_L", "Rt Parotid"])
    results = normalize_dataset(rtstruct, table)
    assert [(r.after, r.status) for r in results] == [
        (None, Status.CONFLICT), ("Parotid_L", Status.KEPT), ("Parotid_R", Status.RENAMED)]
    assert [roi.ROIName for roi in rtstruct.StructureSetROISequence] == ["Lt Parotid", "Parotid_L",
                                                                          "Parotid_R"]


def test_observation_label_follows_only_a_copy_of_the_name(table: NameTable) -> None:
    rtstruct = _with_rois(make_rt_set(n_slices=3, rows=16, columns=16).rtstruct,
                          ["Lt Parotid", "Cord"])
    rtstruct.RTROIObservationsSequence[0].ROIObservationLabel = "Lt Parotid"
    rtstruct.RTROIObservationsSequence[1].ROIObservationLabel = "cord contour"
    results = normalize_dataset(rtstruct, table)
    assert rtstruct.RTROIObservationsSequence[0].ROIObservationLabel == "Parotid_L"
    assert rtstruct.RTROIObservationsSequence[1].ROIObservationLabel == "cord contour"
    assert Renamed("Lt Parotid", "Parotid_L", "ROIObservationLabel", 1, Status.RENAMED) in results
    assert len([r for r in results if r.attribute == "ROIObservationLabel"]) == 1


def test_rtplan_label_mapped(tmp_path: Path) -> None:
    table = NameTable.load(_site(tmp_path, "ADP1,site:Prostate_ADP\n"))
    rtset = make_rt_set(n_slices=3, rows=16, columns=16)
    rtplan = rtset.rtplan
    before = deepcopy(rtplan)
    results = normalize_dataset(rtplan, table)
    assert results == [Renamed("ADP1", "Prostate_ADP", "RTPlanLabel", None, Status.RENAMED, "site")]
    assert rtplan.RTPlanLabel == "Prostate_ADP"
    # The dose reference description is free text and stays; so does the rest of the plan.
    assert rtplan.DoseReferenceSequence[0].DoseReferenceDescription == "PTV"
    before.RTPlanLabel = "Prostate_ADP"
    assert rtplan == before
    # Switched off, or unknown to the table: left as it is and said so.
    other = deepcopy(rtset.rtplan)
    other.RTPlanLabel = "ADP1"
    assert normalize_dataset(other, table, plan_label=False) == []
    assert other.RTPlanLabel == "ADP1"
    unknown = normalize_dataset(rtset.rtplan, NameTable.load())
    assert unknown[0].after is None and unknown[0].status is Status.NO_MATCH


def test_plan_label_too_long_for_sh_is_left(tmp_path: Path) -> None:
    table = NameTable.load(_site(tmp_path, "ADP1,site:Prostate_Adaptive_Plan\n"))
    rtplan = make_rt_set(n_slices=3, rows=16, columns=16).rtplan
    results = normalize_dataset(rtplan, table)
    assert results[0].after is None and results[0].status is Status.TOO_LONG
    assert rtplan.RTPlanLabel == "ADP1"


def test_roi_names_switched_off_leaves_structures(table: NameTable) -> None:
    rtstruct = make_rt_set(n_slices=3, rows=16, columns=16).rtstruct
    assert normalize_dataset(rtstruct, table, roi_names=False) == []
    assert rtstruct.StructureSetROISequence[0].ROIName == "BODY"
