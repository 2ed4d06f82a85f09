"""Vendor-shaped variants of the synthetic RT set: the shapes real planning systems send, made
here (no one's files are copied into the project).

- no-contour-images: a structure set whose contours name no image (no ContourImageSequence, as
  several auto-contouring tools write them);
- latin1 / utf8: ROI and patient names in ISO_IR 100 and ISO_IR 192 (accents, Cyrillic, CJK);
- fraction-groups: a plan with a main and a boost fraction group and two dose references (a
  target and an organ at risk);
- per-beam-doses: one RTDOSE per beam (DoseSummationType BEAM) instead of one for the plan;
- dose-with-dvhs: the plan dose carrying the planning system's own cumulative DVHs;
- adaptive-pair: an Ethos-like adaptive session, a second plan (ADP) in its own study that keeps
  the original structure set and names the scheduled plan as its predecessor.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from tests.support.rtset import RtSet, add_plan, make_rt_set


@dataclass
class Case:
    name: str
    rtset: RtSet
    extra: list[Dataset] = field(default_factory=list)   # objects sent besides rtset.all()
    plan_label: str = ""                                  # the plan the checks look at
    roi_names: tuple[str, ...] = ("BODY", "PTV", "Rectum")

    def datasets(self) -> list[Dataset]:
        return [*self.rtset.all(), *self.extra]


def _set(name: str, **kwargs: object) -> RtSet:
    return make_rt_set(f"VC-{name}", plan_label=f"VC-{name}", n_slices=8,
                       **kwargs)  # type: ignore[arg-type]


def no_contour_images() -> Case:
    rtset = _set("NOCI")
    for roi in rtset.rtstruct.ROIContourSequence:
        for contour in roi.ContourSequence:
            del contour.ContourImageSequence
    return Case("no-contour-images", rtset, plan_label=str(rtset.rtplan.RTPlanLabel))


def _names(rtset: RtSet, charset: str, patient: str, rois: tuple[str, str, str]) -> None:
    for ds in rtset.all():
        ds.SpecificCharacterSet = charset
        ds.PatientName = patient
    for item, name in zip(rtset.rtstruct.StructureSetROISequence, rois, strict=True):
        item.ROIName = name


def latin1() -> Case:
    rtset = _set("LATIN1", patient_name="Müller^Zoë")
    rois = ("Corps externe", "PTV prostate", "Tête fémorale")
    _names(rtset, "ISO_IR 100", "Müller^Zoë", rois)
    return Case("latin1", rtset, plan_label=str(rtset.rtplan.RTPlanLabel), roi_names=rois)


def utf8() -> Case:
    rtset = _set("UTF8", patient_name="Иванов^Пётр")
    rois = ("Тело", "PTV 前列腺", "直腸")
    _names(rtset, "ISO_IR 192", "Иванов^Пётр", rois)
    return Case("utf8", rtset, plan_label=str(rtset.rtplan.RTPlanLabel), roi_names=rois)


def fraction_groups() -> Case:
    rtset = _set("FG")
    plan = rtset.rtplan
    main = plan.FractionGroupSequence[0]
    boost = Dataset()
    boost.FractionGroupNumber = 2
    boost.NumberOfFractionsPlanned = 5
    boost.NumberOfBeams = main.NumberOfBeams
    boost.NumberOfBrachyApplicationSetups = 0
    boost.ReferencedBeamSequence = list(main.ReferencedBeamSequence)
    plan.FractionGroupSequence = [main, boost]
    organ = Dataset()
    organ.DoseReferenceNumber = 2
    organ.DoseReferenceUID = generate_uid()
    organ.DoseReferenceStructureType = "SITE"
    organ.DoseReferenceDescription = "Rectum"
    organ.DoseReferenceType = "ORGAN_AT_RISK"
    organ.OrganAtRiskMaximumDose = "50"
    plan.DoseReferenceSequence = [*plan.DoseReferenceSequence, organ]
    return Case("fraction-groups", rtset, plan_label=str(plan.RTPlanLabel))


def per_beam_doses() -> Case:
    rtset = _set("BEAM")
    assert rtset.rtdose is not None
    whole = rtset.rtdose
    beams = [beam.BeamNumber for beam in rtset.rtplan.BeamSequence]
    pixels = np.frombuffer(whole.PixelData, dtype="<u4")
    doses = []
    for number in beams:
        dose = copy.deepcopy(whole)  # its own file meta and references
        dose.SOPInstanceUID = dose.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        dose.InstanceNumber = number
        dose.DoseSummationType = "BEAM"
        beam = Dataset()
        beam.ReferencedBeamNumber = number
        group = Dataset()
        group.ReferencedFractionGroupNumber = 1
        group.ReferencedBeamSequence = [beam]
        dose.ReferencedRTPlanSequence[0].ReferencedFractionGroupSequence = [group]
        dose.PixelData = (pixels // len(beams)).astype("<u4").tobytes()
        doses.append(dose)
    rtset.rtdose = doses[0]
    return Case("per-beam-doses", rtset, extra=doses[1:], plan_label=str(rtset.rtplan.RTPlanLabel))


def dose_with_dvhs() -> Case:
    rtset = _set("DVH")
    assert rtset.rtdose is not None
    items = []
    for roi in rtset.rtstruct.StructureSetROISequence:
        reference = Dataset()
        reference.ReferencedROINumber = roi.ROINumber
        reference.DVHROIContributionType = "INCLUDED"
        item = Dataset()
        item.DVHReferencedROISequence = [reference]
        item.DVHType, item.DoseUnits, item.DoseType = "CUMULATIVE", "GY", "PHYSICAL"
        item.DVHVolumeUnits, item.DVHDoseScaling = "CM3", "1"
        item.DVHNumberOfBins = 2
        item.DVHData = ["30", "10", "31.8", "5"]
        item.DVHMinimumDose, item.DVHMaximumDose, item.DVHMeanDose = "0", "61.8", "40"
        items.append(item)
    rtset.rtdose.DVHSequence = items
    return Case("dose-with-dvhs", rtset, plan_label=str(rtset.rtplan.RTPlanLabel))


def adaptive_pair() -> Case:
    rtset = _set("ADP")
    plan, dose = add_plan(rtset, "ADP2", study_uid=generate_uid())
    predecessor = Dataset()
    predecessor.ReferencedSOPClassUID = rtset.rtplan.SOPClassUID
    predecessor.ReferencedSOPInstanceUID = rtset.rtplan.SOPInstanceUID
    predecessor.RTPlanRelationship = "PREDECESSOR"
    plan.ReferencedRTPlanSequence = [predecessor]
    extra = [plan, *([dose] if dose is not None else [])]
    return Case("adaptive-pair", rtset, extra=extra, plan_label="ADP2")


CASES: dict[str, Callable[[], Case]] = {
    "no-contour-images": no_contour_images, "latin1": latin1, "utf8": utf8,
    "fraction-groups": fraction_groups, "per-beam-doses": per_beam_doses,
    "dose-with-dvhs": dose_with_dvhs, "adaptive-pair": adaptive_pair,
}
