"""What the rules may know about one received instance."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

SOURCES = ("DICOM", "REST", "GATEWAY", "IMPORT_FOLDER")
GATEWAY_SOURCE = "GATEWAY"


@dataclass(frozen=True)
class InstanceFacts:
    instance_id: str  # Orthanc instance ID
    calling_aet: str = ""
    called_aet: str = ""
    remote_ip: str = ""
    source: str = "DICOM"  # DICOM | REST | GATEWAY (made by the gateway itself) | IMPORT_FOLDER
    modality: str = ""
    sop_class_uid: str = ""
    # RTPlanLabel of every RTPLAN of the instance's study known so far.
    study_plan_labels: tuple[str, ...] = ()
    # DICOM keyword -> value as text. May be lazy (each access may read the file from Orthanc):
    # the matcher only calls tags.get(keyword) for keywords a rule names and never iterates it.
    tags: Mapping[str, str] = field(default_factory=dict)
