"""The worklist and the queue as the page pages through them: search, filters, sort, paging, words
instead of UIDs, and where each plan went. A real database with the gateway's schema, on both
engines (SQLite, then a real PostgreSQL: conftest's make_database)."""

from __future__ import annotations

import json

import pytest

from orthanc_plugin.api.router import ApiError
from orthanc_plugin.config import RetryPolicySettings
from orthanc_plugin.db import Database
from orthanc_plugin.db_engine import StateDatabase
from orthanc_plugin.jobs.queue import JobQueue, JobSpec
from orthanc_plugin.plans import store
from orthanc_plugin.plans.queue_view import queue_page
from orthanc_plugin.plans.worklist import WorklistQuery, humane_missing, parse_query, worklist_page

SLICE_UID = "1.2.826.0.1.3680043.8.498.99999999999999999999"


@pytest.fixture
def db(plans_database: StateDatabase) -> StateDatabase:
    database = plans_database     # tests/conftest.py: the plan store on each engine
    add_plan(database, "P1", "SMITH^JOHN", "PAT-1", "BREAST_L", "TPS", 100.0, complete=True)
    add_plan(database, "P2", "DOE^JANE", "PAT-2", "PROSTATE", "ETHOS", 200.0, complete=False,
             missing=[f"RTSTRUCT {SLICE_UID}", "RTDOSE (0 of 1 expected)"])
    add_plan(database, "P3", "SMITH^ANNA", "PAT-3", "ADP_LUNG", "ETHOS", 300.0, complete=True,
             accession="ACC-777")
    return database


def add_plan(db: StateDatabase, plan_uid: str, name: str, patient: str, label: str, source: str,
             received: float, *, complete: bool, missing: list[str] | None = None,
             accession: str = "") -> None:
    members = [{"instance_id": f"i-{plan_uid}-{n}", "sop_instance_uid": f"{SLICE_UID}.{n}",
                "modality": "CT", "series_uid": f"s-{plan_uid}"} for n in range(3)]
    members.append({"instance_id": f"i-{plan_uid}-p", "sop_instance_uid": plan_uid,
                    "modality": "RTPLAN", "series_uid": "s-plan"})
    with db.transaction() as connection:
        connection.execute(
            "INSERT INTO plan_bundles(plan_uid, plan_instance_id, patient_id, patient_name, "
            "study_uid, calling_aet, plan_label, plan_name, plan_date, complete, missing_json, "
            "members_json, first_seen_epoch, updated_at, accession_number) "
            "VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (plan_uid, f"i-{plan_uid}-p", patient, name, f"study-{plan_uid}", source, label,
             "plan " + label, "20261203", int(complete), json.dumps(missing or []),
             json.dumps(members), received, "2026-12-03T08:00:00+00:00", accession))
        # As store.save_bundle does after its write: SQLite's triggers have folded the names
        # already, PostgreSQL has none and the writer folds them.
        folded = store.fold_search_text(connection, [plan_uid])
        assert folded == (0 if isinstance(db, Database) else 1)


def page(db: StateDatabase, **fields: object) -> dict:
    summaries = {"P1": {"intent": "CURATIVE", "prescription_gy": 50.0, "fractions": 25}}
    return worklist_page(db, WorklistQuery(**fields),  # type: ignore[arg-type]
                         lambda ids: {i: summaries[i] for i in ids if i in summaries})


def test_newest_first_by_default_in_words_without_member_uids(db: StateDatabase) -> None:
    answer = page(db)
    assert answer["total"] == 3 and [p["id"] for p in answer["plans"]] == ["P3", "P2", "P1"]
    text = json.dumps(answer)
    assert SLICE_UID not in text          # neither the members' UIDs nor a missing object's
    p2 = answer["plans"][1]
    assert p2["missing"] == ["RTSTRUCT (referenced, not received)", "RTDOSE (0 of 1 expected)"]
    assert p2["counts"] == {"CT": 3, "RTPLAN": 1} and p2["image_series"] == 1
    assert answer["plans"][2]["prescription_gy"] == 50.0 and answer["plans"][2]["fractions"] == 25
    assert answer["sources"] == ["ETHOS", "TPS"]


def test_search_by_name_in_any_order_of_words_id_label_and_accession(db: StateDatabase) -> None:
    assert {p["id"] for p in page(db, text="smith")["plans"]} == {"P1", "P3"}
    assert [p["id"] for p in page(db, text="smith john")["plans"]] == ["P1"]
    assert [p["id"] for p in page(db, text="John Smith")["plans"]] == ["P1"]
    assert [p["id"] for p in page(db, text="smith lung")["plans"]] == ["P3"]
    assert [p["id"] for p in page(db, text="PAT-2")["plans"]] == ["P2"]
    assert [p["id"] for p in page(db, text="adp")["plans"]] == ["P3"]
    assert [p["id"] for p in page(db, text="ACC-777")["plans"]] == ["P3"]
    assert page(db, text="100%")["total"] == 0           # LIKE wildcards are literal
    assert {p["id"] for p in page(db, text="_")["plans"]} == {"P1", "P3"}   # a literal _


def test_search_ignores_accents_case_and_punctuation(db: StateDatabase) -> None:
    add_plan(db, "P4", "MÜLLER^ZOË", "PAT-4", "HN", "TPS", 50.0, complete=True)
    add_plan(db, "P5", "O'BRIEN^PAT", "PAT-5", "BRAIN", "TPS", 40.0, complete=True)
    assert [p["id"] for p in page(db, text="muller")["plans"]] == ["P4"]
    assert [p["id"] for p in page(db, text="Zoe Müller")["plans"]] == ["P4"]
    assert [p["id"] for p in page(db, text="OBrien")["plans"]] == ["P5"]
    assert [p["id"] for p in page(db, text="o'brien")["plans"]] == ["P5"]
    assert [p["id"] for p in page(db, text="pat5")["plans"]] == ["P5"]       # PAT-5
    assert page(db, text="'")["total"] == 5                                   # nothing to match
    with db.transaction() as connection:                                      # a rename follows
        connection.execute("UPDATE plan_bundles SET patient_name='NÚÑEZ^ANA' WHERE plan_uid='P4'")
        # SQLite: by trigger; PostgreSQL: by the writer's fold.
        assert store.fold_search_text(connection, ["P4"]) == (0 if isinstance(db, Database) else 1)
    assert [p["id"] for p in page(db, text="nunez")["plans"]] == ["P4"]
    assert page(db, text="muller")["total"] == 0


def test_filters_sort_and_paging(db: StateDatabase) -> None:
    assert [p["id"] for p in page(db, complete=False)["plans"]] == ["P2"]
    assert {p["id"] for p in page(db, source="ETHOS")["plans"]} == {"P2", "P3"}
    assert [p["id"] for p in page(db, received_from=150, received_to=250)["plans"]] == ["P2"]
    by_patient = page(db, sort="patient", descending=False)["plans"]
    assert [p["patient_name"] for p in by_patient] == ["DOE^JANE", "SMITH^ANNA", "SMITH^JOHN"]
    first = page(db, per_page=2, page=1)
    second = page(db, per_page=2, page=2)
    assert first["pages"] == 2 and [p["id"] for p in second["plans"]] == ["P1"]


def test_where_each_plan_went_and_the_status_filters(db: StateDatabase) -> None:
    queue = JobQueue(db, RetryPolicySettings(max_attempts=1, base_delay_seconds=0,
                                             max_delay_seconds=0))
    with db.transaction() as connection:
        sent, _ = queue.enqueue(connection, JobSpec("manual-send x", "forward", "manual", "plan",
                                                    "P1", "ARCHIVE", "PAT-1", "study-P1"), ["a"])
        parked, _ = queue.enqueue(connection, JobSpec("rule", "forward", "stable-study", "study",
                                                      "st", "TPS", "PAT-3", "study-P3"), ["b"])
        connection.execute("UPDATE jobs SET state='done' WHERE id=?", (sent,))
        connection.execute("UPDATE jobs SET state='dead' WHERE id=?", (parked,))
        connection.execute("INSERT INTO plan_rule_runs(rule, plan_uid, outcome, at) "
                           "VALUES('hold', 'P2', 'held', '2026-12-03T08:00:00+00:00')")
    plans = {p["id"]: p for p in page(db)["plans"]}
    assert [(d["target"], d["state"]) for d in plans["P1"]["destinations"]] == [("ARCHIVE", "done")]
    assert [(d["target"], d["state"]) for d in plans["P3"]["destinations"]] == [("TPS", "dead")]
    assert plans["P2"]["held"] and plans["P2"]["destinations"] == []
    assert [p["id"] for p in page(db, status="sent")["plans"]] == ["P1"]
    assert [p["id"] for p in page(db, status="parked")["plans"]] == ["P3"]
    assert [p["id"] for p in page(db, status="held")["plans"]] == ["P2"]
    assert [p["id"] for p in page(db, status="not-sent")["plans"]] == ["P2"]

    active = queue_page(db, "parked", "", 1, 50)
    (job,) = active["jobs"]
    assert job["state"] == "parked" and job["patient_id"] == "PAT-3"
    assert job["patient_name"] == "SMITH^ANNA" and job["instances"] == 1 and job["sent"] == 0
    assert active["counts"] == {"done": 1, "parked": 1}
    done = queue_page(db, "done", "", 1, 50)["jobs"][0]
    assert done["plan_label"] == "BREAST_L" and done["manual"]
    assert queue.cancel_by_hand(parked) and not queue.cancel_by_hand(sent)
    assert queue_page(db, "cancelled", "", 1, 50)["total"] == 1


def test_bad_parameters_are_refused_with_their_name() -> None:
    def ints(name: str, default: int, **_: int) -> int:
        return default

    with pytest.raises(ApiError, match="sort"):
        parse_query({"sort": "uid"}, ints)
    with pytest.raises(ApiError, match="from"):
        parse_query({"from": "yesterday"}, ints)
    with pytest.raises(ApiError, match="time zone"):
        parse_query({"from": "2026-12-03T00:00:00"}, ints)
    with pytest.raises(ApiError, match="status"):
        parse_query({"status": "lost"}, ints)
    query = parse_query({"from": "2026-12-03T00:00:00+01:00", "q": " smith "}, ints)
    assert query.received_from == 1796252400.0 and query.text == "smith"
    assert query.descending                               # newest first by default


def test_missing_parts_in_words() -> None:
    assert humane_missing("RTSTRUCT 1.2.3.4.5") == "RTSTRUCT (referenced, not received)"
    assert humane_missing("RTDOSE (0 of 1 expected)") == "RTDOSE (0 of 1 expected)"
