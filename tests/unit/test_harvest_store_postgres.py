"""A harvest shared by nodes (PostgreSQL): two claimants, each with its own connection to a real
server (tests/support/postgres.py), take each series once and hold the harvest's concurrency
between them."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator

import pytest

from orthanc_plugin.db_postgres import PostgresDatabase
from orthanc_plugin.harvest.model import IN_FLIGHT_STATES, ItemLevel, ItemState, Transition, parse_definition
from orthanc_plugin.harvest.store import (
    HARVEST_LOCK_SPACE,
    RULES_LOCK_SPACE,
    Child,
    HarvestItem,
    HarvestStore,
    NewRuleVersion,
    canonical_json,
)
from orthanc_plugin.harvest.tables import SCHEMA

IN_FLIGHT = tuple(state.value for state in IN_FLIGHT_STATES)


@pytest.fixture
def nodes(postgres_conninfo: str) -> Iterator[list[HarvestStore]]:
    """Two nodes' stores on one database (separate PostgresDatabase: separate connections)."""
    first = PostgresDatabase(postgres_conninfo, [SCHEMA])
    second = PostgresDatabase(postgres_conninfo, [SCHEMA])
    yield [HarvestStore(first), HarvestStore(second)]
    first.close()
    second.close()


def series_harvest(store: HarvestStore, count: int, concurrency: int) -> tuple[int, list[int]]:
    """A harvest whose one patient found `count` series: (harvest id, the series rows' ids)."""
    harvest_id = store.create(parse_definition({"source": "PACS", "patients": ["P1"],
                                                "concurrency": concurrency}))
    patient = store.claim()
    assert patient is not None and patient.level == "patient"
    store.add_children(patient, [Child(ItemLevel.SERIES, "P1", "S1", f"1.2.{n}", "CT",
                                       expected_instances=1) for n in range(count)],
                       Transition(ItemState.DONE))
    return harvest_id, [row.id for row in store.items(harvest_id) if row.level == "series"]


def in_flight(store: HarvestStore, harvest_id: int) -> int:
    return int(store.db.query(
        f"SELECT COUNT(*) AS n FROM harvest_items WHERE harvest_id=? AND state IN "
        f"({','.join('?' * len(IN_FLIGHT))})", (harvest_id, *IN_FLIGHT))[0]["n"])


def test_a_series_another_node_is_writing_is_passed_over_not_waited_for(
        nodes: list[HarvestStore]) -> None:
    first, second = nodes
    harvest_id, ids = series_harvest(first, 3, concurrency=3)
    # The other node holds the first series' row (its transaction is open): this claim takes the
    # next one at once.
    answer: list[HarvestItem | None] = []
    with second.db.transaction() as connection:
        connection.execute("SELECT id FROM harvest_items WHERE id=? FOR UPDATE",
                           (ids[0],)).fetchall()
        claiming = threading.Thread(target=lambda: answer.append(first.claim()), daemon=True)
        claiming.start()
        claiming.join(5)
        assert not claiming.is_alive()      # not held up by the row the other node holds
    claiming.join(10)
    (taken,) = answer
    assert taken is not None and taken.id == ids[1] and taken.state == "moving"
    # Let go: the first series is claimed now, once.
    again = second.claim()
    assert again is not None and again.id == ids[0]
    assert in_flight(first, harvest_id) == 2


def test_the_concurrency_holds_while_another_node_is_claiming(nodes: list[HarvestStore]) -> None:
    """A claim in progress on the other node (its harvest lock taken, a row marked in flight, not
    yet committed) makes this claim wait for it and then count that row: with concurrency 1 it
    takes nothing. Counting without waiting would see no row in flight and take a second."""
    first, second = nodes
    harvest_id, ids = series_harvest(first, 2, concurrency=1)
    answer: list[HarvestItem | None] = []
    with second.db.transaction() as connection:
        connection.execute("SELECT pg_advisory_xact_lock(CAST(? AS INTEGER), CAST(? AS INTEGER))",
                           (HARVEST_LOCK_SPACE, harvest_id)).fetchall()
        connection.execute("UPDATE harvest_items SET state='moving' WHERE id=?", (ids[0],))
        claiming = threading.Thread(target=lambda: answer.append(first.claim()), daemon=True)
        claiming.start()
        claiming.join(0.5)
        assert claiming.is_alive()          # waits for the other node's claim to end
    claiming.join(10)
    assert answer == [None]
    assert in_flight(first, harvest_id) == 1
    assert first.item(ids[1]).state == "pending"


def test_two_nodes_claim_each_series_once_within_the_concurrency(
        nodes: list[HarvestStore]) -> None:
    concurrency = 3
    harvest_id, ids = series_harvest(nodes[0], 60, concurrency=concurrency)
    taken: list[int] = []
    most_in_flight = 0
    errors: list[BaseException] = []
    lock = threading.Lock()
    start = threading.Barrier(6)

    def worker(store: HarvestStore) -> None:
        nonlocal most_in_flight
        try:
            start.wait()
            idle = 0
            while idle < 50:
                item = store.claim()
                if item is None:
                    idle += 1
                    continue
                idle = 0
                counted = in_flight(store, harvest_id)
                with lock:
                    taken.append(item.id)
                    most_in_flight = max(most_in_flight, counted)
                store.settle(item.id, Transition(ItemState.COMPLETE), stored_instances=1)
        except BaseException as error:
            errors.append(error)

    # Three threads per node: each thread has its own connection (PostgresDatabase).
    threads = [threading.Thread(target=worker, args=(nodes[n % 2],)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert sorted(taken) == sorted(ids)                       # every series, none twice
    assert Counter(taken).most_common(1)[0][1] == 1
    assert 1 <= most_in_flight <= concurrency
    assert {row.state for row in nodes[1].items(harvest_id) if row.level == "series"} == {
        "complete"}
    assert {row.attempts for row in nodes[1].items(harvest_id) if row.level == "series"} == {1}


def test_a_harvest_is_not_finished_under_another_node_s_refresh(nodes: list[HarvestStore]) -> None:
    """The other node refreshes the settled harvest (not yet committed): finishing waits for it
    and then sees the rows it made pending. Counting without waiting would see none and mark
    the refreshed harvest done."""
    first, second = nodes
    harvest_id, ids = series_harvest(first, 1, concurrency=1)
    series = first.claim()
    assert series is not None
    first.settle(series.id, Transition(ItemState.FAILED, 0, "refused"))
    answer: list[bool] = []
    with second.db.transaction() as connection:
        connection.execute("UPDATE harvests SET pass=pass+1 WHERE id=?", (harvest_id,))
        connection.execute("UPDATE harvest_items SET state='pending' WHERE id=?", (ids[0],))
        finishing = threading.Thread(target=lambda: answer.append(
            first.finish_if_settled(harvest_id)), daemon=True)
        finishing.start()
        finishing.join(0.5)
        assert finishing.is_alive()
    finishing.join(10)
    assert answer == [False]
    harvest = first.harvest(harvest_id)
    assert harvest is not None and harvest.state == "running" and harvest.pass_number == 2
    assert first.finish_if_settled(harvest_id) is False   # the series waits to be moved again


def test_a_rule_version_another_node_is_adding_is_waited_for_and_not_added_again(
        nodes: list[HarvestStore]) -> None:
    """The other node's sync of the same rules file is adding version 1 (its transaction open):
    this node's waits for it, then finds that definition in force and adds nothing. Without the
    name's lock it would insert version 1 too and fail on the key (name, version) once the other
    commits; without reading the version again under the lock it would add a version 2."""
    first, second = nodes
    definition = parse_definition({"name": "nightly", "source": "PACS", "patients": ["P1"]})
    answer: list[NewRuleVersion | None] = []
    errors: list[BaseException] = []

    def sync() -> None:
        try:
            answer.append(first.create_rule_version(definition, "sha-1"))
        except BaseException as error:
            errors.append(error)

    with second.db.transaction() as connection:
        connection.execute("SELECT pg_advisory_xact_lock(CAST(? AS INTEGER), hashtext(?))",
                           (RULES_LOCK_SPACE, "nightly")).fetchall()
        harvest_id = connection.execute(
            "INSERT INTO harvests(name, source, definition, concurrency, max_requests_per_minute,"
            " created_at, started_epoch, updated_at) VALUES('nightly','PACS','{}',2,600,'t',0,'t')"
            " RETURNING id").fetchall()[0]["id"]
        connection.execute(
            "INSERT INTO harvest_rule_versions(name, version, harvest_id, definition, rules_sha256,"
            " created_at) VALUES('nightly', 1, ?, ?, 'sha-1', 't')",
            (harvest_id, canonical_json(definition)))
        syncing = threading.Thread(target=sync, daemon=True)
        syncing.start()
        syncing.join(0.5)
        assert syncing.is_alive()          # waits for the other node's sync to end
    syncing.join(10)
    assert errors == [] and answer == [None]
    assert [row.id for row in first.harvests()] == [harvest_id]
    version = first.rule_version("nightly")
    assert version is not None and (version.version, version.harvest_id) == (1, harvest_id)
