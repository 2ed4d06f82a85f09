"""The plans' store (plans/store.py) against a real database with the gateway's schema, on both
engines (SQLite, then a real PostgreSQL: conftest's make_database): what the tracker follows and
keeps, what the rules ran, and what the plan, worklist and queue pages read of the bundles, the
received instances, the audit and the queue."""

from __future__ import annotations

import pytest

from orthanc_plugin.db_engine import DbConnection, StateDatabase
from orthanc_plugin.plans import dvh_store, store
from orthanc_plugin.plans.model import RtObject
from orthanc_plugin.plans.worklist import WorklistQuery


@pytest.fixture
def db(plans_database: StateDatabase) -> StateDatabase:
    database = plans_database     # tests/conftest.py: the plan store on each engine
    return database


def receive(connection: DbConnection, instance_id: str, *, state: str = "ready",
            sop: str = "", modality: str = "CT", patient: str = "PAT", study_id: str = "st",
            series: str = "se", number: int = 1, at: str = "2026-12-03T08:00:00+00:00") -> None:
    connection.execute(
        "INSERT INTO received(instance_id, received_at, calling_aet, remote_ip, modality, "
        "patient_id, study_id, study_uid, series_uid, sop_instance_uid, instance_number, state) "
        "VALUES(?,?,?,?,?,?,?,?,?,?,?,?)",
        (instance_id, at, "TPS", "10.0.0.9", modality, patient, study_id, "1.2." + study_id,
         series, sop or "uid-" + instance_id, number, state))


def bundle_state(plan_uid: str = "P1", *, complete: bool = True, label: str = "BREAST",
                 missing: tuple[str, ...] = (), patient: str = "PAT",
                 source: str = "TPS", study: str = "1.2.st") -> store.BundleState:
    return store.BundleState(
        plan_uid=plan_uid, plan_instance_id="i-" + plan_uid, patient_id=patient,
        patient_name="SMITH^JOHN", study_uid=study, calling_aet=source, remote_ip="10.0.0.9",
        plan_label=label, plan_name="plan " + label, plan_date="20261203", complete=complete,
        missing=missing, members=[{"instance_id": "i-" + plan_uid, "sop_instance_uid": plan_uid,
                                   "modality": "RTPLAN", "series_uid": "s"}],
        accession_number="ACC", patient_birth_date="19700101", patient_sex="F")


def save(db: StateDatabase, state: store.BundleState, now: float = 100.0,
         updated_at: str = "2026-12-03T08:00:00+00:00") -> None:
    with db.transaction() as connection:
        store.save_bundle(connection, state, now, updated_at)


def job(connection: DbConnection, key: str, *, level: str = "plan", resource: str = "P1",
        study: str = "", target: str = "ARCHIVE", state: str = "pending", updated: str = "t1",
        patient: str = "PAT") -> int:
    (row,) = connection.execute(
        "INSERT INTO jobs(idempotency_key, rule, action, trigger, level, resource_id, patient_id, "
        "study_uid, target, state, created_at, updated_at, created_epoch) "
        "VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?) RETURNING id",
        (key, "rule " + key, "forward", "manual", level, resource, patient, study, target, state,
         "t0", updated, 5.0)).fetchall()
    return int(row["id"])


# -- the tracker ---------------------------------------------------------------------------------
def test_a_bundle_saved_again_keeps_its_first_sighting_names_and_completion(
        db: StateDatabase) -> None:
    save(db, bundle_state(complete=False, missing=("RTDOSE",)), now=100.0)
    first = store.bundle(db, "P1")
    assert first is not None
    assert (first.complete, first.missing, first.completed_epoch) == (False, ["RTDOSE"], None)
    assert first.members[0]["modality"] == "RTPLAN" and first.patient_birth_date == "19700101"

    save(db, bundle_state(complete=True, label="RENAMED"), now=200.0, updated_at="later")
    save(db, bundle_state(complete=True), now=300.0, updated_at="latest")
    again = store.bundle(db, "P1")
    assert again is not None
    assert (again.complete, again.missing, again.first_seen_epoch) == (True, [], 100.0)
    assert again.completed_epoch == 200.0      # the first moment it was complete
    assert again.plan_label == "BREAST" and again.updated_at == "latest"
    assert store.bundle(db, "nope") is None


def test_received_rows_after_the_cursor_in_order_whatever_their_state(db: StateDatabase) -> None:
    with db.transaction() as connection:
        for name, state in (("a", "ready"), ("b", "gone"), ("c", "new"), ("d", "ready")):
            receive(connection, name, state=state)
    rows = store.received_after(db, 1, 2)
    assert [(row.seq, row.instance_id, row.state) for row in rows] == [(2, "b", "gone"),
                                                                      (3, "c", "new")]
    assert rows[0].study_uid == "1.2.st" and rows[0].calling_aet == "TPS"


def test_patient_objects_are_those_still_stored_with_their_study_and_source(
        db: StateDatabase) -> None:
    with db.transaction() as connection:
        receive(connection, "plan", modality="RTPLAN", study_id="s1")
        receive(connection, "dose", modality="RTDOSE", state="gone")
        receive(connection, "other", modality="RTPLAN", patient="OTHER")
        rows = store.received_after(db, 0, 10)
        for row, rt in zip(rows, (RtObject("plan-uid", "RTPLAN", ("ss",), "BREAST", "", 3),
                                  RtObject("dose-uid", "RTDOSE", ("plan-uid",), "", "PLAN"),
                                  RtObject("x-uid", "RTPLAN")), strict=True):
            store.record_object(connection, row, rt, "plan name", "20261203", "at")
        # Read again: the references change, what it was first recorded with stays.
        store.record_object(connection, rows[0], RtObject("plan-uid", "RTPLAN", ("ss", "ss2"),
                                                          "CHANGED", "", 9), "n", "d", "later")
        objects = store.patient_objects(connection, "PAT")
    assert len(objects) == 1
    plan = objects[0]
    assert plan.rt == RtObject("plan-uid", "RTPLAN", ("ss", "ss2"), "BREAST", "", 3)
    assert (plan.instance_id, plan.study_id, plan.study_uid, plan.remote_ip, plan.calling_aet,
            plan.plan_name, plan.plan_date) == ("plan", "s1", "1.2.s1", "10.0.0.9", "TPS",
                                                "plan name", "20261203")


def test_stored_instances_by_uid_and_member_rows_in_order_past_one_chunk(db: StateDatabase) -> None:
    count = store.CHUNK + 100
    with db.transaction() as connection:
        for n in range(count):
            receive(connection, f"i{n}", sop=f"u{n}", number=n,
                    state="gone" if n == 7 else "ready")
        stored = store.stored_by_uid(connection, [f"u{n}" for n in range(count)] + ["unknown"])
        wanted = [f"i{n}" for n in reversed(range(count))] + ["unknown"]
        rows = store.member_rows(connection, wanted)
    assert set(stored) == {f"u{n}" for n in range(count)} - {"u7"}
    assert stored["u599"].instance_id == "i599" and stored["u599"].instance_number == 599
    assert [row.instance_id for row in rows] == [iid for iid in wanted[:-1] if iid != "i7"]


def test_a_rule_run_is_recorded_once_and_its_final_outcomes_end_the_pending_bundles(
        db: StateDatabase) -> None:
    save(db, bundle_state("P1"), now=200.0)
    save(db, bundle_state("P2"), now=100.0)
    save(db, bundle_state("P3"), now=300.0)
    with db.transaction() as connection:
        store.record_rule_run(connection, "r", "P1", "fired", "t1", [], 2)
        store.record_rule_run(connection, "r", "P1", "fired", "t2", ["x"], 5)  # ignored
        store.record_rule_run(connection, "r", "P2", "held", "t1", ["RTDOSE"], 0)
        store.record_rule_run(connection, "other", "P3", "fired", "t1", [], 1)
    final = ("fired", "not-matched")
    assert [b.plan_uid for b in store.bundles_not_run(db, "r", final)] == ["P2", "P3"]
    assert store.has_run(db, "r", "P2", ("held", "forwarded-incomplete"))
    assert not store.has_run(db, "r", "P2", final)
    assert not store.has_run(db, "other", "P1", final)
    assert store.rule_runs(db, "P1") == [{"rule": "r", "outcome": "fired", "at": "t1",
                                          "missing_json": "[]", "jobs": 2}]


# -- the plan's page and the plans' list ---------------------------------------------------------
def test_filtered_bundles_by_label_patient_date_and_completeness(db: StateDatabase) -> None:
    save(db, bundle_state("P1", label="ADP_LUNG", patient="B"))
    save(db, bundle_state("P2", label="ADPXLUNG", patient="A", complete=False))
    save(db, bundle_state("P3", label="BREAST", patient="A"))
    with db.transaction() as connection:
        connection.execute("UPDATE plan_bundles SET plan_date='20250101' WHERE plan_uid='P3'")

    def uids(**filters: object) -> list[str]:
        return [b.plan_uid for b in store.filtered_bundles(db, **filters)]  # type: ignore[arg-type]

    assert uids() == ["P3", "P2", "P1"]           # by patient, then plan date
    assert uids(label="P_L") == ["P1"]            # "_" is the character, not any character
    assert uids(label="adp") == ["P2", "P1"]
    assert uids(patient_id="A", complete=True) == ["P3"]
    assert uids(complete=False) == ["P2"]
    assert uids(plan_date_from="20260101") == ["P2", "P1"]
    assert uids(study_uid="1.2.st", patient_id="B") == ["P1"]


def test_received_times_and_the_latest_decision_of_each_rule(db: StateDatabase) -> None:
    with db.transaction() as connection:
        receive(connection, "a", at="t-a")
        receive(connection, "b", at="t-b")
        for rule, level, resource, study, matched in (
                ("plan rule", "plan", "P1", "1.2.st", 0), ("plan rule", "plan", "P1", "1.2.st", 1),
                ("study rule", "study", "study-id", "1.2.st", 1),
                ("study rule", "study", "other", "1.2.other", 0),
                ("plan rule", "plan", "P2", "1.2.st", 0)):
            connection.execute(
                "INSERT INTO evaluations(at, trigger, level, resource_id, study_uid, rule, "
                "matched, reason) VALUES('t', 'x', ?, ?, ?, ?, ?, 'why')",
                (level, resource, study, rule, matched))
    assert store.received_at(db, ["a", "b", "never"]) == {"a": "t-a", "b": "t-b"}
    decisions = store.latest_decisions(db, "P1", "1.2.st")
    assert [(d["rule"], d["level"], d["matched"]) for d in decisions] == [
        ("plan rule", "plan", 1), ("study rule", "study", 1)]
    assert [d["rule"] for d in store.latest_decisions(db, "P9", "")] == []


def test_sent_or_on_its_way_counts_the_plan_and_its_study_jobs_under_way_or_done(
        db: StateDatabase) -> None:
    with db.transaction() as connection:
        job(connection, "a", resource="P1", target="DONE", state="done")
        job(connection, "b", resource="P1", target="DEAD", state="dead")
        job(connection, "c", level="study", resource="st", study="1.2.st", target="STUDY",
            state="running")
        job(connection, "d", level="plan", resource="P2", study="1.2.st", target="OTHER",
            state="pending")
    assert store.sent_or_on_its_way(db, "P1", "1.2.st", "DONE")
    assert not store.sent_or_on_its_way(db, "P1", "1.2.st", "DEAD")
    assert store.sent_or_on_its_way(db, "P1", "1.2.st", "STUDY")
    assert not store.sent_or_on_its_way(db, "P1", "", "STUDY")
    assert not store.sent_or_on_its_way(db, "P1", "1.2.st", "OTHER")   # another plan's


# -- the worklist --------------------------------------------------------------------------------
def test_worklist_ids_count_every_match_even_past_the_last_page(db: StateDatabase) -> None:
    save(db, bundle_state("P1", source="TPS"), now=100.0)
    save(db, bundle_state("P2", source="ETHOS", complete=False), now=200.0)
    save(db, bundle_state("P3", source="ETHOS"), now=300.0)
    found = store.worklist_ids(db, WorklistQuery(per_page=2))
    assert (found.plan_uids, found.total) == (["P3", "P2"], 3)
    found = store.worklist_ids(db, WorklistQuery(source="ETHOS", descending=False))
    assert (found.plan_uids, found.total) == (["P2", "P3"], 2)
    found = store.worklist_ids(db, WorklistQuery(source="ETHOS", page=5, per_page=1))
    assert (found.plan_uids, found.total) == ([], 2)
    found = store.worklist_ids(db, WorklistQuery(text="smith", complete=True, received_from=150.0))
    assert (found.plan_uids, found.total) == (["P3"], 1)
    assert [b.plan_uid for b in store.bundles_by_uid(db, ["P3", "nope", "P1"])] == ["P3", "P1"]
    assert store.plan_sources(db) == ["ETHOS", "TPS"] and store.plan_sources(db, 1) == ["ETHOS"]


def test_the_jobs_of_plans_and_the_plans_a_rule_holds(db: StateDatabase) -> None:
    with db.transaction() as connection:
        own = job(connection, "own", resource="P1", study="1.2.st")
        study = job(connection, "study", level="study", resource="st", study="1.2.st")
        job(connection, "other plan", resource="P9", study="1.2.st")
        job(connection, "other study", level="study", resource="x", study="1.2.x")
        for rule, plan, outcome in (("r1", "P1", "held"), ("r1", "P2", "held"),
                                    ("r1", "P2", "forwarded-incomplete"), ("r2", "P3", "fired")):
            connection.execute("INSERT INTO plan_rule_runs(rule, plan_uid, outcome, at) "
                               "VALUES(?,?,?,'t')", (rule, plan, outcome))
    assert [j.id for j in store.jobs_of_plans(db, ["P1"], ["1.2.st"])] == [own, study]
    assert [j.id for j in store.jobs_of_plans(db, ["P1"], [])] == [own]
    assert store.held_plans(db, ["P1", "P2", "P3"]) == {"P1"}
    assert store.held_plans(db, []) == set()


# -- the queue page ------------------------------------------------------------------------------
def test_the_queue_page_reads_jobs_items_and_plan_names(db: StateDatabase) -> None:
    save(db, bundle_state("P1", label="BREAST"))
    with db.transaction() as connection:
        first = job(connection, "a", target="LINAC", state="pending", updated="t3")
        second = job(connection, "b", target="ARCHIVE", state="done", updated="t2")
        third = job(connection, "c", target="ARCHIVE", state="done", updated="t9", patient="")
        job(connection, "d", target="PARKED", state="dead")
        connection.executemany(
            "INSERT INTO job_items(job_id, rule, target, instance_id, position, state) "
            "VALUES(?,?,?,?,?,?)", [(first, "r", "LINAC", "i1", 0, "sent"),
                                    (first, "r", "LINAC", "i2", 1, "sent"),
                                    (first, "r", "LINAC", "i3", 2, "refused")])
    done = ("done",)
    assert store.count_jobs(db, done) == 2 and store.count_jobs(db, done, "LINAC") == 0
    newest = store.jobs_page(db, done, "", oldest_first=False, limit=10, offset=0)
    assert [j.id for j in newest] == [third, second]
    assert [j.id for j in store.jobs_page(db, ("pending", "done"), "ARCHIVE", oldest_first=True,
                                          limit=1, offset=1)] == [third]
    assert newest[0].trigger == "manual" and newest[0].created_epoch == 5.0
    assert store.jobs_by_state(db) == {"pending": 1, "done": 2, "dead": 1}
    assert store.job_targets(db) == ["ARCHIVE", "LINAC", "PARKED"]
    assert store.job_targets(db, "dead") == ["PARKED"]
    assert store.item_counts(db, [first, second]) == {first: {"sent": 2, "refused": 1}}
    assert store.plan_names(db, ["P1", "P9"]) == {
        "P1": store.PlanNames("BREAST", "plan BREAST", "20261203")}
    assert store.patient_names(db, ["PAT", "NOBODY"]) == {"PAT": "SMITH^JOHN"}
    assert store.item_counts(db, []) == {} and store.plan_names(db, []) == {}


def test_worklist_sorts_ignore_case_and_put_a_missing_value_first_going_up(
        db: StateDatabase) -> None:
    """SQLite's NOCASE and NULLs-first order on PostgreSQL too (no NOCASE there, NULLs last)."""
    save(db, bundle_state("P1", label="beta"), now=100.0)
    save(db, bundle_state("P2", label="ALPHA"), now=200.0)
    save(db, bundle_state("P3", label="Gamma"), now=300.0)
    with db.transaction() as connection:
        connection.execute("UPDATE plan_bundles SET plan_label=NULL, plan_date=NULL "
                           "WHERE plan_uid='P3'")

    def ids(sort: str, descending: bool) -> list[str]:
        return store.worklist_ids(db, WorklistQuery(sort=sort, descending=descending)).plan_uids

    assert ids("label", False) == ["P3", "P2", "P1"]
    assert ids("label", True) == ["P1", "P2", "P3"]
    assert ids("date", False)[0] == "P3" and ids("date", True)[-1] == "P3"
    assert [b.plan_uid for b in store.filtered_bundles(db)] == ["P3", "P2", "P1"]   # no date first
    assert [b.plan_uid for b in store.filtered_bundles(db, label="ALPHA")] == ["P2"]


def test_a_dvh_is_kept_per_plan_and_replaced_for_other_members(db: StateDatabase) -> None:
    assert dvh_store.cached_dvh(db, "P1", "k1") is None
    dvh_store.save_dvh(db, "P1", "k1", '{"structures": 1}')
    dvh_store.save_dvh(db, "P2", "k1", '{"structures": 2}')
    assert dvh_store.cached_dvh(db, "P1", "k1") == {"structures": 1}
    assert dvh_store.cached_dvh(db, "P1", "k2") is None      # other members: computed again
    dvh_store.save_dvh(db, "P1", "k2", '{"structures": 3}')
    assert dvh_store.cached_dvh(db, "P1", "k2") == {"structures": 3}
    assert dvh_store.cached_dvh(db, "P1", "k1") is None
    assert dvh_store.cached_dvh(db, "P2", "k1") == {"structures": 2}
    assert int(db.query("SELECT COUNT(*) AS n FROM plan_dvh")[0]["n"]) == 2
