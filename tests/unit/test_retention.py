"""Retention on a real gateway database file: what is old and finished goes in batches, what is
unfinished stays, "sent once" survives the pruning, and counters never go down."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from orthanc_plugin.audit.tables import SCHEMA as AUDIT_SCHEMA
from orthanc_plugin.config import ConfigError, RetryPolicySettings
from orthanc_plugin.db import META_SCHEMA, Database
from orthanc_plugin.forwarding.commitment import commitment_gauges
from orthanc_plugin.forwarding.store import forget_pruned_jobs, note_delivered, record_committed
from orthanc_plugin.forwarding.tables import SCHEMA as FORWARDING_SCHEMA
from orthanc_plugin.jobs.own_output import SCHEMA as OWN_OUTPUT_SCHEMA
from orthanc_plugin.jobs.queue import JobQueue, JobSpec
from orthanc_plugin.jobs.tables import SCHEMA as JOBS_SCHEMA
from orthanc_plugin.retention import Retention, RetentionSettings, pruned_total, read_settings

DAY = 86400.0


@pytest.fixture
def db(tmp_path: Path) -> Database:
    return Database(tmp_path / "g.sqlite",
                    [META_SCHEMA, AUDIT_SCHEMA, JOBS_SCHEMA, OWN_OUTPUT_SCHEMA])


def queue_job(db: Database, queue: JobQueue, name: str, instances: list[str]) -> int:
    with db.transaction() as connection:
        job_id, _ = queue.enqueue(connection, JobSpec("all", "forward", "instance", "instance",
                                                      name, "PACS"), instances)
    assert job_id is not None
    return job_id


def finish(db: Database, queue: JobQueue) -> None:
    claim = queue.claim(1000)
    assert claim is not None
    queue.mark_sent(claim.items, {})
    queue.settle(claim.job_ids, None, None)


def test_old_finished_work_goes_and_sent_once_survives(db: Database) -> None:
    queue = JobQueue(db, RetryPolicySettings())
    for n in range(30):
        queue_job(db, queue, f"i{n}", [f"i{n}"])
    finish(db, queue)
    unfinished = queue_job(db, queue, "late", ["late-1"])
    with db.transaction() as connection:
        connection.executemany(
            "INSERT INTO transfers(job_id, rule, target, attempt, status, instances, bytes,"
            " started_at, ended_at) VALUES(1, 'all', 'PACS', 1, ?, 1, 100, '2020-01-01', '2020')",
            [("success",)] * 25 + [("failed",)] * 5)
        connection.executemany(
            "INSERT INTO received(instance_id, received_at, state, instance_rules_done, study_id)"
            " VALUES(?, '2020-01-01', 'ready', 1, 'S')", [(f"i{n}",) for n in range(30)]
            + [("late-1",)])
        connection.execute("INSERT INTO study_progress(study_id, last_received_at, "
                           "stable_done_seq) VALUES('S', 0, 1000)")
        connection.executemany(
            "INSERT INTO audit_events(at, event) VALUES('2020-01-01', 'x')", [()] * 20)
    retention = Retention(db, RetentionSettings(max_age_seconds=DAY, batch_rows=7,
                                                pause_seconds=0), lambda _: None)
    removed = retention.prune(now=time.time() + 2 * DAY)
    assert removed["jobs"] == 30 and removed["transfers"] == 30 and removed["audit events"] == 20
    # The unfinished job's instance keeps its intake row; the study row stays with it.
    assert removed["received rows"] == 30
    assert [r["instance_id"] for r in db.query("SELECT instance_id FROM received")] == ["late-1"]
    assert removed["study rows"] == 0
    assert queue.get(unfinished)["state"] == "pending"
    # Counters carry on.
    assert pruned_total(db, "sent_instances") == 30 and pruned_total(db, "failures") == 5
    assert pruned_total(db, "target_PACS_instances") == 30
    # The same instances coming round again are not assigned a second time.
    with db.transaction() as connection:
        again, fresh = queue.enqueue(connection, JobSpec("all", "forward", "study", "study", "S",
                                                         "PACS"), ["i3", "i4", "new"])
    assert fresh == 1 and again is not None
    assert [i["instance_id"] for i in db.query(
        "SELECT instance_id FROM job_items WHERE job_id=?", (again,))] == ["new"]


def test_committed_counter_keeps_what_retention_removes(tmp_path: Path) -> None:
    db = Database(tmp_path / "c.sqlite", [META_SCHEMA, AUDIT_SCHEMA, JOBS_SCHEMA,
                                          OWN_OUTPUT_SCHEMA, FORWARDING_SCHEMA])
    queue = JobQueue(db, RetryPolicySettings())
    for n in range(6):
        queue_job(db, queue, f"i{n}", [f"i{n}"])
    claim = queue.claim(1000)
    assert claim is not None
    queue.mark_sent(claim.items, {},
                    also=lambda connection, sent: note_delivered(connection, sent, time.time()))
    queue.settle(claim.job_ids, None, None)
    # Four confirmed by the receiver, two still waiting for its report.
    record_committed(db, "1.2.3", [(item.job_id, item.instance_id) for item in claim.items
                                   if item.instance_id in ("i0", "i1", "i2", "i3")])
    before = commitment_gauges(db)
    assert before["rtgw_instances_committed_total"] == 4
    assert before["rtgw_instances_commit_waiting"] == 2
    retention = Retention(db, RetentionSettings(max_age_seconds=DAY, batch_rows=4,
                                                pause_seconds=0), lambda _: None)
    retention.jobs_pruned.append(forget_pruned_jobs)   # as forwarding's install does
    assert retention.prune(now=time.time() + 2 * DAY)["jobs"] == 6
    assert db.query("SELECT COUNT(*) AS n FROM job_items")[0]["n"] == 0
    assert db.query("SELECT COUNT(*) AS n FROM forward_items")[0]["n"] == 0
    assert commitment_gauges(db)["rtgw_instances_committed_total"] == 4


def test_nothing_young_goes(db: Database) -> None:
    queue = JobQueue(db, RetryPolicySettings())
    queue_job(db, queue, "a", ["a"])
    finish(db, queue)
    retention = Retention(db, RetentionSettings(max_age_seconds=DAY), lambda _: None)
    assert not any(retention.prune().values())
    assert db.query("SELECT COUNT(*) FROM jobs")[0][0] == 1


def test_settings_are_checked() -> None:
    assert read_settings({}).max_age_seconds == 90 * DAY
    assert read_settings({"Retention": {"MaxAgeDays": None}}).max_age_seconds is None
    assert read_settings({"Retention": {"MaxAgeDays": 0.5}}).max_age_seconds == DAY / 2
    for bad in ({"MaxAgeDays": 0}, {"MaxAgeDays": "90"}, {"BatchRows": 0}, []):
        with pytest.raises(ConfigError, match="Retention"):
            read_settings({"Retention": bad})
