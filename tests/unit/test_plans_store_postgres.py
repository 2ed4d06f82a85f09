"""The plans' store with two nodes on one PostgreSQL (READ COMMITTED, each node its own connection):
a plan whose CT reaches node A while its RTPLAN and RTDOSE reach node B completes once, and a
plan-complete rule acts on it once. Each test fails without the store's lock it is about."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest

from orthanc_plugin.audit.tables import SCHEMA as AUDIT_SCHEMA
from orthanc_plugin.db_engine import DbConnection
from orthanc_plugin.db_postgres import SCHEMA_LOCK, PostgresDatabase
from orthanc_plugin.jobs.tables import SCHEMA as JOBS_SCHEMA
from orthanc_plugin.plans import store
from orthanc_plugin.plans.model import RtObject
from orthanc_plugin.plans.tables import SCHEMA as PLANS_SCHEMA
from orthanc_plugin.plans.tables import SCHEMA_LOCK as PLANS_SCHEMA_LOCK
from orthanc_plugin.plans.tables import create_worklist_index
from orthanc_plugin.plans.tracker import FINAL_OUTCOMES, PlanTracker

SCHEMAS = [AUDIT_SCHEMA, JOBS_SCHEMA, PLANS_SCHEMA]
# How long the first node keeps its transaction open after the second started waiting: the
# second, without the lock, would read the first's rows before they are committed.
HOLD = 0.4


@pytest.fixture
def nodes(postgres_conninfo: str) -> Any:
    """Two nodes' databases on one server (each thread its own connection)."""
    node_a, node_b = PostgresDatabase(postgres_conninfo, SCHEMAS), PostgresDatabase(
        postgres_conninfo, SCHEMAS)
    create_worklist_index(node_a)
    create_worklist_index(node_b)           # the second node's start: nothing twice
    yield node_a, node_b
    node_a.close()
    node_b.close()


def receive(connection: DbConnection, instance_id: str, modality: str, state: str = "ready"
            ) -> None:
    connection.execute(
        "INSERT INTO received(instance_id, received_at, calling_aet, remote_ip, modality, "
        "patient_id, study_id, study_uid, series_uid, sop_instance_uid, instance_number, state) "
        "VALUES(?,?,?,?,?,?,?,?,?,?,?,?)",
        (instance_id, "2026-12-03T08:00:00+00:00", "TPS", "10.0.0.9", modality, "PAT", "st",
         "1.2.st", "se-" + modality, "uid-" + instance_id, 1, state))


def received_row(db: PostgresDatabase, instance_id: str) -> store.ReceivedRow:
    (row,) = [row for row in store.received_after(db, 0, 100) if row.instance_id == instance_id]
    return row


def tracker(db: PostgresDatabase) -> PlanTracker:
    """A node's plan tracker: its own database, no Orthanc (refresh_patient reads the tables and
    the study's tags only)."""
    facts = SimpleNamespace(study_tags=lambda study_id: {"PatientName": "SMITH^JOHN"})
    return PlanTracker(SimpleNamespace(db=db, host=None, facts=facts),  # type: ignore[arg-type]
                       expected_doses=1)


def in_thread(work: Any) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as error:  # reported by the test, not lost in the thread
            errors.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, errors


def test_a_plan_split_across_two_nodes_completes(nodes: Any) -> None:
    node_a, node_b = nodes
    with node_a.transaction() as connection:
        receive(connection, "ct", "CT", state="new")         # node A: not described yet
        receive(connection, "ss", "RTSTRUCT")
        receive(connection, "plan", "RTPLAN")                # node B's
        receive(connection, "dose", "RTDOSE")
        store.record_object(connection, received_row(node_a, "ss"),
                            RtObject("uid-ss", "RTSTRUCT", ("uid-ct",)), "", "", "t")
    b_built, ct_ready = threading.Event(), threading.Event()

    def node_b_tracks_plan_and_dose() -> None:
        with node_b.transaction() as connection:
            store.lock_patients(node_b, connection, ["PAT"])
            store.record_object(connection, received_row(node_b, "plan"),
                                RtObject("uid-plan", "RTPLAN", ("uid-ss",), "BREAST"), "", "", "t")
            store.record_object(connection, received_row(node_b, "dose"),
                                RtObject("uid-dose", "RTDOSE", ("uid-plan",), "", "PLAN"),
                                "", "", "t")
            tracker(node_b).refresh_patient(connection, "PAT")   # the CT is not there yet
            b_built.set()
            assert ct_ready.wait(10)
            time.sleep(HOLD)

    def node_a_tracks_the_ct() -> None:
        assert b_built.wait(10)
        node_a.execute("UPDATE received SET state='ready' WHERE instance_id='ct'")  # described
        ct_ready.set()
        with node_a.transaction() as connection:
            store.lock_patients(node_a, connection, ["PAT"])   # waits for node B's commit
            tracker(node_a).refresh_patient(connection, "PAT")

    (b, b_errors), (a, a_errors) = in_thread(node_b_tracks_plan_and_dose), in_thread(
        node_a_tracks_the_ct)
    b.join(20)
    a.join(20)
    assert not b_errors and not a_errors
    bundle = store.bundle(node_a, "uid-plan")
    assert bundle is not None
    assert (bundle.complete, bundle.missing) == (True, [])
    assert [m["modality"] for m in bundle.members] == ["CT", "RTSTRUCT", "RTPLAN", "RTDOSE"]
    assert bundle.completed_epoch is not None
    # The writer folded the search text (PostgreSQL has no rtgw_fold).
    assert node_a.query("SELECT search_text FROM plan_bundles")[0]["search_text"] == (
        "smith john pat breast  ")   # plan name and accession empty


def test_a_rule_acts_once_on_a_plan_two_nodes_decide_at_once(nodes: Any) -> None:
    node_a, node_b = nodes
    with node_a.transaction() as connection:
        store.save_bundle(connection, store.BundleState(
            plan_uid="P1", plan_instance_id="i-P1", patient_id="PAT", patient_name="SMITH^JOHN",
            study_uid="1.2.st", calling_aet="TPS", remote_ip="", plan_label="BREAST",
            plan_name="", plan_date="", complete=True, missing=(), members=(),
            accession_number="", patient_birth_date="", patient_sex=""), 100.0, "t")
    # Both nodes read the bundle as not yet run (tracker._run_rules, outside a transaction).
    assert [b.plan_uid for b in store.bundles_not_run(node_a, "r", FINAL_OUTCOMES)] == ["P1"]
    assert [b.plan_uid for b in store.bundles_not_run(node_b, "r", FINAL_OUTCOMES)] == ["P1"]
    a_decided = threading.Event()
    acted: dict[str, bool] = {}

    def decide(db: PostgresDatabase, name: str, first: bool) -> None:
        if not first:
            assert a_decided.wait(10)
        with db.transaction() as connection:
            acted[name] = store.rule_still_to_run(db, connection, "r", "P1", FINAL_OUTCOMES)
            if first:
                a_decided.set()
                time.sleep(HOLD)            # the other node asks now, and waits
            if acted[name]:
                store.record_rule_run(connection, "r", "P1", "fired", name, [], 1)

    (a, a_errors), (b, b_errors) = (in_thread(lambda: decide(node_a, "A", True)),
                                    in_thread(lambda: decide(node_b, "B", False)))
    a.join(20)
    b.join(20)
    assert not a_errors and not b_errors
    assert acted == {"A": True, "B": False}
    assert store.rule_runs(node_a, "P1") == [{"rule": "r", "outcome": "fired", "at": "A",
                                              "missing_json": "[]", "jobs": 1}]
    with node_a.transaction() as connection:     # a bundle that is gone is not acted on
        assert not store.rule_still_to_run(node_a, connection, "r", "nope", FINAL_OUTCOMES)


def test_the_plans_schema_lock_is_the_engines() -> None:
    assert PLANS_SCHEMA_LOCK == SCHEMA_LOCK
