"""Synthetic RT data sets must be files a real receiver accepts, with references that resolve."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    RTDoseStorage,
    RTPlanStorage,
    RTStructureSetStorage,
    generate_uid,
)

from tests.support.rtset import (
    RtSet,
    add_plan,
    make_ct_series,
    make_rt_set,
    write_datasets,
    write_malformed,
)

DCMDUMP = shutil.which("dcmdump") or "/usr/bin/dcmdump"
DCIODVFY = "/usr/bin/dciodvfy"


@pytest.fixture(scope="module")
def rtset() -> RtSet:
    return make_rt_set("UNIT-1", "Unit^Test", "ADP1", n_slices=6, rows=32, columns=40,
                       pixel_spacing=(1.5, 1.0), slice_thickness=3.0)


@pytest.fixture(scope="module")
def written(rtset: RtSet, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return rtset.write(tmp_path_factory.mktemp("rtset"))


@pytest.fixture(scope="module")
def read_back(written: list[Path]) -> list[FileDataset]:
    return [dcmread(path) for path in written]


def by_modality(datasets: list[FileDataset], modality: str) -> list[FileDataset]:
    return [ds for ds in datasets if ds.Modality == modality]


def frame_of_reference(ds: Dataset) -> str:
    # The RT Structure Set IOD has no Frame of Reference module: its frame is the referenced one.
    if ds.Modality == "RTSTRUCT":
        return str(ds.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID)
    return str(ds.FrameOfReferenceUID)


def test_files_are_part10_in_the_order_of_all(
    rtset: RtSet, written: list[Path], read_back: list[FileDataset]
) -> None:
    assert [ds.Modality for ds in read_back] == ["CT"] * 6 + ["RTSTRUCT", "RTPLAN", "RTDOSE"]
    assert [ds.SOPInstanceUID for ds in read_back] == [ds.SOPInstanceUID for ds in rtset.all()]
    for path, ds in zip(written, read_back, strict=True):
        assert path.read_bytes()[128:132] == b"DICM"
        assert re.fullmatch(r"[A-Za-z0-9._-]+\.dcm", path.name)
        meta = ds.file_meta
        assert meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert meta.MediaStorageSOPClassUID == ds.SOPClassUID
        assert meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert meta.ImplementationClassUID
    assert len({path.name for path in written}) == len(written)
    assert [path.name for path in written] == sorted(path.name for path in written)


def test_sop_classes(read_back: list[FileDataset]) -> None:
    expected = {"CT": CTImageStorage, "RTSTRUCT": RTStructureSetStorage,
                "RTPLAN": RTPlanStorage, "RTDOSE": RTDoseStorage}
    for ds in read_back:
        assert ds.SOPClassUID == expected[ds.Modality]


def test_one_patient_study_and_frame_of_reference(
    rtset: RtSet, read_back: list[FileDataset]
) -> None:
    for ds in read_back:
        assert ds.PatientID == rtset.patient_id == "UNIT-1"
        assert str(ds.PatientName) == rtset.patient_name == "Unit^Test"
        assert ds.StudyInstanceUID == rtset.study_uid
        assert ds.StudyDescription == "Prostate"
        assert ds.AccessionNumber == read_back[0].AccessionNumber
        assert frame_of_reference(ds) == rtset.frame_of_reference_uid
    series = {ds.Modality: ds.SeriesInstanceUID for ds in read_back}
    assert len(set(series.values())) == 4
    assert len({ds.SeriesInstanceUID for ds in by_modality(read_back, "CT")}) == 1


def test_ct_geometry_and_pixels(read_back: list[FileDataset]) -> None:
    ct = by_modality(read_back, "CT")
    zs = [float(ds.ImagePositionPatient[2]) for ds in ct]
    assert np.allclose(np.diff(zs), 3.0)
    assert [int(ds.InstanceNumber) for ds in ct] == list(range(1, 7))
    first = ct[0]
    assert [float(v) for v in first.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    assert [float(v) for v in first.PixelSpacing] == [1.5, 1.0]
    assert (first.Rows, first.Columns) == (32, 40)
    assert first.PixelRepresentation == 1 and first.BitsAllocated == 16
    hu = first.pixel_array * float(first.RescaleSlope) + float(first.RescaleIntercept)
    assert hu.shape == (32, 40)
    assert hu[16, 20] == 0  # body in the middle
    assert hu[0, 0] == -1000  # air in the corner
    for attribute in ("StudyDate", "StudyTime", "PatientBirthDate", "PatientSex",
                      "Manufacturer", "InstitutionName", "SliceThickness"):
        assert attribute in first


def test_structure_set_references_every_ct_slice(read_back: list[FileDataset]) -> None:
    ct = by_modality(read_back, "CT")
    (struct,) = by_modality(read_back, "RTSTRUCT")
    frame = struct.ReferencedFrameOfReferenceSequence[0]
    study = frame.RTReferencedStudySequence[0]
    assert study.ReferencedSOPInstanceUID == struct.StudyInstanceUID
    series = study.RTReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == ct[0].SeriesInstanceUID
    listed = [item.ReferencedSOPInstanceUID for item in series.ContourImageSequence]
    assert listed == [ds.SOPInstanceUID for ds in ct]
    assert all(item.ReferencedSOPClassUID == CTImageStorage
               for item in series.ContourImageSequence)


def test_contours_lie_on_the_slices_they_reference(read_back: list[FileDataset]) -> None:
    ct = {ds.SOPInstanceUID: ds for ds in by_modality(read_back, "CT")}
    (struct,) = by_modality(read_back, "RTSTRUCT")
    names = {roi.ROINumber: roi.ROIName for roi in struct.StructureSetROISequence}
    kinds = {obs.ReferencedROINumber: obs.RTROIInterpretedType
             for obs in struct.RTROIObservationsSequence}
    assert {names[n]: kinds[n] for n in names} == {
        "BODY": "EXTERNAL", "PTV": "PTV", "Rectum": "ORGAN"
    }
    first = next(iter(ct.values()))
    x0, y0 = (float(v) for v in first.ImagePositionPatient[:2])
    x1 = x0 + (first.Columns - 1) * float(first.PixelSpacing[1])
    y1 = y0 + (first.Rows - 1) * float(first.PixelSpacing[0])
    for roi in struct.ROIContourSequence:
        assert roi.ReferencedROINumber in names
        assert len(roi.ContourSequence) >= 1
        for contour in roi.ContourSequence:
            assert contour.ContourGeometricType == "CLOSED_PLANAR"
            points = np.array([float(v) for v in contour.ContourData]).reshape(-1, 3)
            assert len(points) == contour.NumberOfContourPoints == 64
            image = ct[contour.ContourImageSequence[0].ReferencedSOPInstanceUID]
            assert np.allclose(points[:, 2], float(image.ImagePositionPatient[2]))
            assert x0 <= points[:, 0].min() and points[:, 0].max() <= x1
            assert y0 <= points[:, 1].min() and points[:, 1].max() <= y1
    contours = {names[roi.ReferencedROINumber]: roi.ContourSequence
                for roi in struct.ROIContourSequence}
    assert len(contours["BODY"]) == len(ct)


def test_plan_references_structure_set(read_back: list[FileDataset]) -> None:
    (struct,) = by_modality(read_back, "RTSTRUCT")
    (plan,) = by_modality(read_back, "RTPLAN")
    reference = plan.ReferencedStructureSetSequence[0]
    assert reference.ReferencedSOPInstanceUID == struct.SOPInstanceUID
    assert reference.ReferencedSOPClassUID == RTStructureSetStorage
    assert plan.RTPlanLabel == "ADP1"
    assert plan.RTPlanName
    assert plan.PlanIntent == "CURATIVE"
    group = plan.FractionGroupSequence[0]
    assert group.NumberOfFractionsPlanned == 20
    beams = plan.BeamSequence
    assert len(beams) >= 2 and group.NumberOfBeams == len(beams)
    assert {b.ReferencedBeamNumber for b in group.ReferencedBeamSequence} == {
        b.BeamNumber for b in beams
    }
    assert all(float(b.BeamMeterset) > 0 for b in group.ReferencedBeamSequence)
    for beam in beams:
        assert beam.BeamName and beam.BeamType == "STATIC" and beam.RadiationType == "PHOTON"
        first = beam.ControlPointSequence[0]
        assert float(first.NominalBeamEnergy) == 6
        assert "GantryAngle" in first
        assert beam.NumberOfControlPoints == len(beam.ControlPointSequence)
    assert len({float(b.ControlPointSequence[0].GantryAngle) for b in beams}) == len(beams)
    assert float(plan.DoseReferenceSequence[0].TargetPrescriptionDose) == 60.0
    assert plan.PatientSetupSequence[0].PatientPosition == "HFS"


def test_dose_references_plan_and_covers_the_ct(read_back: list[FileDataset]) -> None:
    ct = by_modality(read_back, "CT")
    (plan,) = by_modality(read_back, "RTPLAN")
    (dose,) = by_modality(read_back, "RTDOSE")
    assert dose.ReferencedRTPlanSequence[0].ReferencedSOPInstanceUID == plan.SOPInstanceUID
    assert (dose.DoseUnits, dose.DoseType, dose.DoseSummationType) == ("GY", "PHYSICAL", "PLAN")
    offsets = [float(v) for v in dose.GridFrameOffsetVector]
    assert dose.NumberOfFrames == len(offsets) and offsets[0] == 0
    grid = dose.pixel_array * float(dose.DoseGridScaling)
    assert grid.shape == (dose.NumberOfFrames, dose.Rows, dose.Columns)
    assert 55 < grid.max() < 70 and grid.min() == 0
    spacing = [float(v) for v in dose.PixelSpacing]
    assert spacing[0] > float(ct[0].PixelSpacing[0]) or spacing[1] > float(ct[0].PixelSpacing[1])
    x, y, z = (float(v) for v in dose.ImagePositionPatient)
    cx, cy, cz = (float(v) for v in ct[0].ImagePositionPatient)
    assert (x, y, z) == pytest.approx((cx, cy, cz))
    assert x + (dose.Columns - 1) * spacing[1] >= cx + (ct[0].Columns - 1) * float(
        ct[0].PixelSpacing[1])
    assert y + (dose.Rows - 1) * spacing[0] >= cy + (ct[0].Rows - 1) * float(
        ct[0].PixelSpacing[0])
    assert z + offsets[-1] >= float(ct[-1].ImagePositionPatient[2])


def test_add_plan_shares_the_structure_set(rtset: RtSet, tmp_path: Path) -> None:
    plan, dose = add_plan(rtset, "SCHED")
    assert dose is not None
    assert plan.RTPlanLabel == "SCHED"
    assert (plan.ReferencedStructureSetSequence[0].ReferencedSOPInstanceUID
            == rtset.rtstruct.SOPInstanceUID)
    assert dose.ReferencedRTPlanSequence[0].ReferencedSOPInstanceUID == plan.SOPInstanceUID
    assert plan.StudyInstanceUID == dose.StudyInstanceUID == rtset.study_uid
    assert plan.SeriesInstanceUID not in {ds.SeriesInstanceUID for ds in rtset.all()}
    assert rtset.rtplan.RTPlanLabel == "ADP1"  # the set itself is untouched
    for path in write_datasets([plan, dose], tmp_path):
        assert dcmread(path).SOPInstanceUID in {plan.SOPInstanceUID, dose.SOPInstanceUID}


def test_add_plan_in_another_study_of_the_same_patient(rtset: RtSet) -> None:
    other = generate_uid()
    plan, dose = add_plan(rtset, "ADP2", study_uid=other, with_dose=False)
    assert dose is None
    assert plan.StudyInstanceUID == other != rtset.study_uid
    assert plan.PatientID == rtset.patient_id
    assert plan.FrameOfReferenceUID == rtset.frame_of_reference_uid
    assert (plan.ReferencedStructureSetSequence[0].ReferencedSOPInstanceUID
            == rtset.rtstruct.SOPInstanceUID)


def test_every_uid_is_fresh(rtset: RtSet) -> None:
    second = make_rt_set("UNIT-1", "Unit^Test", "ADP1", n_slices=6, rows=32, columns=40)
    extra = [ds for ds in add_plan(rtset, "SCHED") if ds is not None]
    objects = [*rtset.all(), *second.all(), *extra]
    sop_uids = [ds.SOPInstanceUID for ds in objects]
    assert len(set(sop_uids)) == len(sop_uids)
    assert second.study_uid != rtset.study_uid
    assert second.frame_of_reference_uid != rtset.frame_of_reference_uid
    series = {ds.SeriesInstanceUID for ds in rtset.all()}
    assert series.isdisjoint(ds.SeriesInstanceUID for ds in second.all())


def test_without_dose_and_with_given_study(tmp_path: Path) -> None:
    study = generate_uid()
    rtset = make_rt_set(with_dose=False, study_uid=study, n_slices=2, rows=8, columns=8,
                        plan_name="Prostate 60/20", fractions=30, prescription_gy=70.0)
    assert rtset.rtdose is None and rtset.study_uid == study
    assert [ds.Modality for ds in rtset.all()][-2:] == ["RTSTRUCT", "RTPLAN"]
    assert rtset.rtplan.RTPlanName == "Prostate 60/20"
    assert rtset.rtplan.FractionGroupSequence[0].NumberOfFractionsPlanned == 30
    assert len(rtset.write(tmp_path)) == 4


def test_ct_series_parameters() -> None:
    series_uid = generate_uid()
    ct = make_ct_series(patient_id="P", patient_name="P^Q", study_uid=generate_uid(),
                        frame_of_reference_uid=generate_uid(), n_slices=3, rows=10, columns=12,
                        origin=(-6.0, -5.0, 10.0), series_uid=series_uid,
                        accession_number="ACC9", study_description="Pelvis")
    assert [float(ds.ImagePositionPatient[2]) for ds in ct] == [10.0, 12.5, 15.0]
    assert {ds.SeriesInstanceUID for ds in ct} == {series_uid}
    assert ct[0].AccessionNumber == "ACC9" and ct[0].StudyDescription == "Pelvis"
    assert ct[0].pixel_array.shape == (10, 12)


def test_same_folder_holds_several_sets(tmp_path: Path) -> None:
    first = make_rt_set(n_slices=2, rows=8, columns=8).write(tmp_path)
    second = make_rt_set(n_slices=2, rows=8, columns=8).write(tmp_path)
    assert set(first).isdisjoint(second)
    assert len(list(tmp_path.iterdir())) == len(first) + len(second)


def test_malformed_files(tmp_path: Path) -> None:
    truncated, noise, no_uid = write_malformed(tmp_path)
    assert [path.suffix for path in (truncated, noise, no_uid)] == [".dcm"] * 3

    # pydicom tolerates a truncated file, so the breakage shows as pixel data cut short.
    raw = truncated.read_bytes()
    assert raw[128:132] == b"DICM"
    cut = dcmread(truncated)
    assert len(cut.PixelData) < cut.Rows * cut.Columns * 2
    with pytest.raises(ValueError):
        _ = cut.pixel_array

    with pytest.raises(InvalidDicomError):
        dcmread(noise)

    missing = dcmread(no_uid)
    assert "SOPInstanceUID" not in missing
    assert missing.file_meta.MediaStorageSOPInstanceUID


def run(tool: str, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=60,
                          check=False)


@pytest.mark.skipif(not Path(DCMDUMP).exists(), reason="DCMTK dcmdump is not installed")
def test_dcmtk_parses_every_file(written: list[Path], tmp_path: Path) -> None:
    extra = [ds for ds in add_plan(make_rt_set(n_slices=2, rows=8, columns=8), "SCHED")
             if ds is not None]
    for path in [*written, *write_datasets(extra, tmp_path)]:
        answer = run(DCMDUMP, path)
        assert answer.returncode == 0, answer.stderr
        assert "E: " not in answer.stderr and "W: " not in answer.stderr, answer.stderr


@pytest.mark.skipif(not Path(DCMDUMP).exists(), reason="DCMTK dcmdump is not installed")
def test_dcmtk_rejects_the_broken_files(tmp_path: Path) -> None:
    truncated, noise, no_uid = write_malformed(tmp_path)
    assert run(DCMDUMP, truncated).returncode != 0
    assert run(DCMDUMP, noise).returncode != 0
    assert run(DCMDUMP, no_uid).returncode == 0  # well-formed, only the UID is missing


def test_dciodvfy_finds_no_errors(written: list[Path]) -> None:
    for path in written:
        answer = run(DCIODVFY, path)
        report = answer.stdout + answer.stderr
        errors = [line for line in report.splitlines() if line.startswith("Error")]
        assert not errors, f"{path.name}:\n" + "\n".join(errors)
