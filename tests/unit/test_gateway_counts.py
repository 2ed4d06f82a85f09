"""The gateway's counters and the received table's reads, from their stores (audit/counts.py,
audit/received.py): Prometheus totals continue from the audit (pruned totals added), per target
too, and a destination is asked about the keys the intake recorded."""

from __future__ import annotations

import time
from pathlib import Path

from tests.support.fake_orthanc import FakeOrthanc
from tests.support.gateway_site import build_site
from tests.support.rtset import make_rt_set

RULES = """
rules:
  - name: everything to the archive
    on: instance
    match: {calling_aet: TPS}
    actions:
      - forward: [ARCHIVE]
"""


def test_counters_continue_from_the_audit_and_the_received_keys_are_read_back(
        tmp_path: Path) -> None:
    orthanc = FakeOrthanc({"ARCHIVE": "ARCHIVE_AE"})
    site = build_site(tmp_path, RULES, orthanc)
    datasets = make_rt_set(n_slices=3, with_dose=False).all()
    ids = [orthanc.receive(ds, calling_aet="TPS") for ds in datasets]
    orthanc.modality("ARCHIVE").refused_with[ids[0]] = "0xA700"   # one refused for good
    site.note_stored(*ids)
    site.take_in()
    site.run_queue()

    counters = site.gateway.metrics_snapshot()
    sent = sum(row["instances"] for row in site.transfers("success"))
    assert sent == len(ids) - 1
    all_rows = sum(row["instances"] for row in site.transfers())
    failures = len(site.transfers()) - len(site.transfers("success"))
    assert failures >= 1
    assert counters["rtgw_instances_sent_total"] == all_rows
    assert counters["rtgw_bytes_sent_total"] == sum(row["bytes"] for row in site.transfers())
    assert counters["rtgw_transfer_failures_total"] == failures
    assert counters["rtgw_target_ARCHIVE_instances_sent_total"] == all_rows
    assert counters["rtgw_target_ARCHIVE_failures_total"] == failures
    assert counters["rtgw_jobs_dead"] == 1 and counters["rtgw_jobs_pending"] == 0
    assert counters["rtgw_rule_evaluations_total"] == len(site.rows("SELECT 1 FROM evaluations"))

    # Retention prunes every transfer and evaluation a year on: the counters do not go down.
    removed = site.gateway.retention.prune(now=time.time() + 365 * 86400)
    assert removed["transfers"] > 0 and removed["evaluations"] > 0
    assert site.rows("SELECT 1 FROM transfers") == site.rows("SELECT 1 FROM evaluations") == []
    after = site.gateway.metrics_snapshot()
    assert {name: value for name, value in after.items() if name.endswith("_total")} == {
        name: value for name, value in counters.items() if name.endswith("_total")}

    keys = site.gateway.instance_keys([*ids, "not-received"])
    assert set(keys) == set(ids)   # an unknown instance is asked of Orthanc, which has none
    for instance_id, ds in zip(ids, datasets, strict=True):
        assert (keys[instance_id].sop_uid, keys[instance_id].sop_class_uid) == (
            str(ds.SOPInstanceUID), str(ds.SOPClassUID))
    sizes = site.gateway.file_sizes(ids)
    assert sizes == {iid: len(orthanc.instances[iid].file) for iid in ids}
