"""The harvest store on both engines (tests/conftest.py make_database: SQLite, then a real
PostgreSQL)."""

from dataclasses import asdict, fields

import pytest

from orthanc_plugin.db_engine import POSTGRESQL, SQLITE
from orthanc_plugin.harvest.model import ItemLevel, ItemState, Transition, parse_definition
from orthanc_plugin.harvest.store import Child, Harvest, HarvestItem, HarvestStore, SeriesSums
from orthanc_plugin.harvest.tables import SCHEMA
from tests.conftest import MakeDatabase


@pytest.fixture
def store(make_database: MakeDatabase) -> HarvestStore:
    return HarvestStore(make_database([SCHEMA]))


def harvest(store: HarvestStore, **extra: object) -> int:
    return store.create(parse_definition({"source": "PACS", "patients": ["P1", "P2"], **extra}))


def series(uid: str, expected: int = 3, state: ItemState = ItemState.PENDING) -> Child:
    return Child(ItemLevel.SERIES, "P1", "S1", uid, "CT", expected_instances=expected, state=state)


def walk_to_series(store: HarvestStore, harvest_id: int, uids: list[str]) -> None:
    patient = store.claim()
    assert patient is not None and patient.level == "patient"
    store.add_children(patient, [Child(ItemLevel.STUDY, "P1", "S1")], Transition(ItemState.DONE))
    study = store.claim()
    assert study is not None and study.level == "study"   # deeper rows first
    store.add_children(study, [series(uid) for uid in uids], Transition(ItemState.DONE))


def test_claims_go_deepest_first_and_respect_the_concurrency(store: HarvestStore) -> None:
    harvest_id = harvest(store, concurrency=2)
    walk_to_series(store, harvest_id, ["A", "B", "C"])
    first, second = store.claim(), store.claim()
    assert first is not None and second is not None
    assert {first.series_uid, second.series_uid} == {"A", "B"}
    assert first.state == "moving" and first.attempts == 1
    assert store.claim() is None                   # two in flight: the third waits
    store.settle(first.id, Transition(ItemState.COMPLETE), stored_instances=3)
    third = store.claim()
    assert third is not None and third.series_uid == "C"


def test_a_cut_resumes_only_what_was_in_flight(store: HarvestStore) -> None:
    harvest_id = harvest(store, concurrency=3)
    walk_to_series(store, harvest_id, ["A", "B"])
    done, cut = store.claim(), store.claim()
    assert done is not None and cut is not None
    store.settle(done.id, Transition(ItemState.COMPLETE), stored_instances=3)
    assert store.recover() == 1
    states = {row.series_uid: row.state for row in store.items(harvest_id) if row.level == "series"}
    assert states == {done.series_uid: "complete", cut.series_uid: "pending"}
    again = store.claim()
    assert again is not None and again.id == cut.id and again.attempts == 2


def test_paused_harvests_are_not_claimed(store: HarvestStore) -> None:
    harvest_id = harvest(store)
    assert store.set_harvest_state(harvest_id, "paused", ("running",))
    assert store.claim() is None
    assert store.set_harvest_state(harvest_id, "running", ("paused",))
    assert store.claim() is not None


def test_a_refresh_walks_again_and_keeps_complete_series(store: HarvestStore) -> None:
    harvest_id = harvest(store, concurrency=4)
    walk_to_series(store, harvest_id, ["A", "B"])
    a, b = store.claim(), store.claim()
    assert a is not None and b is not None
    store.settle(a.id, Transition(ItemState.COMPLETE), stored_instances=3)
    store.settle(b.id, Transition(ItemState.FAILED, 0, "refused"))
    other = store.claim()   # P2 has no studies
    assert other is not None and other.patient_id == "P2"
    store.add_children(other, [], Transition(ItemState.DONE))
    assert store.finish_if_settled(harvest_id)
    assert not store.finish_if_settled(harvest_id)   # reported once

    assert store.refresh(harvest_id)
    rows = {(row.level, row.series_uid): row.state for row in store.items(harvest_id)}
    assert rows[("series", "A")] == "complete" and rows[("series", "B")] == "pending"
    assert rows[("study", "")] == "pending" and rows[("patient", "")] == "pending"
    study = next(row for row in store.items(harvest_id) if row.level == "study")
    # the study is found again with A grown at the source and a new series C
    added = store.add_children(study, [series("A", expected=4), series("B"), series("C")],
                               Transition(ItemState.DONE))
    assert added == 1
    series_states = {row.series_uid: row.state for row in store.items(harvest_id)
                     if row.level == "series"}
    assert series_states == {"A": "pending", "B": "pending", "C": "pending"}
    assert store.harvest(harvest_id).pass_number == 2   # type: ignore[union-attr]


def test_series_sums_count_the_series_rows_not_skipped(store: HarvestStore) -> None:
    harvest_id = harvest(store, concurrency=4)
    assert store.series_sums(harvest_id) == SeriesSums(0, 0, 0)     # nothing walked yet
    walk_to_series(store, harvest_id, ["A", "B"])
    study = next(row for row in store.items(harvest_id) if row.level == "study")
    store.add_children(study, [series("C", expected=7), series("D", expected=100,
                                                               state=ItemState.SKIPPED)],
                       Transition(ItemState.DONE))
    a = store.claim()
    assert a is not None and a.series_uid == "A"
    for kind in ("C-MOVE", "C-MOVE", "C-FIND"):                     # only moves count
        request_id, _ = store.reserve_request(a, "PACS", kind, 100_000)
        store.request_sent(request_id, a, "ok", None)
    store.settle(a.id, Transition(ItemState.COMPLETE), stored_instances=2)
    other = harvest(store, patients=["P9"])
    other_patient = next(row for row in store.items(other) if row.level == "patient")
    store.add_children(other_patient, [series("Z", expected=50)], Transition(ItemState.DONE))
    assert any(row.series_uid == "Z" for row in store.items(other))
    assert store.series_sums(harvest_id) == SeriesSums(expected=3 + 3 + 7, stored=2, moves=2)


def test_patient_zips_by_patient_id_once_written(store: HarvestStore) -> None:
    harvest_id = harvest(store, patients=["P2", "P1", "P3"])
    patients = {row.patient_id: row.id for row in store.items(harvest_id)
                if row.level == "patient"}
    assert store.patient_zips(harvest_id) == []
    store.update(patients["P2"], zip_name="P2__1.zip", zip_series_count=1)
    store.update(patients["P1"], zip_name="P1__2.zip", zip_series_count=2)
    store.update(patients["P3"], zip_name=None)
    other = harvest(store, patients=["P0"])
    store.update(next(row.id for row in store.items(other) if row.level == "patient"),
                 zip_name="P0__1.zip")
    assert store.patient_zips(harvest_id) == ["P1__2.zip", "P2__1.zip"]


# -- contract: the records carry every column ------------------------------------------------------
def _columns(store: HarvestStore, table: str) -> list[str]:
    if store.db.dialect == SQLITE:
        return [row["name"] for row in store.db.query(f"PRAGMA table_info({table})")]
    return [row["column_name"] for row in store.db.query(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema()"
        " AND table_name = ? ORDER BY ordinal_position", (table,))]


def test_a_harvest_item_comes_back_with_every_column_written(store: HarvestStore) -> None:
    harvest_id = harvest(store)
    columns = _columns(store, "harvest_items")
    assert [field.name for field in fields(HarvestItem)] == columns
    # Every column a value of its own (none the default), written behind the store's back.
    values: dict[str, object] = {
        "harvest_id": harvest_id, "parent_id": 901, "patient_item_id": 902, "level": "series",
        "depth": 3, "patient_id": "P7", "study_uid": "1.2.7", "series_uid": "1.2.7.1",
        "modality": "RTDOSE", "description": "dose", "state": "incomplete", "attempts": 4,
        "moves": 5, "next_attempt_at": 1234.5, "expected_instances": 6, "stored_instances": 7,
        "orthanc_series_id": "orthanc-s", "query_id": "query-q", "answer_index": 8,
        "orthanc_job": "job-j", "zip_name": "P7__1.zip", "zip_series_count": 9,
        "last_error": "short", "found_in_pass": 10, "updated_at": "2024-05-01T10:00:00",
        "claimed_by": "node-a/1-2:3", "lease_until": 2345.5, "fence": 11,
        "zip_claimed_by": "node-a/1-2:3#t", "zip_lease_until": 3456.5,
    }
    assert set(values) == set(columns) - {"id"}
    with store.db.transaction() as connection:
        item_id = connection.execute(
            f"INSERT INTO harvest_items({', '.join(values)}) VALUES({', '.join('?' * len(values))})"
            " RETURNING id", tuple(values.values())).fetchall()[0]["id"]
    item = store.item(item_id)
    assert asdict(item) == {"id": item_id, **values}
    assert [asdict(row) for row in store.items(harvest_id) if row.id == item_id] == [asdict(item)]
    with store.db.transaction() as connection:
        connection.execute("UPDATE harvest_items SET state='complete', level='series' WHERE id=?",
                           (item_id,))
    assert [row.id for row in store.complete_series(902)] == [item_id]


def test_a_harvest_and_its_rule_version_come_back_with_every_column(store: HarvestStore) -> None:
    definition = parse_definition({"name": "nightly", "source": "PACS", "patients": ["P1"]})
    created = store.create_rule_version(definition, rules_sha256="c0ffee")
    assert created is not None and (created.version, created.superseded) == (1, None)
    harvest_id = created.harvest_id
    row = store.db.query("SELECT * FROM harvests WHERE id=?", (harvest_id,))[0]
    found = store.harvest(harvest_id)
    assert found is not None
    # The column `pass` is a Python keyword: the record calls it pass_number.
    renamed = {"pass": "pass_number"}
    assert [renamed.get(name, name) for name in _columns(store, "harvests")] == [
        field.name for field in fields(Harvest)]
    assert {renamed.get(key, key): value for key, value in dict(row).items()} == asdict(found)
    assert store.harvests() == [found]
    version_row = store.db.query("SELECT * FROM harvest_rule_versions")[0]
    version = store.rule_version("nightly")
    assert version is not None
    assert _columns(store, "harvest_rule_versions") == [field.name for field in fields(version)]
    assert dict(version_row) == asdict(version)
    assert (version.version, version.harvest_id, version.rules_sha256) == (1, harvest_id, "c0ffee")


def test_the_requests_answer_every_column_and_the_series_in_order(store: HarvestStore) -> None:
    harvest_id = harvest(store)
    patient = store.claim()
    assert patient is not None
    request_id, _ = store.reserve_request(patient, "PACS", "C-FIND", 600, now=12.5)
    store.request_sent(request_id, patient, "ok", None)
    (answer,) = store.requests(harvest_id)
    assert list(answer) == [*_columns(store, "harvest_requests"), "series_uid"]
    assert (answer["id"], answer["item_id"], answer["kind"], answer["series_uid"]) == (
        request_id, patient.id, "C-FIND", "")


def test_rows_come_in_code_point_order_whatever_the_database_collation(
        store: HarvestStore) -> None:
    """SQLite orders text by code point; PostgreSQL by the database's collation, which on a
    server set up in en_US puts 'a' before 'B'. The store orders text itself, so the inventory
    and the ZIP list read the same on both engines."""
    if store.db.dialect == POSTGRESQL and store.db.query(
            "SELECT 1 FROM pg_collation WHERE collname='und-x-icu'"):
        # As a server whose default collation is a language's: case mixed into the alphabet.
        with store.db.transaction() as connection:
            for column in ("patient_id", "study_uid", "series_uid"):
                connection.execute(f'ALTER TABLE harvest_items ALTER COLUMN {column} TYPE TEXT '
                                   f'COLLATE "und-x-icu"')
    harvest_id = harvest(store, patients=["b", "C", "a", "B"], concurrency=4)
    patients = {row.patient_id: row for row in store.items(harvest_id)}
    assert list(patients) == ["B", "C", "a", "b"]
    for name in patients:
        store.update(patients[name].id, zip_name=f"{name}.zip")
    assert store.patient_zips(harvest_id) == ["B.zip", "C.zip", "a.zip", "b.zip"]
    store.add_children(patients["a"], [
        Child(ItemLevel.SERIES, "a", study, uid, "CT", state=ItemState.COMPLETE)
        for study, uid in (("s", "x"), ("S", "y"), ("s", "X"), ("S", "Y"))],
        Transition(ItemState.DONE))
    assert [(row.study_uid, row.series_uid) for row in store.complete_series(patients["a"].id)] == [
        ("S", "Y"), ("S", "y"), ("s", "X"), ("s", "x")]
    assert [row.series_uid for row in store.items(harvest_id) if row.patient_id == "a"] == [
        "", "Y", "y", "X", "x"]
