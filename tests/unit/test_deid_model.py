"""De-identification of a whole RT set, object by object, in any order, with a keyed UID map."""

from __future__ import annotations

import random
from collections.abc import Iterator
from io import BytesIO

import pydicom
import pytest
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from orthanc_plugin.deid.keys import Pseudonymizer
from orthanc_plugin.deid.model import DeidSettings, deidentify
from orthanc_plugin.deid.profile import Option, Profile
from tests.support.rtset import INSTITUTION, make_rt_set

SECRET = "0123456789abcdef0123456789abcdef"
FULL = DeidSettings(Profile.FULL)


def reread(ds: Dataset) -> Dataset:
    """As the executor sees it: the Part 10 bytes of a stored file."""
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return pydicom.dcmread(BytesIO(buffer.getvalue()))


def walk(ds: Dataset) -> Iterator[DataElement]:
    for element in ds:
        yield element
        if element.VR == "SQ":
            for item in element.value or []:
                yield from walk(item)


def all_uids(ds: Dataset) -> set[str]:
    uids = set()
    for element in walk(ds):
        if element.VR == "UI" and element.value:
            values = element.value if isinstance(element.value, list | pydicom.multival.MultiValue) \
                else [element.value]
            uids.update((element.keyword, str(v)) for v in values)
    return {uid for _, uid in uids}


def texts(ds: Dataset) -> list[str]:
    found = []
    for element in walk(ds):
        if element.VR in ("SQ", "OB", "OW", "OF", "UN") or element.value is None:
            continue
        found.append(str(element.value))
    for element in ds.file_meta:
        found.append(str(element.value))
    return found


@pytest.fixture
def rtset_and_copies() -> tuple:
    rtset = make_rt_set("PAT-4711", "Doe^Jane^Marie", n_slices=3)
    rtset.ct[0].add_new(0x00091010, "LO", "Siemens secret")
    rtset.ct[0].add_new(0x00090010, "LO", "ACME 1.0")
    rtset.ct[0].StationName = "LINAC-ROOM-3"
    originals = [reread(ds) for ds in rtset.all()]
    order = list(range(len(originals)))
    random.Random(7).shuffle(order)
    copies: dict[int, Dataset] = {}
    for index in order:  # each object alone, as they arrive days apart
        ds = reread(originals[index])
        deidentify(ds, FULL, Pseudonymizer(SECRET))
        copies[index] = reread(ds)
    return rtset, originals, [copies[i] for i in range(len(originals))]


def test_references_still_resolve_after_separate_deidentification(rtset_and_copies: tuple) -> None:
    rtset, originals, copies = rtset_and_copies
    ct, struct, plan, dose = copies[:3], copies[3], copies[4], copies[5]
    ct_uids = {str(ds.SOPInstanceUID) for ds in ct}
    assert plan.ReferencedStructureSetSequence[0].ReferencedSOPInstanceUID == struct.SOPInstanceUID
    assert dose.ReferencedRTPlanSequence[0].ReferencedSOPInstanceUID == plan.SOPInstanceUID
    frame = struct.ReferencedFrameOfReferenceSequence[0]
    assert frame.FrameOfReferenceUID == ct[0].FrameOfReferenceUID == plan.FrameOfReferenceUID
    study_item = frame.RTReferencedStudySequence[0]
    assert study_item.ReferencedSOPInstanceUID == ct[0].StudyInstanceUID
    series_item = study_item.RTReferencedSeriesSequence[0]
    assert series_item.SeriesInstanceUID == ct[0].SeriesInstanceUID
    assert {str(i.ReferencedSOPInstanceUID) for i in series_item.ContourImageSequence} == ct_uids
    for roi in struct.ROIContourSequence:
        for contour in roi.ContourSequence:
            assert contour.ContourImageSequence[0].ReferencedSOPInstanceUID in ct_uids
    assert {str(ds.StudyInstanceUID) for ds in copies} == {str(ct[0].StudyInstanceUID)}
    # class UIDs are kept, everything else is new and under 2.25.
    for original, copy in zip(originals, copies, strict=True):
        assert copy.SOPClassUID == original.SOPClassUID
        assert copy.file_meta.MediaStorageSOPInstanceUID == copy.SOPInstanceUID
        assert copy.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
    assert study_item.ReferencedSOPClassUID == rtset.rtstruct.ReferencedFrameOfReferenceSequence[
        0].RTReferencedStudySequence[0].ReferencedSOPClassUID
    for copy in copies:
        assert copy.SOPInstanceUID.startswith("2.25.") and len(copy.SOPInstanceUID) <= 64


def test_no_identifying_value_remains_in_any_element(rtset_and_copies: tuple) -> None:
    _, originals, copies = rtset_and_copies
    forbidden = {"PAT-4711", "Doe", "Jane", "Marie", "19600101", "ACC001", INSTITUTION,
                 "LINAC-ROOM-3", "Siemens secret", str(originals[0].StudyDate)}
    for original in originals:
        forbidden |= {uid for uid in all_uids(original) if not uid.startswith("1.2.840.10008.")}
    for copy in copies:
        values = texts(copy)
        leaks = {f for f in forbidden for v in values if f.lower() in v.lower()}
        assert leaks == set(), f"{copy.Modality}: {leaks}"
        assert copy.PatientIdentityRemoved == "YES"
        assert copy.PatientID.startswith("ANON-") and copy.PatientName == copy.PatientID
        assert copy.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
        assert copy.LongitudinalTemporalInformationModified == "REMOVED"
        assert not [e for e in copy if e.tag.is_private]
    assert copies[0].PatientBirthDate == ""
    assert copies[3].ROIContourSequence  # the contours themselves are untouched
    assert copies[4].RTPlanLabel == originals[4].RTPlanLabel


def test_same_original_maps_to_same_uid_across_restarts_and_differs_by_secret() -> None:
    first, again = Pseudonymizer(SECRET), Pseudonymizer(SECRET)
    other = Pseudonymizer("another-secret-of-enough-length!")
    uid = "1.2.826.0.1.3680043.8.498.1234"
    assert first.uid(uid) == again.uid(uid) != other.uid(uid)
    assert first.patient_id("PAT-1", "R{hash}") == again.patient_id("PAT-1", "R{hash}")
    assert first.patient_id("PAT-1", "R{hash}") != first.patient_id("PAT-2", "R{hash}")
    assert first.date_offset_days("PAT-1") == again.date_offset_days("PAT-1") <= -365
    longest = first.uid("9" * 64)
    assert longest.startswith("2.25.") and len(longest) <= 64 and not longest[5:].startswith("0")


def test_second_study_of_the_patient_maps_to_the_same_pseudonym_and_offset() -> None:
    settings = DeidSettings(Profile.FULL, frozenset({Option.RETAIN_LONGITUDINAL_MODIFIED_DATES}))
    first = make_rt_set("PAT-9", "Roe^Richard", n_slices=1)
    later = make_rt_set("PAT-9", "Roe^Richard", n_slices=1)
    a, b = reread(first.ct[0]), reread(later.ct[0])
    original_date = str(a.StudyDate)
    result_a = deidentify(a, settings, Pseudonymizer(SECRET))
    result_b = deidentify(b, settings, Pseudonymizer(SECRET))
    assert a.PatientID == b.PatientID == result_a.new_patient_id
    assert result_a.date_offset_days == result_b.date_offset_days is not None
    assert a.StudyDate != original_date and len(a.StudyDate) == 8
    from datetime import date, timedelta
    shifted = date(int(original_date[:4]), int(original_date[4:6]), int(original_date[6:]))
    assert a.StudyDate == (shifted + timedelta(days=result_a.date_offset_days)).strftime("%Y%m%d")
    assert a.StudyTime == first.ct[0].StudyTime
    assert a.LongitudinalTemporalInformationModified == "MODIFIED"
    assert a.StudyInstanceUID != b.StudyInstanceUID


def test_options_keep_what_they_name() -> None:
    rtset = make_rt_set("PAT-5", "Poe^Edgar", n_slices=1, study_description="Prostate Poe boost")
    ds = reread(rtset.ct[0])
    ds.StationName = "TRUEBEAM1"
    ds.add_new(0x00091010, "LO", "keep me")
    ds.add_new(0x00090010, "LO", "VARIAN")
    ds.add_new(0x00111010, "LO", "drop me")
    ds.add_new(0x00110010, "LO", "OTHER")
    settings = DeidSettings(
        Profile.FULL,
        frozenset({Option.RETAIN_PATIENT_CHARACTERISTICS, Option.RETAIN_INSTITUTION_IDENTITY,
                   Option.RETAIN_DEVICE_IDENTITY, Option.CLEAN_DESCRIPTORS, Option.RETAIN_UIDS}),
        keep_private_creators=("VARIAN",),
    )
    original_uid = str(ds.SOPInstanceUID)
    deidentify(ds, settings, Pseudonymizer(SECRET))
    assert ds.PatientSex == "M"
    assert ds.InstitutionName == INSTITUTION
    assert ds.StationName == "TRUEBEAM1"
    assert ds.StudyDescription == "Prostate boost"
    assert ds.SOPInstanceUID == original_uid
    assert ds[0x00091010].value == "keep me" and 0x00111010 not in ds
    assert len(ds.DeidentificationMethodCodeSequence) == 6


def test_partial_profile_replaces_the_id_and_removes_the_accession_number() -> None:
    rtset = make_rt_set("PAT-6", "Moe^Mary", n_slices=1)
    ds = reread(rtset.ct[0])
    settings = DeidSettings(Profile.PARTIAL, patient_id_pattern="RESEARCH-{hash}")
    result = deidentify(ds, settings, Pseudonymizer(SECRET))
    assert ds.PatientID == result.new_patient_id and ds.PatientID.startswith("RESEARCH-")
    assert ds.AccessionNumber == ""
    assert ds.PatientName == "Moe^Mary"
    assert ds.PatientIdentityRemoved == "NO"
    assert ds.SOPInstanceUID == Pseudonymizer(SECRET).uid(str(rtset.ct[0].SOPInstanceUID))
