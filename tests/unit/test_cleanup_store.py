"""The clean-up's store (cleanup/store.py) on the real tables it reads (the intake's, the queue's,
plans' and harvests'), on SQLite and on PostgreSQL: a study's arrival and every reason that keeps
it."""

from __future__ import annotations

import pytest

from orthanc_plugin.audit.tables import SCHEMA as AUDIT_SCHEMA
from orthanc_plugin.cleanup.store import Arrival, CleanupStore
from orthanc_plugin.db_engine import StateDatabase
from orthanc_plugin.harvest.tables import SCHEMA as HARVEST_SCHEMA
from orthanc_plugin.jobs.tables import SCHEMA as JOBS_SCHEMA
from orthanc_plugin.plans.tables import SCHEMA as PLANS_SCHEMA
from tests.conftest import MakeDatabase

OWN = "delete-after"


@pytest.fixture
def db(make_database: MakeDatabase) -> StateDatabase:
    return make_database([AUDIT_SCHEMA, JOBS_SCHEMA, PLANS_SCHEMA, HARVEST_SCHEMA])


def received(db: StateDatabase, instance_id: str, study_id: str, *, state: str = "ready",
             rules_done: int = 1, at: str = "2024-01-01T00:00:00+00:00") -> None:
    db.execute("INSERT INTO received(instance_id, received_at, state, instance_rules_done,"
               " study_id, study_uid, patient_id) VALUES(?, ?, ?, ?, ?, '1.2.3', 'P1')",
               (instance_id, at, state, rules_done, study_id))


def job(db: StateDatabase, state: str, *, action: str = "forward", study_uid: str = "",
        items: tuple[str, ...] = (), error: str | None = None) -> int:
    with db.transaction() as connection:
        job_id = int(connection.execute(
            "INSERT INTO jobs(idempotency_key, rule, action, trigger, level, resource_id, target,"
            " state, created_at, updated_at, study_uid, last_error) VALUES(?, 'r', ?, 'stable',"
            " 'study', 's', 'PACS', ?, 'then', 'then', ?, ?) RETURNING id",
            (f"{state}-{action}-{study_uid}-{items}", action, state, study_uid,
             error)).fetchall()[0][0])
        connection.executemany(
            "INSERT INTO job_items(job_id, rule, target, instance_id, position) VALUES(?, 'r',"
            " ?, ?, ?)", [(job_id, f"PACS-{job_id}", item, n) for n, item in enumerate(items)])
    return job_id


def test_an_arrival_counts_what_the_intake_and_its_followers_have_not_done(
        db: StateDatabase) -> None:
    store = CleanupStore(db, (OWN,))
    assert store.arrival("none") == Arrival(None, 0, False, False)
    received(db, "a", "S1")
    received(db, "b", "S1", state="new", rules_done=0)
    received(db, "c", "S1", rules_done=0)
    received(db, "d", "S1", state="gone", rules_done=0)
    # No study row yet: the last arrival is the received rows' time.
    assert store.arrival("S1") == Arrival(1704067200.0, 2, False, False)
    db.execute("INSERT INTO study_progress(study_id, last_received_at, stable_done_seq)"
               " VALUES('S1', 99.5, 3)")
    db.set_meta("index_cursor", "4")
    db.set_meta("plans_cursor", "3")
    assert store.arrival("S1") == Arrival(99.5, 2, True, True)
    db.execute("UPDATE study_progress SET stable_done_seq=4")
    db.set_meta("plans_cursor", "4")
    arrival, needs = store.study_needs("S1", "1.2.3", "P1")
    assert arrival == Arrival(99.5, 2, False, False)
    assert needs == ["2 instance(s) of the study not yet routed"]
    assert store.known_studies() == {"S1"}
    assert store.study_of("a") == ("S1", "1.2.3", "P1")
    assert store.study_of("missing") is None


def test_open_jobs_by_study_or_instance_but_not_the_clean_ups_own(db: StateDatabase) -> None:
    store = CleanupStore(db, (OWN,))
    received(db, "a", "S1")
    by_uid = job(db, "pending", study_uid="1.2.3")
    by_item = job(db, "dead", items=("a",), error="refused")
    job(db, "done", study_uid="1.2.3")
    job(db, "cancelled", items=("a",))
    job(db, "pending", action=OWN, study_uid="1.2.3")
    assert store.open_jobs("S1", "1.2.3") == [
        f"job {by_uid} (forward to PACS) waiting to run",
        f"job {by_item} (forward to PACS) parked: refused"]
    assert store.instance_jobs("a") == [f"job {by_item} (forward to PACS) parked: refused"]
    for n in range(4):
        job(db, "held", study_uid="1.2.3", items=(f"x{n}",))
    assert store.open_jobs("S1", "1.2.3")[-1] == "3 more job(s) not finished"


def test_plans_and_harvests_that_still_need_a_patient(db: StateDatabase) -> None:
    store = CleanupStore(db, (OWN,))
    plan = ("INSERT INTO plan_bundles(plan_uid, plan_instance_id, patient_id, study_uid,"
            " plan_label, plan_name, complete, missing_json, first_seen_epoch, updated_at)"
            " VALUES(?, 'x', 'P1', '1.2.3', ?, ?, ?, ?, ?, 'now')")
    db.execute(plan, ("p1", "PROSTATE", None, 0, '[{"what": "RTDOSE"}, "CT"]', 2.0))
    db.execute(plan, ("p2", None, "Boost", 1, "[]", 1.0))
    db.execute("INSERT INTO plan_rule_runs(rule, plan_uid, outcome, at) VALUES"
               " ('to linac', 'p2', 'held', 'now'), ('to tps', 'p1', 'held', 'now'),"
               " ('to tps', 'p1', 'fired', 'now')")
    assert store.patient_plans("P1", "1.2.3") == [
        "plan 'PROSTATE' of this patient is incomplete (missing RTDOSE, CT)",
        "plan 'Boost' is held by rule 'to linac'"]
    assert store.patient_plans("P2", "9.9") == []
    db.execute("INSERT INTO harvests(id, name, source, definition, state, concurrency,"
               " max_requests_per_minute, created_at, started_epoch, updated_at) VALUES"
               " (1, 'backfill', 'PACS', '{}', 'running', 1, 60, 'now', 0, 'now'),"
               " (2, '', 'PACS', '{}', 'done', 1, 60, 'now', 0, 'now')")
    for harvest, patient, series, state in ((1, "P1", "s1", "moving"), (1, "P1", "s2", "done"),
                                            (2, "P1", "s3", "pending"), (1, "P2", "s4", "done")):
        db.execute("INSERT INTO harvest_items(harvest_id, level, depth, patient_id, series_uid,"
                   " state, updated_at) VALUES(?, 'series', 3, ?, ?, ?, 'now')",
                   (harvest, patient, series, state))
    assert store.harvests("P1") == ["harvest 1 'backfill' is still fetching this patient"]
    assert store.harvests("P2") == []
