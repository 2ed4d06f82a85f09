"""The resources of the fake Orthanc (fake_orthanc.py): instances, series, studies, modalities
and their store jobs, as plain records, with Orthanc's identifiers and its rendering of tag values.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

# Orthanc 1.10's main DICOM tags per level (the subset the gateway and the tests read).
PATIENT_TAGS = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "OtherPatientIDs")
STUDY_TAGS = ("StudyInstanceUID", "StudyDate", "StudyTime", "StudyID", "StudyDescription",
              "AccessionNumber", "ReferringPhysicianName", "InstitutionName")
SERIES_TAGS = ("SeriesInstanceUID", "Modality", "SeriesNumber", "SeriesDescription", "SeriesDate",
               "SeriesTime", "Manufacturer", "StationName", "OperatorsName", "BodyPartExamined")
INSTANCE_TAGS = ("SOPInstanceUID", "InstanceNumber", "AcquisitionNumber", "ImagePositionPatient",
                 "ImageOrientationPatient", "InstanceCreationDate", "InstanceCreationTime",
                 "NumberOfFrames")
# Orthanc's error codes as its /jobs answers name them.
NETWORK_ERROR = (9, "Error in the network protocol")
CANCELED_ERROR = (14, "Canceled job")

Json = Any  # what Orthanc's REST API answers: dicts, lists, strings, numbers


class WorkerKilled(BaseException):
    """Stands for `kill -9` of the worker at the call it is injected into: a BaseException, so
    no `except Exception` of the gateway's code can take it for an ordinary failure."""


class UnsupportedCall(NotImplementedError):
    """The gateway called a URI this fake does not implement."""


def orthanc_id(*keys: str) -> str:
    """Orthanc's identifier of a resource: SHA-1 of its DICOM keys joined by `|`, in five groups
    of eight hex digits (patient: PatientID; study: + StudyInstanceUID; series: + Series...)."""
    digest = hashlib.sha1("|".join(keys).encode(), usedforsecurity=False).hexdigest()
    return "-".join(digest[i : i + 8] for i in range(0, 40, 8))


def dicom_bytes(dataset: Dataset) -> bytes:
    """A dataset as the Part 10 file Orthanc would store."""
    buffer = BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def tag_text(value: Any) -> str:
    """A tag value as Orthanc's JSON renders a string element (multiple values joined by `\\`)."""
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(str(part) for part in value)
    if value is None:
        return ""
    return str(value)


def main_tags(dataset: Dataset, keywords: tuple[str, ...]) -> dict[str, str]:
    return {keyword: tag_text(dataset.get(keyword)) for keyword in keywords if keyword in dataset}


@dataclass
class FakeInstance:
    """One stored instance: its file as stored, the dataset read from it, Orthanc's metadata."""

    instance_id: str
    series_id: str
    file: bytes
    dataset: Dataset
    # RemoteAET, CalledAET, RemoteIP, Origin, SopClassUid, ReceptionDate, TransferSyntax, ...
    metadata: dict[str, str]

    @property
    def sop_instance_uid(self) -> str:
        return str(self.dataset.SOPInstanceUID)


@dataclass
class FakeSeries:
    series_id: str
    study_id: str
    main_tags: dict[str, str]
    instance_ids: list[str] = field(default_factory=list)


@dataclass
class FakeStudy:
    study_id: str
    patient_id: str  # Orthanc's ID of the patient
    main_tags: dict[str, str]
    patient_tags: dict[str, str]
    series_ids: list[str] = field(default_factory=list)
    stable: bool = False
    labels: set[str] = field(default_factory=set)
    last_update: str = ""  # Orthanc's LastUpdate: UTC, 20261203T172000


@dataclass
class FakeModality:
    """A DICOM node in Orthanc's `DicomModalities`, and what its store jobs do.

    received: the Orthanc IDs of the instances it accepted, in the order they arrived (a resent
    instance appears twice); held_sop_uids: what a C-FIND there finds.
    """

    name: str
    aet: str
    received: list[str] = field(default_factory=list)
    held_sop_uids: set[str] = field(default_factory=set)
    # The association drops after this many more instances (None: it never drops).
    instances_before_drop: int | None = None
    # At the drop, the receiver has stored the instance but its answer never comes: the store
    # job fails with a timeout (a PACS that commits after the sender's DicomScuTimeout).
    stores_before_timeout: bool = False
    # Instance ID -> the DIMSE status the receiver answers its C-STORE with (a refusal).
    refused_with: dict[str, str] = field(default_factory=dict)
    # How many polls of each of its store jobs answer "Running" before the outcome shows.
    running_polls: int = 0
    # False: the modality answers no C-FIND (the query fails, as for a node without the SCP).
    answers_find: bool = True


@dataclass
class FakeStoreJob:
    """An Orthanc `DicomModalityStore` job: its outcome is decided when it is created."""

    job_id: str
    modality: str
    resources: list[str]
    state: str
    progress: int
    error_code: int = 0
    error_description: str = "Success"
    error_details: str = ""
    running_polls_left: int = 0
    created_at: str = ""


@dataclass
class InjectedFault:
    method: str
    uri_prefix: str
    error: BaseException
    skip: int  # matching calls let through before the fault fires
    times: int  # how many matching calls then raise it


@dataclass(frozen=True)
class StoreCall:
    """One `POST /modalities/{name}/store` as the fake received it."""

    modality: str
    resources: tuple[str, ...]
    job_id: str


@dataclass(frozen=True)
class Request:
    """One call into the fake: the URI as called, its path segments and query, and the body
    (JSON for post_json, bytes for post_bytes and put, None for GET and DELETE)."""

    method: str
    uri: str
    path: list[str]
    query: dict[str, list[str]]
    body: Json
