"""De-identification keeps clinical content and validity: a full RT set (CT, RTSTRUCT, RTPLAN,
RTDOSE) shaped like a planning system's export is de-identified with the full profile and both
the originals and the copies are checked by dicom3tools' dciodvfy: a copy has no error its
original did not have. ROI names and plan labels that share a word with the patient's name stay;
a label that is the StudyID does not; every change is in the object's report."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from pydicom import Dataset, dcmread

from orthanc_plugin.deid.keys import Pseudonymizer
from orthanc_plugin.deid.model import DeidSettings, deidentify
from orthanc_plugin.deid.profile import Option, Profile
from tests.support.rtset import RtSet, make_rt_set, write_datasets

SECRET = "validity-test-secret"


def clinical_set() -> RtSet:
    rtset = make_rt_set("RT4711", "Smith^Breast^Rose", plan_label="Breast L", n_slices=3)
    for ds in rtset.all():
        ds.StudyID = "RT4711-S"
        ds.OperatorsName = "Tech^One"
        ds.StudyDescription = "Breast left, Rose Smith"
    structure = rtset.rtstruct
    structure.StructureSetLabel = "RT4711-S"       # the StudyID as the label: an identifier
    structure.StructureSetROISequence[1].ROIName = "Breast"
    structure.RTROIObservationsSequence[1].ROIObservationLabel = "Breast"
    for ds in (structure, rtset.rtplan):
        ds.ApprovalStatus = "APPROVED"
        ds.ReviewDate, ds.ReviewTime = "20240102", "101500"
        ds.ReviewerName = "Doctor^Who"
    return rtset


def dciodvfy_errors(path: Path) -> set[str]:
    """dciodvfy's error lines, with values and element positions taken out so that the same
    problem in an original and its copy compares equal."""
    done = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    lines = (done.stdout + done.stderr).splitlines()
    return {re.sub(r"\[\d+\]|\"[^\"]*\"|=.*$", "", line).strip()
            for line in lines if line.startswith("Error")}


@pytest.fixture(scope="module")
def deidentified(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path, list[str]]]:
    if shutil.which("dciodvfy") is None:
        pytest.fail("dciodvfy (dicom3tools) is installed by scripts/setup.sh: run make test")
    folder = tmp_path_factory.mktemp("validity")
    rtset = clinical_set()
    originals = write_datasets(rtset.all(), folder / "original")
    settings = DeidSettings(Profile.FULL, frozenset({Option.RETAIN_LONGITUDINAL_MODIFIED_DATES}))
    keys = Pseudonymizer(SECRET)
    out: dict[str, tuple[Path, Path, list[str]]] = {}
    for path in originals:
        ds = dcmread(path)
        result = deidentify(ds, settings, keys)
        copy = folder / "copy" / path.name
        copy.parent.mkdir(exist_ok=True)
        ds.save_as(copy, enforce_file_format=True)
        out.setdefault(ds.Modality, (path, copy, result.changes))
    return out


def test_copies_have_no_dciodvfy_error_their_original_lacks(
    deidentified: dict[str, tuple[Path, Path, list[str]]]
) -> None:
    assert set(deidentified) == {"CT", "RTSTRUCT", "RTPLAN", "RTDOSE"}
    for modality, (original, copy, _) in deidentified.items():
        new = dciodvfy_errors(copy) - dciodvfy_errors(original)
        assert new == set(), f"{modality}: {new}"


def test_type_2_attributes_stay_present_and_empty(
    deidentified: dict[str, tuple[Path, Path, list[str]]]
) -> None:
    plan = dcmread(deidentified["RTPLAN"][1])
    structure = dcmread(deidentified["RTSTRUCT"][1])
    for ds in (plan, structure):
        assert "OperatorsName" in ds and not ds.OperatorsName
        assert "ReviewerName" in ds and not ds.ReviewerName
        assert "StudyID" in ds and not ds.StudyID


def test_clinical_labels_stay_and_an_identifier_as_a_label_goes(
    deidentified: dict[str, tuple[Path, Path, list[str]]]
) -> None:
    structure = dcmread(deidentified["RTSTRUCT"][1])
    plan = dcmread(deidentified["RTPLAN"][1])
    names = [roi.ROIName for roi in structure.StructureSetROISequence]
    assert "Breast" in names                                   # shares a word with the name
    assert structure.RTROIObservationsSequence[1].ROIObservationLabel == "Breast"
    assert plan.RTPlanLabel == "Breast L"
    assert structure.StructureSetLabel == "DEIDENTIFIED"       # it was the StudyID
    assert "StudyDescription" not in structure or "Smith" not in str(structure.StudyDescription)
    changes = deidentified["RTSTRUCT"][2]
    assert "StructureSetLabel: replaced by 'DEIDENTIFIED' (the whole label was an identifier " \
           "of the patient)" in changes
    assert "ReviewerName: emptied" in changes and "PatientName: replaced by the pseudonym" in changes


def test_whole_tokens_only() -> None:
    ds = Dataset()
    ds.PatientID, ds.PatientName = "4711", "Rose^Ann"
    ds.SOPInstanceUID = "1.2.3"
    ds.ImageComments = "Patient 4711 seen"      # the ID as a token: found
    ds.add_new(0x00204000, "LT", "x")           # ImageComments is (0020,4000); keep one element
    ds.SeriesDescription = "Roseanne protocol 47110"
    keys = Pseudonymizer(SECRET)
    result = deidentify(ds, DeidSettings(Profile.FULL, frozenset({Option.CLEAN_DESCRIPTORS})),
                        keys)
    assert ds.SeriesDescription == "Roseanne protocol 47110"   # neither Rose nor 4711 as tokens
    assert not any("SeriesDescription" in change for change in result.changes)


def test_scrub_clinical_labels_is_a_rule_option() -> None:
    ds = clinical_set().rtstruct
    deidentify(ds, DeidSettings(Profile.FULL, frozenset({Option.SCRUB_CLINICAL_LABELS})),
               Pseudonymizer(SECRET))
    assert [roi.ROIName for roi in ds.StructureSetROISequence][1] == "DEIDENTIFIED"
