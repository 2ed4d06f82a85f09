"""A remote PACS for harvest tests: a real Orthanc that logs every incoming C-FIND and C-MOVE
with its series (started with --verbose, identifiers not masked), so requests are counted where
the cap matters, at the source."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any

import pydicom

from tests.support.orthanc import OrthancProcess

_REQUEST = re.compile(r"^I\d{4} (\d\d):(\d\d):(\d\d\.\d+) main\.cpp:\d+\] Incoming (Find|Move) request "
                      r"from AET RTGATEWAY")
_MOVED_SERIES = re.compile(r"OrthancMoveRequestHandler\.cpp:\d+\] \(dicom\)\s+\(0020,000e\)\s+"
                           r"SeriesInstanceUID = (\S+)")


class SourcePacs(OrthancProcess):
    """The remote PACS, logging every incoming C-FIND and C-MOVE with its series."""

    def start(self, *, wait: bool = True, config_overrides: dict[str, Any] | None = None) -> None:
        config_path = self.folder / "orthanc.json"
        config_path.write_text(json.dumps({**self.config, "DeidentifyLogs": False}, indent=2))
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            ["Orthanc", "--verbose", str(config_path)], stdout=log, stderr=subprocess.STDOUT,
            env=dict(os.environ, TCP_NODELAY="1"), cwd=self.folder)
        if wait:
            self.wait_ready()

    def log_mark(self) -> int:
        return self.log_path.stat().st_size

    def _lines(self, since: int) -> list[str]:
        with self.log_path.open("rb") as stream:
            stream.seek(since)
            return stream.read().decode("utf-8", "replace").splitlines()

    def moves_per_series(self, since: int) -> Counter[str]:
        return Counter(m.group(1) for line in self._lines(since) if (m := _MOVED_SERIES.search(line)))

    def request_times(self, since: int) -> list[float]:
        times: list[float] = []
        for line in self._lines(since):
            match = _REQUEST.search(line)
            if match:
                seconds = int(match.group(1)) * 3600 + int(match.group(2)) * 60 + float(match.group(3))
                while times and seconds < times[-1] - 43200:   # past midnight
                    seconds += 86400
                times.append(seconds)
        return times


def max_in_window(times: list[float], window: float) -> int:
    return max((sum(1 for t in times[i:] if t < start + window) for i, start in enumerate(times)), default=0)


def zip_sop_uids(path: Path) -> set[str]:
    with zipfile.ZipFile(path) as archive:
        return {str(pydicom.dcmread(io.BytesIO(archive.read(name)), stop_before_pixels=True).SOPInstanceUID)
                for name in archive.namelist() if not name.endswith("/")}
