"""Where the plugin and its worker processes meet: a private folder of Unix sockets, and the notes.

The plugin (inside Orthanc) never waits on a worker for long and never holds anything of Orthanc's
while it talks to one: notes are datagrams sent without blocking (a lost note costs only latency,
since the workers read Orthanc's durable `/changes` log anyway), and REST requests go to the lead
worker's HTTP server on a stream socket, during which the plugin's thread has released the GIL.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

# sun_path holds 108 bytes; deep test folders exceed it, so long paths move to a private temp dir.
_MAX_SOCKET_PATH = 100

# On the wire a note is its kind's letter and its fields, separated by spaces (a space inside a
# field travels as \x1f): one small datagram, encoded in the callback in microseconds.
STORED = "S"      # S <instance id> <NOTED_METADATA values...> <file size>
STABLE = "T"      # T <study id>
DELETED = "D"     # D <instance id>
WAKE = "W"        # W (queue has new work)
NOTE_KINDS = (STORED, STABLE, DELETED, WAKE)
# Orthanc's metadata of a stored instance, read in the callback (a map lookup each, measured in
# microseconds) so the intake need not ask Orthanc's REST API for them again.
NOTED_METADATA = ("RemoteAET", "CalledAET", "RemoteIP", "Origin", "SopClassUid")


@dataclass(frozen=True)
class NotedFacts:
    """What the stored-instance callback read of Orthanc's metadata (NOTED_METADATA), and the size."""

    calling_aet: str
    called_aet: str
    remote_ip: str
    origin: str
    sop_class_uid: str
    file_size: int

    @classmethod
    def of(cls, metadata: Sequence[str], file_size: int) -> NotedFacts:
        """From the NOTED_METADATA values, in that order."""
        calling_aet, called_aet, remote_ip, origin, sop_class_uid = metadata
        return cls(calling_aet, called_aet, remote_ip, origin, sop_class_uid, file_size)


@dataclass(frozen=True)
class StoredNote:
    """Orthanc stored an instance. `facts` is None when the datagram lacked them (a note of an
    older plugin): the intake then reads them from Orthanc."""

    instance_id: str
    facts: NotedFacts | None = None


@dataclass(frozen=True)
class StableStudyNote:
    study_id: str


@dataclass(frozen=True)
class DeletedNote:
    instance_id: str


@dataclass(frozen=True)
class WakeNote:
    """The lead queued work: the other workers look at the queue now, not at their next poll."""


Note: TypeAlias = StoredNote | StableStudyNote | DeletedNote | WakeNote


@dataclass(frozen=True)
class Channels:
    folder: Path

    @property
    def api_socket(self) -> Path:
        return self.folder / "api.sock"

    def worker_socket(self, index: int) -> Path:
        return self.folder / f"worker-{index}.sock"

    def pid_file(self, index: int) -> Path:
        return self.folder / f"worker-{index}.pid"

    @property
    def lock_file(self) -> Path:
        return self.folder / "generation.lock"


def channels_for(database: Path) -> Channels:
    """One folder per gateway database, mode 0700: only Orthanc's user reaches the worker API."""
    folder = database.parent / "run"
    if len(str(folder / "worker-99.sock")) > _MAX_SOCKET_PATH:
        digest = hashlib.sha256(str(database).encode()).hexdigest()[:16]
        folder = Path(tempfile.gettempdir()) / f"rtgw-{os.getuid()}-{digest}"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(folder, 0o700)
    return Channels(folder)


def encode_note(note: Note) -> bytes:
    fields: tuple[str, ...] = ()
    if isinstance(note, StoredNote):
        kind, fields = STORED, (note.instance_id,)
        if note.facts is not None:
            facts = note.facts
            fields += (facts.calling_aet, facts.called_aet, facts.remote_ip, facts.origin,
                       facts.sop_class_uid, str(facts.file_size))
    elif isinstance(note, StableStudyNote):
        kind, fields = STABLE, (note.study_id,)
    elif isinstance(note, DeletedNote):
        kind, fields = DELETED, (note.instance_id,)
    else:
        kind = WAKE
    return " ".join((kind, *(field.replace(" ", "\x1f") for field in fields))).encode()


def decode_note(data: bytes) -> Note | None:
    """The note a datagram carries; None for anything else (a stray or truncated datagram)."""
    parts = data.decode("utf-8", "replace").split(" ")
    kind, fields = parts[0], [part.replace("\x1f", " ") for part in parts[1:]]
    if kind == WAKE:
        return WakeNote()
    if not fields or not fields[0]:
        return None
    if kind == STORED:
        facts = None
        if len(fields) >= len(NOTED_METADATA) + 2:
            *metadata, size = fields[1:len(NOTED_METADATA) + 2]
            facts = NotedFacts.of(metadata, int(size) if size.isdigit() else 0)
        return StoredNote(fields[0], facts)
    if kind == STABLE:
        return StableStudyNote(fields[0])
    if kind == DELETED:
        return DeletedNote(fields[0])
    return None
