"""Notes from Orthanc's callbacks to the workers: one non-blocking datagram each, never a wait."""

from __future__ import annotations

import contextlib
import socket
from pathlib import Path

from orthanc_plugin.channels import Note, encode_note


class NoteSender:
    def __init__(self, destination: Path) -> None:
        self.destination = str(destination)
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.setblocking(False)

    def send(self, note: Note) -> None:
        # A full buffer or an absent worker drops the note: the worker reads /changes anyway.
        with contextlib.suppress(OSError):
            self._socket.sendto(encode_note(note), self.destination)

    def close(self) -> None:
        self._socket.close()
