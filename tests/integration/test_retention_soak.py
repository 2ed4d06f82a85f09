"""Soak: 10,000 instances through a forward rule with retention set to seconds. The gateway
database (file and WAL) stays within 2x of its size after the first 1,000, every instance is
delivered once, and the Prometheus counter still counts all 10,000."""

from __future__ import annotations

import time
from pathlib import Path

from pydicom.uid import generate_uid

from tests.integration.conftest import keep_logs, require_orthanc
from tests.integration.helpers import prometheus
from tests.support.orthanc import OrthancProcess, storescu, wait_until
from tests.support.peers import CountingPeer
from tests.support.rtset import make_ct_series, write_datasets

BATCHES = 10
PER_BATCH = 1000
RETENTION_SECONDS = 3.0


def database_bytes(gateway: OrthancProcess) -> int:
    db = gateway.gateway_db
    return sum(path.stat().st_size for path in (db, db.with_name(db.name + "-wal"))
               if path.exists())


def test_database_stays_flat_over_10000_instances(tmp_path: Path) -> None:
    require_orthanc()
    peer = CountingPeer("COUNTER")
    gateway = OrthancProcess(
        tmp_path / "gateway", "RTGATEWAY", plugin=True, stable_age=1,
        rules="rules:\n  - name: all\n    on: instance\n    match: {calling_aet: MOD}\n"
              "    actions: [{forward: COUNTER}]\n",
        modalities={"COUNTER": ("COUNTER", peer.port)},
        gateway_settings={"Retention": {"MaxAgeDays": RETENTION_SECONDS / 86400,
                                        "CheckEverySeconds": 1}},
        # Orthanc's own storage is not the subject: it recycles the oldest patients.
        extra={"MaximumPatientCount": 3},
    )
    sizes: list[int] = []
    try:
        gateway.start()
        started = time.monotonic()
        for batch in range(BATCHES):
            files = write_datasets(make_ct_series(
                patient_id=f"SOAK-{batch}", patient_name="Soak^Test", study_uid=generate_uid(),
                frame_of_reference_uid=generate_uid(), n_slices=PER_BATCH, rows=8, columns=8),
                tmp_path / f"batch-{batch}")
            storescu(files, gateway.dicom_port, calling="MOD")
            expected = (batch + 1) * PER_BATCH
            wait_until(lambda expected=expected: peer.distinct() >= expected, 180,
                       f"{expected} delivered")
            for path in files:
                path.unlink()
            if batch == 0:
                time.sleep(1)
            sizes.append(database_bytes(gateway))
        wait_until(lambda: prometheus(gateway, "rtgw_instances_sent_total")
                   == BATCHES * PER_BATCH, 30, "the counter counts every instance")
        pruned = [line for line in gateway.log_tail(2000).splitlines() if "retention: removed" in line]
        print(f"soak: {BATCHES * PER_BATCH} instances in {time.monotonic() - started:.0f} s; "
              f"database bytes after each 1000: {sizes}; {len(pruned)} pruning rounds logged")
        assert pruned, "retention never removed anything"
        assert max(sizes) <= 2 * sizes[0], sizes
        assert peer.total() == BATCHES * PER_BATCH, peer.duplicates()
    finally:
        gateway.stop()
        peer.close()
        keep_logs(gateway, "retention-soak-gateway")
