"""Nothing the gateway does may stall or stop Orthanc (issue 10): the work runs in supervised worker
processes. Real Orthanc processes, storescu senders, the import folder, overlay and anonymize rules.

One gateway and one archive serve the module; the tests that stop or kill the gateway's Orthanc
run last in the file and own their processes.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from pydicom.uid import generate_uid

from orthanc_plugin.in_orthanc.supervisor.processes import parent_pid as parent_of
from tests.integration.conftest import keep_logs, require_orthanc
from tests.integration.helpers import gateway_rows, sop_uids, study_sop_uids
from tests.support.orthanc import (
    PASSWORD,
    USER,
    OrthancProcess,
    storescu,
    wait_until,
    worker_pids,
)
from tests.support.peers import CountingPeer
from tests.support.rtset import make_ct_series, make_rt_set, write_datasets

RULES = """
rules:
  - name: forward FOLLOW
    on: instance
    match: {calling_aet: FOLLOW}
    actions: [{forward: ARCHIVE}]
  - name: overlay FOLLOW
    on: instance
    match: {calling_aet: FOLLOW, modality: RTSTRUCT}
    actions: [{overlay: {planes: [axial], forward: ARCHIVE, wait_for_images: 60s}}]
  - name: anonymize ANON
    on: instance
    match: {calling_aet: ANON}
    actions: [{anonymize: {profile: full}}, {forward: ARCHIVE}]
  - name: imported
    on: instance
    match: {source: IMPORT_FOLDER}
    actions: [{forward: ARCHIVE}]
  - name: pathological regex
    on: instance
    match: {calling_aet: REGEX, tags: {StudyDescription: {regex: "^(a+)+$"}}}
    actions: [{forward: ARCHIVE}]
  - name: big contours
    on: instance
    match: {calling_aet: BIG, modality: RTSTRUCT}
    actions: [{overlay: {planes: [axial, coronal, sagittal], forward: ARCHIVE}}]
  - name: slow forward
    on: instance
    match: {calling_aet: SLOW}
    actions: [{forward: COUNTER}]
"""
TRIALS = 20


@pytest.fixture(scope="module")
def archive(workdir: Path) -> Iterator[OrthancProcess]:
    require_orthanc()
    process = OrthancProcess(workdir / "archive", "ARCHIVE")
    process.start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def counter() -> Iterator[CountingPeer]:
    peer = CountingPeer("COUNTER", delay_seconds=0.05)
    yield peer
    peer.close()


@pytest.fixture(scope="module")
def gateway(workdir: Path, archive: OrthancProcess, counter: CountingPeer
            ) -> Iterator[OrthancProcess]:
    process = OrthancProcess(
        workdir / "gateway", "RTGATEWAY", plugin=True, rules=RULES,
        modalities={"ARCHIVE": archive, "COUNTER": ("COUNTER", counter.port)},
        gateway_settings={
            "Import": {"Folder": str(workdir / "import"), "ClearAfterImport": True,
                       "PollSeconds": 0.3, "StableSeconds": 0.3},
            "Contours": {"WaitPollSeconds": 0.5, "MaxPointsPerContour": 500_000,
                         "MaxPointsPerStructureSet": 1_000_000},
            "WorkerMemoryLimitMB": 1024,
        },
    )
    process.start()
    yield process
    process.stop()
    keep_logs(process, "isolation-gateway")


class RouteProbe:
    """Asks a gateway route every 100 ms on its own thread; records the slowest answer."""

    def __init__(self, gateway: OrthancProcess, path: str = "/rt-gateway/stats") -> None:
        self.gateway, self.path = gateway, path
        self.slowest = 0.0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RouteProbe:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                status = requests.get(self.gateway.url + self.path, auth=(USER, PASSWORD),
                                      timeout=10).status_code
                if status != 200:
                    self.failures.append(f"HTTP {status}")
            except Exception as error:  # a hang shows as a timeout
                self.failures.append(repr(error))
            self.slowest = max(self.slowest, time.monotonic() - started)
            self._stop.wait(0.1)


def jobs_settled(gateway: OrthancProcess) -> bool:
    active = [j for state in ("pending", "running")
              for j in gateway.json("/rt-gateway/jobs", params={"state": state})]
    return not active


def _one_trial(gateway: OrthancProcess, archive: OrthancProcess, workdir: Path, trial: int
               ) -> float:
    follow = make_rt_set(f"ISO-F{trial}", plan_label="ADP1", n_slices=6)
    anon = make_rt_set(f"ISO-A{trial}", plan_label="ADP1", n_slices=6)
    imported = make_rt_set(f"ISO-I{trial}", plan_label="ADP1", n_slices=6)
    follow_files = write_datasets(follow.all(), workdir / f"t{trial}" / "follow")
    anon_files = write_datasets(anon.all(), workdir / f"t{trial}" / "anon")
    staging = workdir / f"t{trial}" / "import"
    write_datasets(imported.all(), staging)
    before = archive.instance_count()
    results: dict[str, subprocess.CompletedProcess[str]] = {}

    def send(name: str, files: list[Path], calling: str) -> None:
        results[name] = storescu(files, gateway.dicom_port, calling=calling, check=False)

    # The FOLLOW set, the imported set, the de-identified copies of the ANON set, and one axial
    # overlay image per CT slice of the FOLLOW set.
    expected = 3 * len(follow.all()) + len(follow.ct)
    with RouteProbe(gateway) as probe:
        shutil.copytree(staging, workdir / "import" / f"t{trial}")
        senders = [threading.Thread(target=send, args=("follow", follow_files, "FOLLOW")),
                   threading.Thread(target=send, args=("anon", anon_files, "ANON"))]
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join(120)
        # Every C-STORE answered with success (storescu exits non-zero otherwise).
        assert results["follow"].returncode == 0, results["follow"].stderr
        assert results["anon"].returncode == 0, results["anon"].stderr
        wait_until(lambda: study_sop_uids(archive, follow.study_uid) >= sop_uids(follow.all())
                   and study_sop_uids(archive, imported.study_uid) == sop_uids(imported.all()),
                   90, f"trial {trial}: FOLLOW and imported sets at the archive")
        wait_until(lambda: archive.instance_count() - before == expected, 90,
                   f"trial {trial}: {expected} new instances at the archive")
        wait_until(lambda: jobs_settled(gateway), 60, f"trial {trial}: queue empty")
    assert not probe.failures, probe.failures[:3]
    assert probe.slowest < 2.0, f"trial {trial}: a route took {probe.slowest:.2f} s"
    return probe.slowest


def test_two_senders_with_import_overlay_and_anonymize_never_stall_orthanc(
    gateway: OrthancProcess, archive: OrthancProcess, workdir: Path
) -> None:
    slowest = max(_one_trial(gateway, archive, workdir, trial) for trial in range(TRIALS))
    assert not gateway.json("/rt-gateway/jobs", params={"state": "dead"})
    print(f"{TRIALS} trials, slowest route answer {slowest:.3f} s")


def test_health_names_every_worker_and_the_queue(gateway: OrthancProcess) -> None:
    answer = gateway.get("/rt-gateway/health")
    assert answer.status_code == 200, answer.text
    report = answer.json()
    assert report["healthy"] and report["database_writable"]
    assert set(report["workers"]) == {"0", "1", "2"}
    assert all(worker["alive"] for worker in report["workers"].values())
    assert {"storage", "database"} <= set(report["disk"])
    assert requests.get(gateway.url + "/rt-gateway/health", timeout=10).status_code == 401


def test_pathological_regex_is_linear_and_other_studies_flow(
    gateway: OrthancProcess, archive: OrthancProcess, workdir: Path
) -> None:
    evil = make_rt_set("ISO-REGEX", study_description="a" * 40 + "!", with_dose=False)
    good = make_rt_set("ISO-REGEX-OK", study_description="a" * 40, with_dose=False)
    with RouteProbe(gateway) as probe:
        storescu(write_datasets(evil.all(), workdir / "regex-evil"), gateway.dicom_port,
                 calling="REGEX")
        storescu(write_datasets(good.all(), workdir / "regex-good"), gateway.dicom_port,
                 calling="REGEX")
        wait_until(lambda: study_sop_uids(archive, good.study_uid) == sop_uids(good.all()), 60,
                   "the matching study forwarded")
    assert probe.slowest < 2.0 and not probe.failures
    assert not study_sop_uids(archive, evil.study_uid)
    refused = [r for r in gateway_rows(gateway, kind="evaluations", rule="pathological regex")
               if r["study_uid"] == evil.study_uid]
    assert refused and not any(r["matched"] for r in refused)


def test_alias_bomb_and_deep_nesting_are_refused_fast_and_old_rules_stay(
    gateway: OrthancProcess,
) -> None:
    rules_in_force = gateway.json("/rt-gateway/rules")["sha256"]
    bomb = "a: &a [{calling_aet: X}, {calling_aet: Y}]\n" + "".join(
        f"{n}: &{n} [{', '.join(['*' + p] * 9)}]\n"
        for p, n in zip("abcdefgh", "bcdefghi", strict=True)
    ) + "rules:\n  - name: bomb\n    on: instance\n    match: {any: *i}\n" \
        "    actions: [{forward: ARCHIVE}]\n"
    nested = ("rules:\n  - name: nested\n    on: instance\n    match: " + "{not: " * 3000
              + "{calling_aet: A}" + "}" * 3000 + "\n    actions: [{forward: ARCHIVE}]\n")
    original = gateway.rules_path.read_text()
    try:
        for text, words in ((bomb, "alias"), (nested, "nested deeper")):
            gateway.rules_path.write_text(text)
            answer = gateway.post("/rt-gateway/rules/reload")
            assert answer.status_code == 400, answer.text
            assert words in answer.json()["error"]
            assert answer.json()["path"]
            assert gateway.json("/rt-gateway/rules")["sha256"] == rules_in_force
    finally:
        gateway.rules_path.write_text(original)


def _structure_set_with_huge_contours(rtset, points: int):  # type: ignore[no-untyped-def]
    """Two contours of `points` points each, zigzagging across every row of their slice."""
    import numpy as np

    ds = rtset.rtstruct
    item = ds.ROIContourSequence[0]
    template = item.ContourSequence[0]
    ct = rtset.ct
    for index, contour in enumerate(list(item.ContourSequence)[:2]):
        z = float(ct[index].ImagePositionPatient[2])
        x0, y0 = (float(v) for v in ct[index].ImagePositionPatient[:2])
        xs = np.linspace(x0 + 1, x0 + 60, points)
        ys = np.where(np.arange(points) % 2 == 0, y0 + 1, y0 + 60)
        contour.ContourData = [f"{v:.2f}" for triple in zip(xs, ys, [z] * points, strict=True)
                               for v in triple]
        contour.NumberOfContourPoints = points
    del template
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def test_huge_structure_set_cannot_take_orthanc_down(
    gateway: OrthancProcess, archive: OrthancProcess, workdir: Path
) -> None:
    orthanc_pid = gateway.process.pid if gateway.process else 0
    rtset = make_rt_set("ISO-BIG", n_slices=6, with_dose=False)
    rtstruct = _structure_set_with_huge_contours(rtset, 100_000)
    storescu(write_datasets([*rtset.ct, rtstruct], workdir / "big"), gateway.dicom_port,
             calling="BIG")
    other = make_rt_set("ISO-BIG-OTHER", with_dose=False)
    storescu(write_datasets(other.all(), workdir / "big-other"), gateway.dicom_port,
             calling="FOLLOW")
    wait_until(lambda: study_sop_uids(archive, other.study_uid) >= sop_uids(other.all()), 90,
               "another study forwarded while the huge structure set is handled")

    def settled() -> list[dict[str, object]]:
        jobs = gateway.get("/rt-gateway/jobs", params={"limit": 1000})
        assert jobs.status_code == 200, "routes answer while a job worker crashes"
        return [j for j in jobs.json()
                if j["rule"] == "big contours" and j["state"] in ("done", "dead")]

    jobs = wait_until(settled, 180, "the huge structure set's job settled")
    job = jobs[0]
    # Either rasterized within bounded memory (done) or refused/poisoned with the reason.
    if job["state"] == "dead":
        assert job["last_error"], job
    assert gateway.process is not None and gateway.process.pid == orthanc_pid
    assert gateway.process.poll() is None, "Orthanc must never restart"
    assert gateway.json("/system")["DicomAet"] == "RTGATEWAY"


def test_contour_limit_refuses_with_reason_and_quarantines(
    gateway: OrthancProcess, workdir: Path
) -> None:
    rtset = make_rt_set("ISO-LIMIT", n_slices=6, with_dose=False)
    rtstruct = _structure_set_with_huge_contours(rtset, 600_000 // 2 + 250_001)
    storescu(write_datasets([*rtset.ct, rtstruct], workdir / "limit"), gateway.dicom_port,
             calling="BIG")
    rows = wait_until(
        lambda: [r for r in gateway_rows(gateway, kind="quarantine")
                 if "MaxPointsPerContour" in (r.get("reason") or "")],
        120, "the structure set quarantined with the limit named")
    assert "points" in rows[0]["reason"]


def test_kill_9_of_a_worker_mid_forward_orthanc_keeps_receiving_and_job_finishes_once(
    gateway: OrthancProcess, counter: CountingPeer, workdir: Path, archive: OrthancProcess
) -> None:
    series = ct("ISO-KILL", 60, 64)
    storescu(write_datasets(series, workdir / "kill"), gateway.dicom_port, calling="SLOW")

    def running_claimant() -> str:
        for job in gateway.json("/rt-gateway/jobs", params={"state": "running"}):
            if job["rule"] == "slow forward" and job.get("claimed_by"):
                return str(job["claimed_by"])
        return ""

    claimant = wait_until(running_claimant, 60, "a slow forward job running")
    victim = int(claimant.rsplit(":", 1)[1])
    assert victim in worker_pids(gateway)
    os.kill(victim, signal.SIGKILL)
    # Orthanc keeps receiving while the worker is restarted.
    during = make_rt_set("ISO-KILL-DURING", with_dose=False)
    storescu(write_datasets(during.all(), workdir / "kill-during"), gateway.dicom_port,
             calling="FOLLOW")
    wait_until(lambda: counter.distinct() >= len(series), 120, "every slice at the receiver")
    wait_until(lambda: study_sop_uids(archive, during.study_uid) >= sop_uids(during.all()), 60,
               "the study sent during the restart forwarded")
    wait_until(lambda: len(worker_pids(gateway)) == 3 and victim not in worker_pids(gateway), 30,
               "the killed worker restarted")

    def slow_jobs() -> list[dict[str, object]]:
        return [j for j in gateway.json("/rt-gateway/jobs", params={"limit": 500})
                if j["rule"] == "slow forward"]

    wait_until(lambda: all(j["state"] == "done" for j in slow_jobs()), 60, "every job done")
    # Each job ran to its end once: its instances are all recorded sent, none twice.
    jobs = slow_jobs()
    assert sum(int(str(j["sent"])) for j in jobs) == len(series)
    assert any(int(str(j["crashes"])) == 1 for j in jobs), "the killed worker's job was reclaimed"
    events = gateway_rows(gateway, kind="events")
    assert any(e["event"] == "worker-crashed" for e in events)


def ct(patient_id: str, n_slices: int, size: int) -> list:  # type: ignore[type-arg]
    return make_ct_series(patient_id=patient_id, patient_name="Isolation^Test",
                          study_uid=generate_uid(), frame_of_reference_uid=generate_uid(),
                          n_slices=n_slices, rows=size, columns=size)


def forwarding_gateway(folder: Path, peer: CountingPeer) -> OrthancProcess:
    """A gateway of its own that forwards everything from MOD to the counting receiver."""
    return OrthancProcess(
        folder / "gateway", "RTGATEWAY", plugin=True,
        rules="rules:\n  - name: all\n    on: instance\n    match: {calling_aet: MOD}\n"
              "    actions: [{forward: COUNTER}]\n",
        modalities={"COUNTER": ("COUNTER", peer.port)},
    )


def _queue_counts(db: Path) -> dict[str, int]:
    with sqlite3.connect(db) as connection:
        return dict(connection.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state"))


def test_sigterm_with_500_queued_stops_by_itself_and_all_arrive_once(tmp_path: Path) -> None:
    require_orthanc()
    peer = CountingPeer("COUNTER", delay_seconds=0.01)
    gateway = forwarding_gateway(tmp_path, peer)
    try:
        gateway.start()
        series = ct("ISO-TERM", 500, 32)
        storescu(write_datasets(series, tmp_path / "in"), gateway.dicom_port, calling="MOD")
        wait_until(lambda: sum(_queue_counts(gateway.gateway_db).values()) > 0, 30, "jobs queued")
        workers = worker_pids(gateway)
        assert len(workers) == 3
        assert gateway.process is not None
        gateway.process.send_signal(signal.SIGTERM)
        # Stopped by itself before systemd's TimeoutStopSec (deploy/rt-gateway.service) would
        # kill it: wait() raises if it has not.
        gateway.process.wait(30)
        gateway.process = None
        wait_until(lambda: not worker_pids(gateway), 5, "no worker left after SIGTERM")
        gateway.start()
        wait_until(lambda: peer.distinct() == 500, 120, "all 500 delivered after the restart")
        wait_until(lambda: jobs_settled(gateway), 60, "queue empty")
        # In flight at the stop: asked at the receiver (C-FIND) before anything was sent again.
        assert peer.total() == 500, peer.duplicates()
    finally:
        gateway.stop()
        peer.close()
        keep_logs(gateway, "isolation-sigterm")


def test_kill_9_of_orthanc_leaves_no_worker_and_one_generation_after_restart(
    tmp_path: Path,
) -> None:
    require_orthanc()
    peer = CountingPeer("COUNTER", delay_seconds=0.05)
    gateway = forwarding_gateway(tmp_path, peer)
    try:
        gateway.start()
        series = ct("ISO-K9", 120, 32)
        storescu(write_datasets(series, tmp_path / "in"), gateway.dicom_port, calling="MOD")
        wait_until(lambda: peer.distinct() > 5, 60, "forwarding under way")
        old_workers = worker_pids(gateway)
        assert len(old_workers) == 3
        gateway.kill9()
        wait_until(lambda: not worker_pids(gateway), 5, "workers gone with Orthanc (kill -9)")
        gateway.start()
        assert gateway.process is not None
        new_workers = wait_until(lambda: len(worker_pids(gateway)) == 3 and worker_pids(gateway),
                                 30, "two workers of the new generation")
        assert all(parent_of(pid) == gateway.process.pid for pid in new_workers)
        wait_until(lambda: peer.distinct() == 120, 120, "all 120 delivered after the restart")
        wait_until(lambda: jobs_settled(gateway), 60, "queue empty")
        assert peer.total() == 120, peer.duplicates()
    finally:
        gateway.stop()
        peer.close()
        keep_logs(gateway, "isolation-kill9")


def test_second_generation_ends_a_surviving_orphan_first(tmp_path: Path) -> None:
    """A worker that outlived its Orthanc holds the generation lock: the next Orthanc ends it
    before it starts workers, so two generations never run against one database."""
    require_orthanc()
    from orthanc_plugin.channels import channels_for

    gateway = OrthancProcess(
        tmp_path / "gateway", "RTGATEWAY", plugin=True,
        rules="rules:\n  - name: none\n    on: instance\n    match: {calling_aet: NOBODY}\n"
              "    actions: [{forward: X}]\n",
        modalities={"X": ("X", 1)},
    )
    channels = channels_for(gateway.gateway_db)
    # The orphan: holds the lock as an inherited descriptor would, named like a worker of these
    # channels, its pid in a pid file, as a worker of an earlier generation leaves it.
    orphan = subprocess.Popen(
        ["python3", "-c",
         "import fcntl,os,sys,time\nfd=os.open(sys.argv[1],os.O_RDWR|os.O_CREAT)\n"
         "fcntl.flock(fd,fcntl.LOCK_EX)\nprint('locked',flush=True)\ntime.sleep(600)",
         str(channels.lock_file), "orthanc_plugin.worker", "--channels", str(channels.folder)],
        stdout=subprocess.PIPE)
    try:
        assert orphan.stdout is not None and orphan.stdout.readline().strip() == b"locked"
        channels.pid_file(5).write_text(str(orphan.pid))
        gateway.start()
        wait_until(lambda: orphan.poll() is not None, 20, "the orphan ended by the new generation")
        assert gateway.process is not None
        workers = wait_until(lambda: len(worker_pids(gateway)) == 3 and worker_pids(gateway), 30,
                             "the new generation started")
        assert all(parent_of(pid) == gateway.process.pid for pid in workers)
        assert "waiting for the previous generation" in gateway.log_tail(200)
    finally:
        if orphan.poll() is None:
            orphan.kill()
        gateway.stop()
        keep_logs(gateway, "isolation-orphan")


def test_worker_config_error_stops_orthanc_start_with_the_reason(tmp_path: Path) -> None:
    require_orthanc()
    gateway = OrthancProcess(
        tmp_path / "gateway", "RTGATEWAY", plugin=True,
        rules="rules: []\n", gateway_settings={"Contours": {"MaxPointsPerContour": -1}},
    )
    with pytest.raises(RuntimeError):
        gateway.start()
    assert "RtGateway: not starting: RtGateway.Contours.MaxPointsPerContour" in gateway.log_tail(80)


def test_a_second_orthanc_on_the_same_database_does_not_take_over(tmp_path: Path) -> None:
    """Two Orthancs pointed at one gateway database: the second reports it and starts no worker;
    the first's workers are not killed (only orphans are)."""
    require_orthanc()
    rules = ("rules:\n  - name: none\n    on: instance\n    match: {calling_aet: NOBODY}\n"
             "    actions: [{forward: X}]\n")
    first = OrthancProcess(tmp_path / "first", "FIRST", plugin=True, rules=rules,
                           modalities={"X": ("X", 1)})
    second = OrthancProcess(tmp_path / "second", "SECOND", plugin=True, rules=rules,
                            modalities={"X": ("X", 1)},
                            gateway_settings={"Database": str(first.gateway_db)})
    try:
        first.start()
        workers = wait_until(lambda: len(worker_pids(first)) == 3 and worker_pids(first), 30,
                             "the first gateway's workers")
        second.start(wait=False)
        wait_until(lambda: "another Orthanc" in second.log_tail(200), 30,
                   "the second Orthanc reports the shared database")
        assert worker_pids(first) == workers
        assert first.process is not None
        assert all(parent_of(pid) == first.process.pid for pid in worker_pids(first))
    finally:
        second.stop()
        first.stop()
