"""Receives the plugin's notes (stored, stable, deleted) and the lead's wake-ups, as datagrams."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable
from pathlib import Path

from orthanc_plugin.channels import Note, WakeNote, decode_note, encode_note

NoteHandler = Callable[[Note], None]


class NoteInbox:
    def __init__(self, path: Path, handle: NoteHandler, log_error: Callable[[str], None]) -> None:
        if path.exists() or path.is_symlink():
            path.unlink()
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind(str(path))
        # Room for a burst of notes while the intake is busy: 4 MiB of ~100-byte datagrams.
        with contextlib.suppress(OSError):
            self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self._handle = handle
        self._log_error = log_error
        self._thread = threading.Thread(target=self._loop, name="rtgw-notes", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        while True:
            try:
                data = self._socket.recv(4096)
            except OSError:
                return
            note = decode_note(data)
            if note is None:
                continue
            try:
                self._handle(note)
            except Exception as error:  # a bad note must not end the inbox
                self._log_error(f"note {data[:80]!r}: {error!r}")


WAKE_DATAGRAM = encode_note(WakeNote())


class WakeSender:
    """The lead wakes the other workers when it queued work, instead of their idle poll."""

    def __init__(self, paths: list[Path]) -> None:
        self._paths = [str(path) for path in paths]
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.setblocking(False)

    def wake(self) -> None:
        for path in self._paths:
            with contextlib.suppress(OSError):
                self._socket.sendto(WAKE_DATAGRAM, path)
