"""Synthetic radiotherapy data sets: CT, RTSTRUCT, RTPLAN and RTDOSE that reference each other.

The objects look to a receiver like what a planning system exports: one patient, one study,
one frame of reference, and a reference chain RTPLAN -> RTSTRUCT -> every CT slice and
RTDOSE -> RTPLAN. Integration tests send the written files with DCMTK's storescu, so every
file is a DICOM Part 10 file in Explicit VR Little Endian.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    RTDoseStorage,
    RTPlanStorage,
    RTStructureSetStorage,
    generate_uid,
)

MANUFACTURER = "RTGW Synthetic"
INSTITUTION = "RTGW Test Hospital"
IMPLEMENTATION_VERSION = f"PYDICOM {pydicom.__version__}"[:16]

HU_AIR = -1000
HU_BODY = 0
RESCALE_INTERCEPT = -1024
DOSE_GRID_MM = 2.5
# 10 µGy per stored unit keeps any realistic prescription well inside 32 bits.
DOSE_GRID_SCALING = 1e-5
CONTOUR_POINTS = 64
BEAM_ANGLES = (0.0, 90.0, 180.0, 270.0)
# The RT Referenced Study item names the study through the (retired) Detached Study
# Management SOP Class; planning systems still write it and readers expect it.
STUDY_REFERENCE_SOP_CLASS = "1.2.840.10008.3.1.2.3.1"

# Patient and study attributes every object of a study repeats; copied from the CT so that
# the RT objects can never drift from the images they belong to.
_SHARED_KEYWORDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
    "StudyDescription",
)


@dataclass
class RtSet:
    """One patient's planning CT with its structure set, plan and (optionally) dose."""

    patient_id: str
    patient_name: str
    study_uid: str
    frame_of_reference_uid: str
    ct: list[Dataset]
    rtstruct: Dataset
    rtplan: Dataset
    rtdose: Dataset | None

    def all(self) -> list[Dataset]:
        """CT slices, then RTSTRUCT, RTPLAN and RTDOSE: the order a planning system sends."""
        objects = [*self.ct, self.rtstruct, self.rtplan]
        if self.rtdose is not None:
            objects.append(self.rtdose)
        return objects

    def write(self, folder: Path) -> list[Path]:
        return write_datasets(self.all(), folder)


@dataclass(frozen=True)
class _Grid:
    """Geometry of an axial CT series (identity ImageOrientationPatient, as built here)."""

    x0: float
    y0: float
    z: tuple[float, ...]
    row_spacing: float
    column_spacing: float
    rows: int
    columns: int
    slice_thickness: float

    @classmethod
    def of_ct(cls, ct: Sequence[Dataset]) -> _Grid:
        first = ct[0]
        return cls(
            x0=float(first.ImagePositionPatient[0]),
            y0=float(first.ImagePositionPatient[1]),
            z=tuple(float(ds.ImagePositionPatient[2]) for ds in ct),
            row_spacing=float(first.PixelSpacing[0]),
            column_spacing=float(first.PixelSpacing[1]),
            rows=int(first.Rows),
            columns=int(first.Columns),
            slice_thickness=float(first.SliceThickness),
        )

    @property
    def width(self) -> float:
        return (self.columns - 1) * self.column_spacing

    @property
    def height(self) -> float:
        return (self.rows - 1) * self.row_spacing


@dataclass(frozen=True)
class _Ellipse:
    cx: float
    cy: float
    a: float  # semi-axis along x (mm)
    b: float  # semi-axis along y (mm)


@dataclass(frozen=True)
class _Phantom:
    """A pelvis-like phantom scaled to the image so any grid size gives sensible shapes."""

    body: _Ellipse
    ptv: _Ellipse
    rectum: _Ellipse
    ptv_slices: range
    rectum_slices: range

    @classmethod
    def of_grid(cls, grid: _Grid) -> _Phantom:
        cx = grid.x0 + grid.width / 2
        cy = grid.y0 + grid.height / 2
        # Proportions keep the PTV and rectum apart and both inside the body whatever the
        # aspect ratio (patient y grows towards posterior, so the rectum sits at +y).
        small = min(grid.width, grid.height)
        n = len(grid.z)
        return cls(
            body=_Ellipse(cx, cy, 0.42 * grid.width, 0.30 * grid.height),
            ptv=_Ellipse(cx, cy, 0.10 * small, 0.10 * small),
            rectum=_Ellipse(cx, cy + 0.18 * grid.height, 0.045 * small, 0.045 * small),
            ptv_slices=range(n // 4, n - n // 4),
            rectum_slices=range(n // 6, n - n // 6),
        )

    def ptv_z_range(self, grid: _Grid) -> tuple[float, float]:
        low = grid.z[self.ptv_slices.start] - grid.slice_thickness / 2
        high = grid.z[self.ptv_slices.stop - 1] + grid.slice_thickness / 2
        return low, high

    def isocenter(self, grid: _Grid) -> tuple[float, float, float]:
        low, high = self.ptv_z_range(grid)
        return self.ptv.cx, self.ptv.cy, (low + high) / 2


def _ds(value: float) -> str:
    # A DS value holds at most 16 characters and repr() of a computed float can be longer.
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


def _stamp(now: datetime) -> tuple[str, str]:
    return now.strftime("%Y%m%d"), now.strftime("%H%M%S")


def _item(**attributes: object) -> Dataset:
    item = Dataset()
    for keyword, value in attributes.items():
        setattr(item, keyword, value)
    return item


def _reference(target: Dataset) -> Dataset:
    return _item(
        ReferencedSOPClassUID=target.SOPClassUID,
        ReferencedSOPInstanceUID=target.SOPInstanceUID,
    )


def _file_meta(sop_class_uid: str, sop_instance_uid: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION
    return meta


def _shared_header(source: Dataset) -> Dataset:
    header = Dataset()
    for keyword in _SHARED_KEYWORDS:
        if keyword in source:
            setattr(header, keyword, source[keyword].value)
    return header


def _new_object(
    sop_class_uid: str,
    modality: str,
    header: Dataset,
    *,
    series_uid: str,
    series_number: int,
    series_description: str,
    instance_number: int,
    now: datetime,
) -> Dataset:
    """The modules every object carries: SOP common, patient, study, series, equipment."""
    sop_instance_uid = generate_uid()
    date, time = _stamp(now)
    ds = Dataset()
    ds.file_meta = _file_meta(sop_class_uid, sop_instance_uid)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.InstanceCreationDate = date
    ds.InstanceCreationTime = time
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = sop_instance_uid
    for keyword in _SHARED_KEYWORDS:
        if keyword in header:
            setattr(ds, keyword, header[keyword].value)
    ds.Modality = modality
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.SeriesDescription = series_description
    ds.SeriesDate = date
    ds.SeriesTime = time
    ds.OperatorsName = ""
    ds.Manufacturer = MANUFACTURER
    ds.InstitutionName = INSTITUTION
    ds.InstanceNumber = instance_number
    return ds


def _body_pixels(grid: _Grid, body: _Ellipse) -> bytes:
    xs = grid.x0 + np.arange(grid.columns) * grid.column_spacing
    ys = grid.y0 + np.arange(grid.rows) * grid.row_spacing
    inside = ((xs[None, :] - body.cx) / body.a) ** 2 + ((ys[:, None] - body.cy) / body.b) ** 2
    hu = np.where(inside <= 1.0, HU_BODY, HU_AIR)
    return (hu - RESCALE_INTERCEPT).astype("<i2").tobytes()


def make_ct_series(
    *,
    patient_id: str,
    patient_name: str,
    study_uid: str,
    frame_of_reference_uid: str,
    n_slices: int = 8,
    rows: int = 64,
    columns: int = 64,
    pixel_spacing: tuple[float, float] = (1.0, 1.0),
    slice_thickness: float = 2.5,
    origin: tuple[float, float, float] = (-32.0, -32.0, 0.0),
    study_description: str = "Prostate",
    series_uid: str | None = None,
    accession_number: str = "ACC001",
) -> list[Dataset]:
    """An axial CT series of an elliptic water body in air, one slice every slice_thickness mm.

    pixel_spacing is DICOM PixelSpacing: (distance between rows, distance between columns).
    """
    if n_slices < 1 or rows < 1 or columns < 1:
        raise ValueError("a CT series needs at least one slice of at least one pixel")
    now = datetime.now()
    date, time = _stamp(now)
    series_uid = series_uid or generate_uid()
    row_spacing, column_spacing = pixel_spacing
    x0, y0, z0 = origin

    header = Dataset()
    header.PatientName = patient_name
    header.PatientID = patient_id
    header.PatientBirthDate = "19600101"
    header.PatientSex = "M"
    header.StudyInstanceUID = study_uid
    header.StudyDate = date
    header.StudyTime = time
    header.StudyID = "1"
    header.AccessionNumber = accession_number
    header.ReferringPhysicianName = ""
    header.StudyDescription = study_description

    grid = _Grid(x0, y0, (z0,), row_spacing, column_spacing, rows, columns, slice_thickness)
    # Every slice shows the same body, so the pixel bytes are built once and shared: this is
    # what keeps a 200 x 512 x 512 benchmark series fast.
    pixels = _body_pixels(grid, _Phantom.of_grid(grid).body)
    spacing = [_ds(row_spacing), _ds(column_spacing)]

    series: list[Dataset] = []
    for index in range(n_slices):
        z = z0 + index * slice_thickness
        ds = _new_object(
            CTImageStorage, "CT", header,
            series_uid=series_uid, series_number=1, series_description="Planning CT",
            instance_number=index + 1, now=now,
        )
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ContentDate = date
        ds.ContentTime = time
        ds.AcquisitionNumber = 1
        ds.KVP = "120"
        ds.PatientPosition = "HFS"
        ds.Laterality = ""
        ds.FrameOfReferenceUID = frame_of_reference_uid
        ds.PositionReferenceIndicator = ""
        ds.ImagePositionPatient = [_ds(x0), _ds(y0), _ds(z)]
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        ds.PixelSpacing = spacing
        ds.SliceThickness = _ds(slice_thickness)
        ds.SliceLocation = _ds(z)
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = rows
        ds.Columns = columns
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept = str(RESCALE_INTERCEPT)
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        ds.WindowCenter = "40"
        ds.WindowWidth = "400"
        ds.add_new(0x7FE00010, "OW", pixels)
        series.append(ds)
    return series


def _contour_data(shape: _Ellipse, z: float) -> list[str]:
    data: list[str] = []
    z_text = _ds(z)
    for k in range(CONTOUR_POINTS):
        angle = 2 * math.pi * k / CONTOUR_POINTS
        data += [_ds(shape.cx + shape.a * math.cos(angle)),
                 _ds(shape.cy + shape.b * math.sin(angle)), z_text]
    return data


def _make_rtstruct(ct: Sequence[Dataset], now: datetime) -> Dataset:
    grid = _Grid.of_ct(ct)
    phantom = _Phantom.of_grid(grid)
    first = ct[0]
    frame_of_reference_uid = str(first.FrameOfReferenceUID)
    date, time = _stamp(now)
    ds = _new_object(
        RTStructureSetStorage, "RTSTRUCT", _shared_header(first),
        series_uid=generate_uid(), series_number=2, series_description="Structures",
        instance_number=1, now=now,
    )
    # dciodvfy expects the Frame of Reference module on the structure set too.
    ds.FrameOfReferenceUID = frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.StructureSetLabel = "RTGW"
    ds.StructureSetName = "RTGW structures"
    ds.StructureSetDate = date
    ds.StructureSetTime = time

    series_item = _item(
        SeriesInstanceUID=first.SeriesInstanceUID,
        ContourImageSequence=[_reference(image) for image in ct],
    )
    study_item = _item(
        ReferencedSOPClassUID=STUDY_REFERENCE_SOP_CLASS,
        ReferencedSOPInstanceUID=first.StudyInstanceUID,
        RTReferencedSeriesSequence=[series_item],
    )
    ds.ReferencedFrameOfReferenceSequence = [
        _item(FrameOfReferenceUID=frame_of_reference_uid, RTReferencedStudySequence=[study_item])
    ]

    rois = (
        (1, "BODY", "EXTERNAL", [0, 255, 0], phantom.body, range(len(ct))),
        (2, "PTV", "PTV", [255, 0, 0], phantom.ptv, phantom.ptv_slices),
        (3, "Rectum", "ORGAN", [150, 75, 0], phantom.rectum, phantom.rectum_slices),
    )
    structure_rois: list[Dataset] = []
    roi_contours: list[Dataset] = []
    observations: list[Dataset] = []
    for number, name, kind, colour, shape, slices in rois:
        structure_rois.append(_item(
            ROINumber=number,
            ReferencedFrameOfReferenceUID=frame_of_reference_uid,
            ROIName=name,
            ROIGenerationAlgorithm="MANUAL",
        ))
        contours = [
            _item(
                ContourImageSequence=[_reference(ct[index])],
                ContourGeometricType="CLOSED_PLANAR",
                NumberOfContourPoints=CONTOUR_POINTS,
                ContourNumber=position + 1,
                ContourData=_contour_data(shape, grid.z[index]),
            )
            for position, index in enumerate(slices)
        ]
        roi_contours.append(_item(
            ROIDisplayColor=colour, ContourSequence=contours, ReferencedROINumber=number
        ))
        observations.append(_item(
            ObservationNumber=number,
            ReferencedROINumber=number,
            RTROIInterpretedType=kind,
            ROIInterpreter="",
        ))
    ds.StructureSetROISequence = structure_rois
    ds.ROIContourSequence = roi_contours
    ds.RTROIObservationsSequence = observations
    return ds


def _beam(number: int, gantry_angle: float, isocenter: tuple[float, float, float]) -> Dataset:
    jaws = [
        _item(RTBeamLimitingDeviceType=device, NumberOfLeafJawPairs=1)
        for device in ("ASYMX", "ASYMY")
    ]
    first = _item(
        ControlPointIndex=0,
        NominalBeamEnergy="6",
        GantryAngle=_ds(gantry_angle),
        GantryRotationDirection="NONE",
        BeamLimitingDeviceAngle="0",
        BeamLimitingDeviceRotationDirection="NONE",
        PatientSupportAngle="0",
        PatientSupportRotationDirection="NONE",
        TableTopEccentricAngle="0",
        TableTopEccentricRotationDirection="NONE",
        TableTopPitchAngle=0.0,
        TableTopPitchRotationDirection="NONE",
        TableTopRollAngle=0.0,
        TableTopRollRotationDirection="NONE",
        TableTopVerticalPosition="",
        TableTopLongitudinalPosition="",
        TableTopLateralPosition="",
        IsocenterPosition=[_ds(value) for value in isocenter],
        CumulativeMetersetWeight="0",
        BeamLimitingDevicePositionSequence=[
            _item(RTBeamLimitingDeviceType=device, LeafJawPositions=["-50", "50"])
            for device in ("ASYMX", "ASYMY")
        ],
    )
    last = _item(ControlPointIndex=1, CumulativeMetersetWeight="1")
    return _item(
        BeamNumber=number,
        BeamName=f"G{int(gantry_angle):03d}",
        BeamDescription=f"Static field at gantry {int(gantry_angle)}",
        BeamType="STATIC",
        RadiationType="PHOTON",
        TreatmentMachineName="ETHOS1",
        Manufacturer=MANUFACTURER,
        InstitutionName=INSTITUTION,
        PrimaryDosimeterUnit="MU",
        SourceAxisDistance="1000",
        BeamLimitingDeviceSequence=jaws,
        ReferencedPatientSetupNumber=1,
        TreatmentDeliveryType="TREATMENT",
        NumberOfWedges=0,
        NumberOfCompensators=0,
        NumberOfBoli=0,
        NumberOfBlocks=0,
        FinalCumulativeMetersetWeight="1",
        NumberOfControlPoints=2,
        ControlPointSequence=[first, last],
    )


def _make_rtplan(
    header: Dataset,
    ct: Sequence[Dataset],
    rtstruct: Dataset,
    *,
    plan_label: str,
    plan_name: str | None,
    fractions: int,
    prescription_gy: float,
    series_number: int,
    now: datetime,
) -> Dataset:
    grid = _Grid.of_ct(ct)
    isocenter = _Phantom.of_grid(grid).isocenter(grid)
    date, time = _stamp(now)
    ds = _new_object(
        RTPlanStorage, "RTPLAN", header,
        series_uid=generate_uid(), series_number=series_number,
        series_description=f"Plan {plan_label}", instance_number=1, now=now,
    )
    ds.FrameOfReferenceUID = ct[0].FrameOfReferenceUID
    ds.PositionReferenceIndicator = ""
    ds.RTPlanLabel = plan_label
    ds.RTPlanName = plan_name if plan_name is not None else f"{plan_label} prostate"
    ds.RTPlanDate = date
    ds.RTPlanTime = time
    ds.PlanIntent = "CURATIVE"
    ds.RTPlanGeometry = "PATIENT"
    ds.ReferencedStructureSetSequence = [_reference(rtstruct)]
    ds.DoseReferenceSequence = [_item(
        DoseReferenceNumber=1,
        DoseReferenceUID=generate_uid(),
        DoseReferenceStructureType="SITE",
        DoseReferenceDescription="PTV",
        DoseReferenceType="TARGET",
        TargetPrescriptionDose=_ds(prescription_gy),
    )]
    ds.PatientSetupSequence = [
        _item(PatientSetupNumber=1, PatientPosition="HFS", SetupTechnique="ISOCENTRIC")
    ]

    beams = [_beam(n, angle, isocenter) for n, angle in enumerate(BEAM_ANGLES, start=1)]
    beam_dose = prescription_gy / fractions / len(beams)
    # Roughly 1 cGy per MU at depth, plus a margin for attenuation.
    meterset = beam_dose * 100 * 1.15
    ds.FractionGroupSequence = [_item(
        FractionGroupNumber=1,
        NumberOfFractionsPlanned=fractions,
        NumberOfBeams=len(beams),
        NumberOfBrachyApplicationSetups=0,
        ReferencedBeamSequence=[
            _item(ReferencedBeamNumber=beam.BeamNumber, BeamMeterset=_ds(meterset))
            for beam in beams
        ],
    )]
    ds.BeamSequence = beams
    return ds


def _dose_axis(start: float, extent: float) -> np.ndarray:
    # Enough 2.5 mm steps to reach or pass the CT's last voxel centre.
    steps = math.ceil(extent / DOSE_GRID_MM - 1e-9) + 1
    return start + np.arange(steps) * DOSE_GRID_MM


def _make_rtdose(
    header: Dataset,
    ct: Sequence[Dataset],
    rtplan: Dataset,
    *,
    prescription_gy: float,
    series_number: int,
    now: datetime,
) -> Dataset:
    grid = _Grid.of_ct(ct)
    phantom = _Phantom.of_grid(grid)
    date, time = _stamp(now)
    xs = _dose_axis(grid.x0, grid.width)
    ys = _dose_axis(grid.y0, grid.height)
    offsets = _dose_axis(0.0, grid.z[-1] - grid.z[0])
    zs = grid.z[0] + offsets

    # A separable dose cloud: flat over the PTV, Gaussian fall-off outside, none in the air.
    sigma = 8.0
    ptv = phantom.ptv
    radial = np.hypot(xs[None, :] - ptv.cx, ys[:, None] - ptv.cy)
    in_plane = np.exp(-0.5 * (np.maximum(radial - ptv.a, 0.0) / sigma) ** 2)
    body = phantom.body
    in_body = ((xs[None, :] - body.cx) / body.a) ** 2 + ((ys[:, None] - body.cy) / body.b) ** 2
    in_plane = np.where(in_body <= 1.0, in_plane, 0.0)
    low, high = phantom.ptv_z_range(grid)
    outside_z = np.maximum(np.maximum(low - zs, zs - high), 0.0)
    along_z = np.exp(-0.5 * (outside_z / sigma) ** 2)
    # float32 halves the transient memory of a benchmark-sized grid (~8 million voxels).
    dose = (
        np.float32(prescription_gy * 1.03)
        * along_z.astype(np.float32)[:, None, None]
        * in_plane.astype(np.float32)[None]
    )
    stored = np.rint(dose / DOSE_GRID_SCALING).astype("<u4")

    ds = _new_object(
        RTDoseStorage, "RTDOSE", header,
        series_uid=generate_uid(), series_number=series_number,
        series_description=f"Dose {rtplan.RTPlanLabel}", instance_number=1, now=now,
    )
    ds.ContentDate = date
    ds.ContentTime = time
    ds.FrameOfReferenceUID = ct[0].FrameOfReferenceUID
    ds.PositionReferenceIndicator = ""
    ds.ImagePositionPatient = [_ds(grid.x0), _ds(grid.y0), _ds(float(zs[0]))]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.PixelSpacing = [_ds(DOSE_GRID_MM), _ds(DOSE_GRID_MM)]
    ds.SliceThickness = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.NumberOfFrames = len(zs)
    ds.FrameIncrementPointer = 0x3004000C  # GridFrameOffsetVector
    ds.Rows = len(ys)
    ds.Columns = len(xs)
    ds.BitsAllocated = 32
    ds.BitsStored = 32
    ds.HighBit = 31
    ds.PixelRepresentation = 0
    ds.DoseUnits = "GY"
    ds.DoseType = "PHYSICAL"
    ds.DoseSummationType = "PLAN"
    ds.ReferencedRTPlanSequence = [_reference(rtplan)]
    ds.GridFrameOffsetVector = [_ds(float(offset)) for offset in offsets]
    ds.DoseGridScaling = _ds(DOSE_GRID_SCALING)
    ds.TissueHeterogeneityCorrection = "IMAGE"
    ds.add_new(0x7FE00010, "OW", stored.tobytes())
    return ds


def make_rt_set(
    patient_id: str = "RTGW001",
    patient_name: str = "Test^Patient",
    plan_label: str = "ADP1",
    *,
    n_slices: int = 8,
    rows: int = 64,
    columns: int = 64,
    pixel_spacing: tuple[float, float] = (1.0, 1.0),
    slice_thickness: float = 2.5,
    study_uid: str | None = None,
    study_description: str = "Prostate",
    with_dose: bool = True,
    plan_name: str | None = None,
    fractions: int = 20,
    prescription_gy: float = 60.0,
) -> RtSet:
    """A complete planning study: CT centred on the isocentre, RTSTRUCT, RTPLAN and RTDOSE."""
    now = datetime.now()
    study_uid = study_uid or generate_uid()
    frame_of_reference_uid = generate_uid()
    row_spacing, column_spacing = pixel_spacing
    ct = make_ct_series(
        patient_id=patient_id,
        patient_name=patient_name,
        study_uid=study_uid,
        frame_of_reference_uid=frame_of_reference_uid,
        n_slices=n_slices,
        rows=rows,
        columns=columns,
        pixel_spacing=pixel_spacing,
        slice_thickness=slice_thickness,
        origin=(-columns * column_spacing / 2, -rows * row_spacing / 2, 0.0),
        study_description=study_description,
    )
    rtstruct = _make_rtstruct(ct, now)
    header = _shared_header(ct[0])
    rtplan = _make_rtplan(
        header, ct, rtstruct, plan_label=plan_label, plan_name=plan_name,
        fractions=fractions, prescription_gy=prescription_gy, series_number=3, now=now,
    )
    rtdose = (
        _make_rtdose(header, ct, rtplan, prescription_gy=prescription_gy, series_number=4,
                     now=now)
        if with_dose else None
    )
    return RtSet(
        patient_id=patient_id,
        patient_name=patient_name,
        study_uid=study_uid,
        frame_of_reference_uid=frame_of_reference_uid,
        ct=ct,
        rtstruct=rtstruct,
        rtplan=rtplan,
        rtdose=rtdose,
    )


def add_plan(
    rtset: RtSet, plan_label: str, *, with_dose: bool = True, study_uid: str | None = None
) -> tuple[Dataset, Dataset | None]:
    """Another RTPLAN (and RTDOSE) on the same RTSTRUCT, as Varian Ethos sends an adaptive plan
    next to the scheduled one. rtset itself is left as it is: the caller decides what to send.

    With study_uid the new objects belong to that study of the same patient (an adaptive
    session stored as its own study) while still referencing the original structure set.
    """
    now = datetime.now()
    header = _shared_header(rtset.ct[0])
    if study_uid is not None and study_uid != rtset.study_uid:
        header.StudyInstanceUID = study_uid
        header.StudyID = "2"
        # The accession number belongs to the original order, not to the new study.
        header.AccessionNumber = ""
    fraction_group = rtset.rtplan.FractionGroupSequence[0]
    prescription_gy = float(rtset.rtplan.DoseReferenceSequence[0].TargetPrescriptionDose)
    rtplan = _make_rtplan(
        header, rtset.ct, rtset.rtstruct, plan_label=plan_label, plan_name=None,
        fractions=int(fraction_group.NumberOfFractionsPlanned),
        prescription_gy=prescription_gy, series_number=5, now=now,
    )
    rtdose = (
        _make_rtdose(header, rtset.ct, rtplan, prescription_gy=prescription_gy,
                     series_number=6, now=now)
        if with_dose else None
    )
    return rtplan, rtdose


_UNSAFE = re.compile(r"[^A-Za-z0-9.]+")


def write_datasets(datasets: Sequence[Dataset], folder: Path) -> list[Path]:
    """Write each dataset as a Part 10 file; the returned paths keep the input order.

    Names start with the position so a directory listing sorts like the input, and carry the
    SOPInstanceUID so several sets can share one folder without overwriting each other.
    """
    folder.mkdir(parents=True, exist_ok=True)
    width = max(4, len(str(len(datasets))))
    paths: list[Path] = []
    for index, ds in enumerate(datasets):
        modality = _UNSAFE.sub("_", str(ds.get("Modality", "OT"))) or "OT"
        uid = _UNSAFE.sub("_", str(ds.get("SOPInstanceUID", ""))) or f"no-uid-{index}"
        path = folder / f"{index:0{width}d}_{modality}_{uid}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_malformed(folder: Path) -> list[Path]:
    """Files a DICOM receiver must survive, in this order:

    1. a Part 10 file (preamble, DICM, valid meta) whose pixel data stops half-way;
    2. random bytes named .dcm (no DICM marker);
    3. a well-formed CT slice without SOPInstanceUID (the file meta still names one, so a
       sender that trusts the meta can deliver it).

    pydicom reads 1 without complaint (it tolerates truncation) but DCMTK refuses it.
    """
    folder.mkdir(parents=True, exist_ok=True)

    def one_slice() -> Dataset:
        return make_ct_series(
            patient_id="MALFORMED", patient_name="Malformed^Input", study_uid=generate_uid(),
            frame_of_reference_uid=generate_uid(), n_slices=1, rows=16, columns=16,
            origin=(-8.0, -8.0, 0.0),
        )[0]

    truncated = folder / "truncated.dcm"
    slice_ = one_slice()
    buffer = BytesIO()
    slice_.save_as(buffer, enforce_file_format=True)
    whole = buffer.getvalue()
    # Pixel data is the last element, so this cut lands inside its value.
    truncated.write_bytes(whole[: len(whole) - len(slice_.PixelData) // 2])

    noise = folder / "random-bytes.dcm"
    data = bytearray(random.Random(20240611).randbytes(4096))
    data[128:132] = b"NOPE"  # never a DICM marker by chance
    noise.write_bytes(bytes(data))

    no_uid = folder / "no-sop-instance-uid.dcm"
    slice_ = one_slice()
    del slice_.SOPInstanceUID
    slice_.save_as(no_uid, enforce_file_format=True)

    return [truncated, noise, no_uid]
