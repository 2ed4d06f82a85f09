"""The gateway database on a small filesystem that fills up (a real tmpfs mount): Orthanc keeps
taking C-STOREs, nothing is claimed as sent without its audit row, the gateway says so (log,
/health, Prometheus), and once space is freed it catches up by itself: every instance forwarded
once, no job left running, no restart."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from tests.integration.conftest import keep_logs, require_orthanc
from tests.integration.helpers import gateway_rows, prometheus
from tests.support.orthanc import OrthancProcess, storescu, wait_until
from tests.support.peers import CountingPeer
from tests.support.rtset import make_ct_series, write_datasets

TMPFS_MB = 24


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "small-disk"
    mount.mkdir()
    as_root = [] if os.geteuid() == 0 else ["sudo", "-n"]
    done = subprocess.run([*as_root, "mount", "-t", "tmpfs", "-o", f"size={TMPFS_MB}m", "tmpfs",
                           str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"this test needs to mount a tmpfs (root): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run([*as_root, "umount", "-l", str(mount)], check=False)


def fill_up(folder: Path) -> Path:
    """A file that takes every free byte left; returns it (delete it to free the space)."""
    filler = folder / "filler.bin"
    block = b"\0" * (1 << 20)
    with open(filler, "wb", buffering=0) as handle:
        for size in (1 << 20, 1 << 14, 1 << 10, 1):
            while True:
                try:
                    handle.write(block[:size])
                except OSError as error:
                    assert error.errno == errno.ENOSPC, error
                    break
    return filler


def series(patient: str, count: int, folder: Path) -> list[Path]:
    return write_datasets(make_ct_series(
        patient_id=patient, patient_name="Disk^Full", study_uid=generate_uid(),
        frame_of_reference_uid=generate_uid(), n_slices=count, rows=32, columns=32), folder)


def test_a_full_database_disk_loses_nothing_and_recovers_without_a_restart(
    tmp_path: Path, small_disk: Path
) -> None:
    require_orthanc()
    peer = CountingPeer("COUNTER", delay_seconds=0.03)
    gateway = OrthancProcess(
        tmp_path / "gateway", "RTGATEWAY", plugin=True,
        rules="rules:\n  - name: all\n    on: instance\n    match: {calling_aet: MOD}\n"
              "    actions: [{forward: COUNTER}]\n",
        modalities={"COUNTER": ("COUNTER", peer.port)},
        gateway_settings={"Database": str(small_disk / "gateway.sqlite"),
                          "TransactionLogFolder": str(small_disk / "logs"),
                          "MinFreeDiskMB": 1,
                          "Retry": {"MaxAttempts": 50, "BaseDelaySeconds": 1,
                                    "MaxDelaySeconds": 2}},
    )
    filler: Path | None = None
    try:
        gateway.start()
        first = series("DISK-1", 60, tmp_path / "first")
        second = series("DISK-2", 30, tmp_path / "second")
        total = len(first) + len(second)

        # 1. The disk fills while a forward is under way (the receiver takes 30 ms an instance).
        storescu(first, gateway.dicom_port, calling="MOD")
        wait_until(lambda: peer.distinct() >= 10, 60, "forwarding under way")
        assert gateway.get("/rt-gateway/health").status_code == 200
        filler = fill_up(small_disk)
        # 2. More images arrive while it is full: Orthanc (its storage elsewhere) takes them.
        storescu(second, gateway.dicom_port, calling="MOD")
        assert gateway.instance_count() == total

        health = wait_until(lambda: (lambda r: r.json() if r.status_code == 503 else None)(
            gateway.get("/rt-gateway/health")), 30, "health says degraded")
        assert any("not writable" in p or "writes failing" in p
                   for p in health["problems"]), health
        wait_until(lambda: prometheus(gateway, "rtgw_database_unwritable") == 1, 30,
                   "Prometheus says the database cannot be written")
        assert "cannot be written" in gateway.log_tail(400)
        # Long enough for a store job in flight when the disk filled to end: its outcome must
        # wait in the worker for the database, not be lost.
        time.sleep(3)
        sent_while_full = peer.distinct()

        # 3. Space comes back: no restart.
        pid = gateway.process.pid if gateway.process else None
        filler.unlink()
        filler = None
        wait_until(lambda: peer.distinct() == total, 120, f"all {total} delivered")

        def settled() -> bool:
            return not [j for state in ("pending", "running")
                        for j in gateway.json("/rt-gateway/jobs", params={"state": state})]

        wait_until(settled, 60, "no job pending or running")
        wait_until(lambda: gateway.get("/rt-gateway/health").status_code == 200, 30,
                   "health back to 200")
        wait_until(lambda: prometheus(gateway, "rtgw_database_unwritable") == 0, 30,
                   "Prometheus back to writable")
        assert gateway.process is not None and gateway.process.pid == pid
        assert peer.total() == total, peer.duplicates()  # every instance once
        transfers = gateway_rows(gateway, kind="transfers")
        recorded = sum(row["instances"] for row in transfers if row["status"] == "success")
        assert recorded == total, (recorded, total)  # every sent instance has its audit row
        successes = len([r for r in transfers if r["status"] == "success"])

        def success_lines() -> int:
            return "".join(path.read_text() for path in (small_disk / "logs").glob("*.log")
                           ).count("success:")
        # A transaction-log line is written just after its row commits: wait for the last one.
        wait_until(lambda: success_lines() >= successes, 30, "the transaction log written")
        assert success_lines() == successes
        print(f"disk full: {sent_while_full} of {total} at the receiver while full, "
              f"{total} after, {peer.total() - total} duplicates")
    finally:
        if filler is not None:
            with contextlib.suppress(OSError):
                os.unlink(filler)
        gateway.stop()
        peer.close()
        keep_logs(gateway, "disk-full-gateway")
