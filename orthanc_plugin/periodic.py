"""A loop of the lead worker that runs one round every few seconds until the gateway stops; a
database error (a full disk, a lock) ends that round only, and the next one tries again."""

from __future__ import annotations

import threading
from collections.abc import Callable

from orthanc_plugin.db import database_errors


class PeriodicLoop:
    def __init__(self, name: str, every_seconds: float, one_round: Callable[[], None],
                 log: Callable[[str], None]) -> None:
        self.name = name
        self.every_seconds = every_seconds
        self.one_round = one_round
        self.log = log
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        if self.thread is None:
            self.thread = threading.Thread(target=self._loop, name=f"rtgw-{self.name}",
                                           daemon=True)
            self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        if self.thread is not None:
            self.thread.join(5)
            self.thread = None

    def _loop(self) -> None:
        while not self.stopping.wait(self.every_seconds):
            try:
                self.one_round()
            except database_errors() as error:
                self.log(f"{self.name}: round stopped for now: {error}")
