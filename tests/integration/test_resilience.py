"""Nothing lost: a target that is down, kill -9 mid-work, a study stored while the plugin was off,
and a broken rules file at start-up. Each test owns its processes (they are stopped and killed)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.integration.conftest import keep_logs, require_orthanc
from tests.integration.helpers import gateway_rows, sop_uids, study_sop_uids
from tests.support.orthanc import OrthancProcess, storescu, wait_until
from tests.support.peers import CountingPeer
from tests.support.rtset import make_rt_set, write_datasets

FORWARD_ALL = """
rules:
  - name: Forward everything from FOLLOW
    on: {trigger}
    match: {{calling_aet: FOLLOW}}
    actions:
      - forward: ARCHIVE
"""


def make_pair(folder: Path, trigger: str = "stable-study", **gateway_settings: object):
    require_orthanc()
    archive = OrthancProcess(folder / "archive", "ARCHIVE")
    gateway = OrthancProcess(
        folder / "gateway", "RTGATEWAY", plugin=True,
        rules=FORWARD_ALL.format(trigger=trigger), modalities={"ARCHIVE": archive},
        gateway_settings=dict(gateway_settings),
    )
    return gateway, archive


def test_target_down_then_up_everything_arrives_once(tmp_path: Path) -> None:
    # Attempts enough to outlast the archive's start on a slow machine (6 ran out after about
    # 14 s past the second failure): the test waits for the state, the job must not give up.
    gateway, archive = make_pair(tmp_path, Retry={"MaxAttempts": 50, "BaseDelaySeconds": 1,
                                                  "MaxDelaySeconds": 2})
    gateway.start()
    try:
        rtset = make_rt_set("DOWN-1", plan_label="ADP1")
        storescu(write_datasets(rtset.all(), tmp_path / "in"), gateway.dicom_port,
                 calling="FOLLOW")
        failures = wait_until(
            lambda: [r for r in gateway_rows(gateway, kind="transfers") if r["status"] == "failed"],
            60, "at least two failed attempts while the target is down", interval=0.5,
        )
        wait_until(
            lambda: len([r for r in gateway_rows(gateway, kind="transfers")
                         if r["status"] == "failed"]) >= 2, 60, "a second failed attempt")
        job = gateway.json("/rt-gateway/jobs")[0]
        # Waiting for its next attempt, or in it: either is read, by chance of the moment.
        assert job["state"] in ("pending", "running") and job["attempts"] >= 2
        assert "connecting" in failures[0]["error"] or "Connection refused" in failures[0]["error"]

        archive.start()
        expected = sop_uids(rtset.all())
        wait_until(lambda: study_sop_uids(archive, rtset.study_uid) == expected, 60,
                   "study delivered after the target came up")
        assert archive.instance_count() == len(expected)
        wait_until(lambda: gateway.json(f"/rt-gateway/jobs/{job['id']}")["state"] == "done", 30,
                   "job done")
        attempts = [r["attempt"] for r in gateway_rows(gateway, kind="transfers")]
        assert attempts == sorted(attempts) and attempts[-1] >= 3
    finally:
        gateway.stop()
        archive.stop()
        keep_logs(gateway, "target-down-gateway")


def test_kill_9_with_jobs_pending_then_restart_delivers_exactly_once(tmp_path: Path) -> None:
    """The receiver holds an instance mid-batch while the gateway is killed, then stores it:
    the kill lands mid-work by construction, and only a C-FIND can tell that instance was
    delivered. Every instance arrives once and is counted by exactly one success transfer row,
    one transaction-log line and the stats."""
    require_orthanc()
    receiver = CountingPeer("ARCHIVE")
    receiver.stop()
    gateway = OrthancProcess(
        tmp_path / "gateway", "RTGATEWAY", plugin=True,
        rules=FORWARD_ALL.format(trigger="instance"),
        modalities={"ARCHIVE": ("ARCHIVE", receiver.port)},
        # Associations of 10: the claim in progress at the kill has chunks recorded as sent
        # and one in flight.
        gateway_settings={"MaxInstancesPerAssociation": 10},
    )
    gateway.start()
    try:
        first = make_rt_set("KILL-1", plan_label="ADP1", n_slices=40)
        second = make_rt_set("KILL-2", plan_label="ADP2", n_slices=40)
        expected = sop_uids(first.all()) | sop_uids(second.all())
        for rtset, folder in ((first, "a"), (second, "b")):
            storescu(write_datasets(rtset.all(), tmp_path / folder), gateway.dicom_port,
                     calling="FOLLOW")
        # The target is down: jobs pile up in the queue, their retries fall due together, and
        # the first claim after the target is up carries several associations' worth.
        wait_until(lambda: len(gateway.json("/rt-gateway/jobs", params={"limit": 500}))
                   >= len(expected), 30, "instance jobs queued")
        receiver.hold_after = 25
        receiver.start()
        wait_until(receiver.holding.is_set, 60, "the receiver holding an instance mid-batch")
        gateway.kill9()
        receiver.release.set()
        held = receiver.distinct()
        assert 0 < held < len(expected)

        gateway.start()
        wait_until(lambda: receiver.distinct() == len(expected), 90,
                   "all instances delivered after restart")

        def settled() -> bool:
            return not [j for state in ("pending", "running")
                        for j in gateway.json("/rt-gateway/jobs", params={"state": state})]

        wait_until(settled, 60, "queue drained")
        assert receiver.total() == len(expected), receiver.duplicates()
        assert set(receiver.stores) == expected
        evaluated = {r["resource_id"] for r in gateway_rows(gateway, kind="evaluations")}
        assert len(evaluated) == len(expected)

        def success_lines() -> list[str]:
            return [line for path in sorted(gateway.folder.rglob("transactions-*.log"))
                    for line in path.read_text().splitlines() if "\tsuccess: " in line]

        def recorded() -> bool:
            # A claim's jobs are settled before its transfer rows and log lines are written:
            # the queue can be drained a moment before the last rows exist.
            rows = [r for r in gateway_rows(gateway, kind="transfers") if r["status"] == "success"]
            return (sum(r["instances"] for r in rows) >= len(expected)
                    and len(success_lines()) >= len(rows))

        wait_until(recorded, 30, "every delivery recorded and logged")
        transfers = gateway_rows(gateway, kind="transfers")
        success = [r for r in transfers if r["status"] == "success"]
        assert sum(r["instances"] for r in success) == len(expected)
        assert sum(r["instances"] for r in transfers) == len(expected)
        stats = gateway.json("/rt-gateway/stats")
        assert stats["by_target"]["ARCHIVE"]["sent"] == len(expected)
        lines = success_lines()
        assert len(lines) == len(success), lines
        logged = sum(int(line.split("\tsuccess: ")[1].split(" ")[0]) for line in lines)
        assert logged == len(expected)
        verified = [e for e in gateway_rows(gateway, kind="events")
                    if e["event"] == "in-flight-verified"]
        assert verified, "what was in flight at the kill was asked of the receiver"
    finally:
        gateway.stop()
        receiver.close()
        keep_logs(gateway, "kill9-gateway")


def test_study_stored_while_plugin_was_off_is_processed_by_replay(tmp_path: Path) -> None:
    gateway, archive = make_pair(tmp_path)
    archive.start()
    gateway.start()
    try:
        gateway.stop()
        # The same Orthanc storage, without the plugin.
        gateway.start(config_overrides={"Plugins": []}, wait=False)
        gateway.plugin = False
        gateway.wait_ready()
        rtset = make_rt_set("REPLAY-1", plan_label="ADP1")
        storescu(write_datasets(rtset.all(), tmp_path / "in"), gateway.dicom_port,
                 calling="FOLLOW")
        gateway.stop()
        assert study_sop_uids(archive, rtset.study_uid) == set()

        gateway.plugin = True
        gateway.start()
        expected = sop_uids(rtset.all())
        wait_until(lambda: study_sop_uids(archive, rtset.study_uid) == expected, 60,
                   "study replayed from /changes and forwarded")
        received = gateway_rows(gateway, kind="received", study=rtset.study_uid)
        assert {r["calling_aet"] for r in received} == {"FOLLOW"}
    finally:
        gateway.stop()
        archive.stop()
        keep_logs(gateway, "replay-gateway")


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ("rules:\n  - name: x\n    on: stable\n    match: {}\n    actions: [{forward: ARCHIVE}]\n",
         "rules[0].on: unknown trigger 'stable'"),
        ("rules:\n  - name: x\n    on: instance\n    match: {}\n    actions: [{forward: NOWHERE}]\n",
         "rules[0].actions[0].forward"),
    ],
)
def test_broken_rules_at_start_stop_orthanc_with_the_reason(
    tmp_path: Path, rules: str, message: str
) -> None:
    gateway, _ = make_pair(tmp_path)
    gateway.rules_path.write_text(rules)
    gateway.start(wait=False)
    assert gateway.process is not None
    try:
        code = gateway.process.wait(30)
    except subprocess.TimeoutExpired:
        gateway.stop()
        pytest.fail("Orthanc started with a broken rules file")
    assert code != 0
    assert f"RtGateway: not starting: {message}" in gateway.log_path.read_text()
