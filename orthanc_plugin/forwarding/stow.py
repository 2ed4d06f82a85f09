"""DICOMweb destinations: STOW-RS to the servers of Orthanc's own `DicomWeb.Servers` setting, sent
by the worker so that each instance's outcome is read from the STOW response (Orthanc's DICOMweb
client reports a request as a whole), and QIDO-RS to learn what such a server holds after a crash.

The response is the Store Instances Response Module (PS3.18 10.5.3): ReferencedSOPSequence
(0008,1199) for what was stored, FailedSOPSequence (0008,1198) with FailureReason (0008,1197) for
what was refused; 200 all stored, 202 some refused, 409 none stored.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any

import requests
from pydicom import dcmread

from orthanc_plugin.config import DicomWebServer

REFERENCED_SOP_SEQUENCE = "00081199"
FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_INSTANCE_UID = "00081155"
FAILURE_REASON = "00081197"
SOP_INSTANCE_UID = "00080018"
# What a STOW-RS server's FailureReason codes mean (PS3.18 Table 10.5.3-2 and PS3.4 C-STORE).
REASONS = {0xA700: "out of resources", 0xA900: "data set does not match SOP class",
           0xC000: "cannot understand", 0xC122: "referenced transfer syntax not supported",
           0x0110: "processing failure", 0x0122: "SOP class not supported",
           0xA770: "out of resources (no space)", 0xC111: "not authorized"}
TIMEOUT_SECONDS = 120.0


class StowError(Exception):
    """The request as a whole failed (no answer, a server error, a refusal of the request): no
    instance's outcome is known from it; `retryable` says whether trying later may help."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


@dataclass
class StowOutcome:
    stored: set[str] = field(default_factory=set)
    refused: dict[str, str] = field(default_factory=dict)   # SOP Instance UID -> reason


class StowClient:
    def __init__(self, servers: Mapping[str, DicomWebServer]) -> None:
        self.servers = dict(servers)
        self.session = requests.Session()

    def serves(self, target: str) -> bool:
        return target in self.servers

    def store(self, target: str, files: Sequence[bytes]) -> StowOutcome:
        server = self.servers[target]
        boundary = uuid.uuid4().hex
        body = b"".join(b"--%s\r\nContent-Type: application/dicom\r\n\r\n%s\r\n"
                        % (boundary.encode(), data) for data in files)
        body += b"--%s--\r\n" % boundary.encode()
        headers = {**server.headers, "Accept": "application/dicom+json",
                   "Content-Type": f'multipart/related; type="application/dicom"; '
                                   f"boundary={boundary}"}
        try:
            answer = self.session.post(f"{server.url}/studies", data=body, headers=headers,
                                       auth=server.auth, timeout=TIMEOUT_SECONDS)
        except requests.RequestException as error:
            raise StowError(f"STOW-RS to {target}: no answer ({type(error).__name__})") from None
        if answer.status_code in (200, 202, 409):
            return parse_response(_json(answer))
        retryable = answer.status_code >= 500 or answer.status_code in (408, 429)
        raise StowError(f"STOW-RS to {target}: HTTP {answer.status_code} "
                        f"{answer.text[:200].strip()}", retryable=retryable)

    def held(self, target: str, study_uid: str, series_uid: str) -> set[str] | None:
        """SOP Instance UIDs the server holds in that series (QIDO-RS); None when it cannot say."""
        server = self.servers[target]
        try:
            answer = self.session.get(
                f"{server.url}/studies/{study_uid}/series/{series_uid}/instances",
                headers={**server.headers, "Accept": "application/dicom+json"},
                auth=server.auth, timeout=TIMEOUT_SECONDS)
        except requests.RequestException:
            return None
        if answer.status_code == 204 or (answer.status_code == 404):
            return set()
        if answer.status_code != 200:
            return None
        found = set()
        for entry in _json(answer) or []:
            uid = _first(entry, SOP_INSTANCE_UID)
            if uid:
                found.add(uid)
        return found


def qido_echo(server: DicomWebServer) -> tuple[bool, str]:
    """(answers, why not): a QIDO-RS for one study, the DICOMweb counterpart of a C-ECHO."""
    try:
        answer = requests.get(f"{server.url}/studies", params={"limit": "1"},
                              headers={**server.headers, "Accept": "application/dicom+json"},
                              auth=server.auth, timeout=10)
    except requests.RequestException as error:
        return False, f"no answer ({type(error).__name__})"
    if answer.status_code in (200, 204):
        return True, ""
    return False, f"QIDO-RS answered HTTP {answer.status_code}"


def sop_instance_uid(data: bytes) -> str:
    """The SOP Instance UID of a Part 10 file, read without its pixels: the key the STOW
    response answers by."""
    ds = dcmread(BytesIO(data), stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
    return str(ds.get("SOPInstanceUID", ""))


def parse_response(document: Any) -> StowOutcome:
    outcome = StowOutcome()
    if not isinstance(document, dict):
        return outcome
    for entry in _sequence(document, REFERENCED_SOP_SEQUENCE):
        uid = _first(entry, REFERENCED_SOP_INSTANCE_UID)
        if uid:
            outcome.stored.add(uid)
    for entry in _sequence(document, FAILED_SOP_SEQUENCE):
        uid = _first(entry, REFERENCED_SOP_INSTANCE_UID)
        if uid:
            outcome.refused[uid] = reason_text(_first(entry, FAILURE_REASON))
            outcome.stored.discard(uid)
    return outcome


def reason_text(code: Any) -> str:
    try:
        number = int(code)
    except (TypeError, ValueError):
        return "no reason given"
    meaning = REASONS.get(number, "refused")
    return f"{meaning} (FailureReason 0x{number:04X})"


def _json(answer: requests.Response) -> Any:
    try:
        return answer.json() if answer.content.strip() else None
    except ValueError:
        return None


def _sequence(document: dict[str, Any], tag: str) -> list[dict[str, Any]]:
    items = (document.get(tag) or {}).get("Value") or []
    return [item for item in items if isinstance(item, dict)]


def _first(entry: dict[str, Any], tag: str) -> str:
    values = (entry.get(tag) or {}).get("Value") or []
    return str(values[0]) if values else ""
