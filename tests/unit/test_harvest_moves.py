"""The harvest's series step against a fake Orthanc: slice counts validated per series, a short series
retried, the patient's ZIP put together from the ZIPs of its series (no archive of the whole patient
asked of Orthanc), the round trips per series, and the reception-first marking of its REST calls
(its own C-MOVEs' arrivals never hold it). Runs the real store and runner, steps driven by hand."""

from __future__ import annotations

import io
import re
import struct
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from orthanc_plugin.audit.metrics import Metrics
from orthanc_plugin.audit.recorder import AuditRecorder
from orthanc_plugin.audit.tables import SCHEMA as AUDIT_SCHEMA
from orthanc_plugin.audit.translog import TransactionLog
from orthanc_plugin.harvest.action import HarvestRunner, HarvestSettings
from orthanc_plugin.harvest.model import parse_definition
from orthanc_plugin.harvest.remote import poll_interval
from orthanc_plugin.harvest.store import HarvestStore
from orthanc_plugin.harvest.tables import SCHEMA
from orthanc_plugin.harvest.zips import PARTS_FOLDER, merge, write_merged, write_part
from orthanc_plugin.ports import HostError
from orthanc_plugin.reception import ReceptionGate
from tests.conftest import MakeDatabase

SERIES = {"1.2.3.1": 3, "1.2.3.2": 3, "1.2.3.3": 2}   # series -> slices at the source
# The runners' gate, as a worker's main hands it down: the fake Orthanc reads its marking.
GATE = ReceptionGate()


class FakeOrthanc:
    """The gateway's Orthanc and, behind its query/retrieve routes, the PACS."""

    def __init__(self, short_first_move: dict[str, int] | None = None) -> None:
        self.short_first_move = dict(short_first_move or {})
        self.stored: dict[str, list[bytes]] = {}          # series uid -> instances
        self.queries: dict[str, tuple[str, list[dict[str, Any]]]] = {}
        self.calls: list[tuple[str, str, bool]] = []      # (method, uri, background at the call)
        self.moves: Counter[str] = Counter()

    def _call(self, method: str, uri: str) -> None:
        self.calls.append((method, uri, GATE._is_background()))

    def get_json(self, uri: str) -> Any:
        self._call("GET", uri)
        if uri == "/system":
            return {"DicomAet": "GATEWAY"}
        if match := re.fullmatch(r"/queries/(\w+)/answers\?expand&simplify", uri):
            return self.queries[match.group(1)][1]
        if match := re.fullmatch(r"/queries/(\w+)/answers/(\d+)/content\?simplify", uri):
            return self.queries[match.group(1)][1][int(match.group(2))]
        if re.fullmatch(r"/jobs/move-\d+", uri):
            return {"State": "Success"}
        raise HostError(f"{uri}: HTTP 404", missing=True)

    def post_json(self, uri: str, body: Any) -> Any:
        self._call("POST", uri)
        if uri == "/modalities/PACS/query":
            query_id = f"q{len(self.queries)}"
            if body["Level"] == "Study":
                answers = [{"PatientID": "P1", "StudyInstanceUID": "1.2.3", "StudyDescription": "RT"}]
            else:
                answers = [{"PatientID": "P1", "StudyInstanceUID": "1.2.3", "SeriesInstanceUID": uid,
                            "Modality": "CT", "SeriesDescription": "Planning",
                            "NumberOfSeriesRelatedInstances": str(n)} for uid, n in SERIES.items()]
            self.queries[query_id] = (body["Level"], answers)
            return {"ID": query_id}
        if match := re.fullmatch(r"/queries/(\w+)/answers/(\d+)/retrieve", uri):
            uid = self.queries[match.group(1)][1][int(match.group(2))]["SeriesInstanceUID"]
            self.moves[uid] += 1
            delivered = self.short_first_move.pop(uid, SERIES[uid])
            self.stored[uid] = [f"{uid}/{n}".encode() * 50 for n in range(delivered)]
            return {"ID": f"move-{sum(self.moves.values())}"}
        if uri == "/tools/find":
            uid = body["Query"]["SeriesInstanceUID"]
            if uid not in self.stored or not body.get("Expand"):
                return []
            return [{"ID": f"orthanc-{uid}", "Instances": [f"i{n}" for n in range(len(self.stored[uid]))]}]
        raise HostError(f"{uri}: HTTP 404", missing=True)

    def get_bytes(self, uri: str) -> bytes:
        self._call("GET", uri)
        match = re.fullmatch(r"/series/orthanc-([\d.]+)/archive", uri)
        if not match:
            raise HostError(f"{uri}: HTTP 404", missing=True)
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
            for n, data in enumerate(self.stored[match.group(1)]):
                # Every series of the study has the same description: the same folder in each ZIP.
                archive.writestr(f"P1 Patient/RT/CT Planning/CT{n:06d}.dcm", data)
        return out.getvalue()

    def delete(self, uri: str) -> None:
        self._call("DELETE", uri)

    def log_error(self, message: str) -> None:
        raise AssertionError(message)


@pytest.fixture
def runner(tmp_path: Path, make_database: MakeDatabase) -> HarvestRunner:
    # Both engines: an SQLite file, then a real PostgreSQL (tests/conftest.py).
    db = make_database([AUDIT_SCHEMA, SCHEMA])
    recorder = AuditRecorder(db, TransactionLog(tmp_path / "log"), Metrics(lambda name, value: None))
    return HarvestRunner(FakeOrthanc(), HarvestStore(db), recorder,  # type: ignore[arg-type]
                         HarvestSettings(tmp_path / "h", poll_seconds=0.01), lambda message: None,
                         GATE)


def run_all(runner: HarvestRunner) -> None:
    for _ in range(100):
        item = runner.store.claim()
        if item is None:
            return
        runner._run(item)
    raise AssertionError("the harvest never settled")


def start(runner: HarvestRunner, fake: FakeOrthanc) -> int:
    runner.host = runner.remote.host = fake  # type: ignore[assignment]
    return runner.create(parse_definition({
        "source": "PACS", "patients": ["P1"], "max_requests_per_minute": 100_000,
        "retry_delay_seconds": 0, "retry_max_delay_seconds": 0, "max_attempts": 3}))


def test_each_series_is_validated_and_the_zip_is_made_of_the_series_zips(
    runner: HarvestRunner, tmp_path: Path
) -> None:
    fake = FakeOrthanc()
    harvest_id = start(runner, fake)
    run_all(runner)

    harvest = runner.store.harvest(harvest_id)
    assert harvest is not None and harvest.state == "done"
    status = runner.status(harvest)
    assert status["counts"]["series"] == {"complete": 3}
    assert status["instances"] == {"expected": 8, "stored": 8}
    assert set(fake.moves.values()) == {1}
    folder = tmp_path / "h" / f"harvest-{harvest_id}"
    assert status["zips"] == ["P1__seriesCount3.zip"]
    with zipfile.ZipFile(folder / "P1__seriesCount3.zip") as archive:
        assert archive.testzip() is None          # every entry's CRC checked
        contents = {info.filename: archive.read(info) for info in archive.infolist()}
    # The series' folders, one name in Orthanc's answers, made distinct as Orthanc does.
    assert sorted({name.rpartition("/")[0] for name in contents}) == [
        "P1 Patient/RT/CT Planning", "P1 Patient/RT/CT Planning-2", "P1 Patient/RT/CT Planning-3"]
    assert sorted(contents.values()) == sorted(d for datas in fake.stored.values() for d in datas)
    # Never an archive of the whole patient; the series' ZIPs are gone once in the patient's.
    assert not any("create-archive" in uri for _, uri, _ in fake.calls)
    assert not list((folder / PARTS_FOLDER).glob("*"))
    # Per series: count (1), the answer still held (1), C-MOVE (1), one poll, count (1), ZIP (1).
    per_series = Counter(uri.split("/")[1].split("?")[0] for _, uri, _ in fake.calls)
    assert per_series["tools"] == 2 * 3 and per_series["jobs"] == 3 and per_series["series"] == 3


def test_a_series_moved_short_stays_incomplete_is_moved_again_and_only_then_zipped(
    runner: HarvestRunner, tmp_path: Path
) -> None:
    fake = FakeOrthanc(short_first_move={"1.2.3.2": 2})
    harvest_id = start(runner, fake)
    seen: list[tuple[str, str]] = []
    for _ in range(100):
        item = runner.store.claim()
        if item is None:
            break
        runner._run(item)
        if item.level == "series":
            row = runner.store.item(item.id)
            seen.append((row.series_uid, row.state))
    assert ("1.2.3.2", "pending") in seen          # 2 of 3: not complete, back in the queue
    assert fake.moves == {"1.2.3.1": 1, "1.2.3.2": 2, "1.2.3.3": 1}
    rows = {row.series_uid: row for row in runner.store.items(harvest_id) if row.level == "series"}
    assert {uid: (row.state, row.stored_instances) for uid, row in rows.items()} == {
        "1.2.3.1": ("complete", 3), "1.2.3.2": ("complete", 3), "1.2.3.3": ("complete", 2)}
    folder = tmp_path / "h" / f"harvest-{harvest_id}"
    with zipfile.ZipFile(folder / "P1__seriesCount3.zip") as archive:
        assert len(archive.infolist()) == 8
    audit = runner.store.requests(harvest_id)
    assert [row["kind"] for row in audit].count("C-MOVE") == 4


def test_a_series_still_short_after_its_attempts_is_incomplete_and_left_out_of_the_zip(
    runner: HarvestRunner, tmp_path: Path
) -> None:
    fake = FakeOrthanc(short_first_move={"1.2.3.3": 1})
    fake.short_first_move = _Always({"1.2.3.3": 1})   # type: ignore[assignment]
    harvest_id = start(runner, fake)
    run_all(runner)
    rows = {row.series_uid: row for row in runner.store.items(harvest_id) if row.level == "series"}
    assert rows["1.2.3.3"].state == "incomplete" and rows["1.2.3.3"].stored_instances == 1
    assert "1 of 2 instance(s) stored" in (rows["1.2.3.3"].last_error or "")
    assert fake.moves["1.2.3.3"] == 3
    folder = tmp_path / "h" / f"harvest-{harvest_id}"
    with zipfile.ZipFile(folder / "P1__seriesCount2.zip") as archive:
        assert len(archive.infolist()) == 6


class _Always(dict):  # type: ignore[type-arg]
    def pop(self, key: Any, default: Any = None) -> Any:
        return self.get(key, default)


def test_its_own_moves_never_hold_the_harvest_but_the_calls_before_any_move_are_background(
    runner: HarvestRunner
) -> None:
    fake = FakeOrthanc()
    start(runner, fake)
    run_all(runner)
    # The first C-MOVE starts with asking Orthanc its own AE title (once).
    first_move = next(n for n, (_, uri, _) in enumerate(fake.calls) if uri == "/system")
    assert fake.calls[first_move + 1][1].endswith("/retrieve")
    # Before any move of its own: the C-FINDs and counts wait for a modality like any background work.
    assert all(background for _, _, background in fake.calls[:first_move])
    # From its first C-MOVE on, the instances arriving are the ones it asked for: nothing waits.
    assert not any(background for _, _, background in fake.calls[first_move:])
    # Long after its last move, arrivals are someone else's again.
    runner._own_quiet_at = float("-inf")
    with runner._reception_marking():
        assert GATE._is_background()


def test_a_lost_series_zip_is_asked_again_when_the_patient_zip_is_written(
    runner: HarvestRunner, tmp_path: Path
) -> None:
    fake = FakeOrthanc()
    harvest_id = start(runner, fake)
    failing = {"left": 1}
    real = fake.get_bytes

    def get_bytes(uri: str) -> bytes:
        if failing["left"]:
            failing["left"] -= 1
            raise HostError(f"{uri}: HTTP 500")
        return real(uri)

    fake.get_bytes = get_bytes  # type: ignore[method-assign]
    runner.log_error = lambda message: None
    run_all(runner)
    folder = tmp_path / "h" / f"harvest-{harvest_id}"
    with zipfile.ZipFile(folder / "P1__seriesCount3.zip") as archive:
        assert archive.testzip() is None and len(archive.infolist()) == 8


def test_poll_interval_grows_with_the_job_and_stays_within_bounds() -> None:
    assert poll_interval(0.0, 0.2) == 0.01
    assert poll_interval(0.5, 0.2) == pytest.approx(0.05)
    assert poll_interval(100.0, 0.2) == 0.2
    assert poll_interval(100.0, 0.005) == 0.005


def test_merge_keeps_compressed_bytes_and_is_readable_as_zip64(tmp_path: Path) -> None:
    parts = []
    for n in range(2):
        part = tmp_path / f"p{n}.zip"
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            archive.writestr("Pat/Study/Série/a.dcm", b"A" * 5000 + bytes([n]),
                             compress_type=zipfile.ZIP_DEFLATED)
            archive.writestr("Pat/Study/Série/b.dcm", b"stored", compress_type=zipfile.ZIP_STORED)
        write_part(part, buffer.getvalue())
        parts.append(part)
    out = tmp_path / "out.zip"
    assert write_merged(out, parts) == 4
    with zipfile.ZipFile(out) as merged, zipfile.ZipFile(parts[0]) as first:
        assert merged.testzip() is None
        assert [i.filename for i in merged.infolist()] == [
            "Pat/Study/Série/a.dcm", "Pat/Study/Série/b.dcm",
            "Pat/Study/Série-2/a.dcm", "Pat/Study/Série-2/b.dcm"]
        assert merged.read("Pat/Study/Série-2/a.dcm") == b"A" * 5000 + b"\x01"
        a = merged.getinfo("Pat/Study/Série/a.dcm")
        assert a.compress_type == zipfile.ZIP_DEFLATED
        assert a.compress_size == first.getinfo("Pat/Study/Série/a.dcm").compress_size   # not redone
    data = out.read_bytes()
    assert data[-22:-18] == b"PK\x05\x06" and struct.unpack("<H", data[-12:-10])[0] == 0xFFFF


def test_a_truncated_series_zip_is_refused_and_a_broken_part_fails_the_merge(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("a/b.dcm", b"x" * 100)
    with pytest.raises(zipfile.BadZipFile):
        write_part(tmp_path / "part.zip", buffer.getvalue()[:-30])
    assert not (tmp_path / "part.zip").exists()
    broken = tmp_path / "broken.zip"
    broken.write_bytes(b"\0" * 4 + buffer.getvalue()[4:])     # the local header overwritten
    with pytest.raises(zipfile.BadZipFile):
        merge([broken], io.BytesIO())
