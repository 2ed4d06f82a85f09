"""Retention's store (orthanc_plugin/retention_store.py) against a real gateway database with the
real schema, on SQLite and on PostgreSQL: each read picks exactly the old rows it should, in order
and bounded, and each delete removes exactly those rows."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import pytest

from orthanc_plugin import retention_store as store
from orthanc_plugin.audit.tables import SCHEMA as AUDIT_SCHEMA
from orthanc_plugin.db_engine import DbConnection, StateDatabase
from orthanc_plugin.index.tables import SCHEMA as INDEX_SCHEMA
from orthanc_plugin.jobs.own_output import SCHEMA as OWN_OUTPUT_SCHEMA
from orthanc_plugin.jobs.tables import SCHEMA as JOBS_SCHEMA
from tests.conftest import MakeDatabase

OLD = "2020-01-01T00:00:00.000+00:00"
CUTOFF = "2021-01-01T00:00:00.000+00:00"
NEW = "2022-01-01T00:00:00.000+00:00"


@pytest.fixture
def db(make_database: MakeDatabase) -> StateDatabase:
    """On each engine (conftest.make_database: SQLite, then PostgreSQL)."""
    return make_database([AUDIT_SCHEMA, JOBS_SCHEMA, OWN_OUTPUT_SCHEMA])


def add_job(connection: DbConnection, state: str, updated_at: str,
            items: Sequence[str] = ()) -> int:
    job_id = connection.execute(
        "INSERT INTO jobs(idempotency_key, rule, action, trigger, level, resource_id, target,"
        " state, created_at, updated_at) VALUES(?, 'r', 'forward', 'instance', 'instance', 'x',"
        " 'PACS', ?, ?, ?) RETURNING id",
        (uuid.uuid4().hex, state, updated_at, updated_at)).fetchall()[0][0]
    connection.executemany(
        "INSERT INTO job_items(job_id, rule, target, instance_id, position, state)"
        " VALUES(?, 'r', 'PACS', ?, 0, 'sent')", [(job_id, instance_id) for instance_id in items])
    return int(job_id)


def count(db: StateDatabase, table: str) -> int:
    return int(db.query(f"SELECT COUNT(*) FROM {table}")[0][0])


# -- totals --------------------------------------------------------------------------------------
def test_totals_add_up_in_meta_whether_or_not_the_key_was_there(db: StateDatabase) -> None:
    db.set_meta("pruned_sent", "5")
    with db.transaction() as connection:
        store.add_to_meta_totals(connection, {"pruned_sent": 2.5, "pruned_new": 3})
    with db.transaction() as connection:
        store.add_to_meta_totals(connection, {"pruned_new": 4})
    assert float(db.get_meta("pruned_sent") or 0) == 7.5
    assert float(db.get_meta("pruned_new") or 0) == 7
    # Byte totals pass 2**24 at once: added in 64-bit floats on both engines, exact.
    with db.transaction() as connection:
        store.add_to_meta_totals(connection, {"pruned_bytes": 2**40 + 1})
        store.add_to_meta_totals(connection, {"pruned_bytes": 2**40 + 1})
    assert float(db.get_meta("pruned_bytes") or 0) == 2**41 + 2


def test_meta_ints_reads_only_the_keys_that_are_set(db: StateDatabase) -> None:
    db.set_meta("index_cursor", "12")
    db.set_meta("other", "99")
    with db.transaction() as connection:
        assert store.meta_ints(connection, ("index_cursor", "plans_cursor")) == [12]
        db.set_meta("plans_cursor", "7", connection)
        assert sorted(store.meta_ints(connection, ("index_cursor", "plans_cursor"))) == [7, 12]
        assert store.has_table(connection, "jobs")
        assert not store.has_table(connection, "index_entries")


# -- finished jobs -------------------------------------------------------------------------------
def test_old_done_jobs_are_found_in_id_order_and_go_with_their_items(db: StateDatabase) -> None:
    with db.transaction() as connection:
        done = [add_job(connection, "done", OLD, [f"i{n}"])
                for n in range(3)]
        recent = add_job(connection, "done", NEW, ["recent"])
        parked = add_job(connection, "dead", OLD, ["parked"])
        pending = add_job(connection, "pending", OLD, ["pending"])
    with db.transaction() as connection:
        assert store.done_jobs_before(connection, CUTOFF, 2) == done[:2]
        assert store.done_jobs_before(connection, CUTOFF, 10) == done
        items = store.items_of_jobs(connection, done[1:])
        assert sorted(items, key=lambda item: item.instance_id) == [
            store.PrunedItem("r", "PACS", "i1"), store.PrunedItem("r", "PACS", "i2")]
        assert store.delete_jobs(connection, done[:2]) == 2
    left = [row["id"] for row in db.query("SELECT id FROM jobs ORDER BY id")]
    assert left == [done[2], recent, parked, pending]
    assert sorted(row["instance_id"] for row in db.query("SELECT instance_id FROM job_items")) \
        == ["i2", "parked", "pending", "recent"]


# -- transfers and evaluations -------------------------------------------------------------------
def test_old_transfers_are_read_in_id_order_bounded_and_deleted_by_id(db: StateDatabase) -> None:
    with db.transaction() as connection:
        connection.executemany(
            "INSERT INTO transfers(job_id, rule, target, attempt, status, instances, bytes,"
            " started_at, ended_at) VALUES(1, 'r', ?, 1, ?, ?, ?, ?, ?)",
            [("PACS", "success", 3, 300, OLD, OLD), ("ARCHIVE", "failed", 1, 0, OLD, OLD),
             ("PACS", "success", 9, 900, NEW, NEW), ("PACS", "refused", 2, 20, OLD, OLD)])
    with db.transaction() as connection:
        rows = store.transfers_before(connection, CUTOFF, 10)
        assert rows == [store.PrunedTransfer(1, "PACS", 3, 300, "success"),
                        store.PrunedTransfer(2, "ARCHIVE", 1, 0, "failed"),
                        store.PrunedTransfer(4, "PACS", 2, 20, "refused")]
        assert [row.id for row in store.transfers_before(connection, CUTOFF, 2)] == [1, 2]
        assert store.delete_transfers(connection, [1, 4]) == 2
    assert [row["id"] for row in db.query("SELECT id FROM transfers ORDER BY id")] == [2, 3]


def test_old_evaluations_are_read_with_what_they_decided_and_deleted_by_id(
        db: StateDatabase) -> None:
    with db.transaction() as connection:
        connection.executemany(
            "INSERT INTO evaluations(at, trigger, level, resource_id, rule, matched,"
            " new_instances) VALUES(?, 'instance', 'instance', 'x', 'r', ?, ?)",
            [(OLD, 1, 2), (NEW, 1, 1), (OLD, 0, 0), (OLD, 1, 0)])
    with db.transaction() as connection:
        assert store.evaluations_before(connection, CUTOFF, 10) == [
            store.PrunedEvaluation(1, True, 2), store.PrunedEvaluation(3, False, 0),
            store.PrunedEvaluation(4, True, 0)]
        assert [row.id for row in store.evaluations_before(connection, CUTOFF, 1)] == [1]
        assert store.delete_evaluations(connection, [1, 3]) == 2
    assert [row["id"] for row in db.query("SELECT id FROM evaluations ORDER BY id")] == [2, 4]


# -- rows deleted by age alone -------------------------------------------------------------------
def test_age_deletes_take_only_old_rows_and_at_most_a_batch(db: StateDatabase) -> None:
    with db.transaction() as connection:
        connection.executemany("INSERT INTO audit_events(at, event) VALUES(?, 'x')",
                               [(OLD,)] * 5 + [(NEW,)])
        connection.executemany("INSERT INTO own_output(instance_id, made_by, at) VALUES(?,?,?)",
                               [("o1", "deid", OLD), ("o2", "deid", OLD), ("o3", "deid", NEW)])
    with db.transaction() as connection:
        assert store.delete_audit_events_before(connection, CUTOFF, 3) == 3
        assert store.delete_audit_events_before(connection, CUTOFF, 3) == 2
        assert store.delete_audit_events_before(connection, CUTOFF, 3) == 0
        assert store.delete_own_outputs_before(connection, CUTOFF, 10) == 2
    assert [row["at"] for row in db.query("SELECT at FROM audit_events")] == [NEW]
    assert [row["instance_id"] for row in db.query("SELECT instance_id FROM own_output")] \
        == ["o3"]


def test_a_study_row_goes_once_old_and_without_received_rows(db: StateDatabase) -> None:
    with db.transaction() as connection:
        connection.executemany(
            "INSERT INTO study_progress(study_id, last_received_at) VALUES(?, ?)",
            [("quiet", 100.0), ("still-received", 100.0), ("recent", 5000.0)])
        connection.execute("INSERT INTO received(instance_id, received_at, study_id)"
                           " VALUES('i', ?, 'still-received')", (OLD,))
    with db.transaction() as connection:
        assert store.delete_quiet_studies_before(connection, 1000.0, 10) == 1
    assert sorted(row["study_id"] for row in db.query("SELECT study_id FROM study_progress")) \
        == ["recent", "still-received"]


# -- the intake's received rows ------------------------------------------------------------------
def received(connection: DbConnection, instance_id: str, *, at: str = OLD,
             state: str = "ready", rules_done: int = 1, study: str = "S") -> None:
    connection.execute(
        "INSERT INTO received(instance_id, received_at, state, instance_rules_done, study_id)"
        " VALUES(?, ?, ?, ?, ?)", (instance_id, at, state, rules_done, study))


def remaining(db: StateDatabase) -> list[str]:
    return [row["instance_id"] for row in db.query("SELECT instance_id FROM received ORDER BY seq")]


def test_a_received_row_goes_only_once_every_rule_follower_and_job_is_done_with_it(
        db: StateDatabase) -> None:
    with db.transaction() as connection:
        received(connection, "done")                                  # seq 1: goes
        received(connection, "recent", at=NEW)                        # too young
        received(connection, "undescribed", state="new", rules_done=0)
        received(connection, "rules-to-run", rules_done=0)
        received(connection, "gone", state="gone", rules_done=0)      # seq 5: goes
        received(connection, "quarantined", state="quarantined", rules_done=0)  # seq 6: goes
        received(connection, "stable-to-run", study="T")              # seq 7: study T not past it
        received(connection, "in-a-job")
        received(connection, "in-a-done-job")                        # seq 9: goes
        received(connection, "past-the-cursor")                       # seq 10: followers behind
        connection.execute("INSERT INTO study_progress(study_id, last_received_at,"
                           " stable_done_seq) VALUES('T', 0, 6)")
        add_job(connection, "pending", OLD, ["in-a-job"])
        add_job(connection, "done", OLD, ["in-a-done-job"])
    with db.transaction() as connection:
        assert store.delete_finished_received(connection, CUTOFF, 9, 500,
                                              wait_for_index=False) == 4
    assert remaining(db) == ["recent", "undescribed", "rules-to-run", "stable-to-run",
                             "in-a-job", "past-the-cursor"]
    with db.transaction() as connection:   # no follower has a cursor yet: none holds rows back
        assert store.delete_finished_received(connection, CUTOFF, None, 500,
                                              wait_for_index=False) == 1
    assert "past-the-cursor" not in remaining(db)


def test_received_rows_go_oldest_first_a_batch_at_a_time(db: StateDatabase) -> None:
    with db.transaction() as connection:
        for n in range(5):
            received(connection, f"i{n}")
    with db.transaction() as connection:
        assert store.delete_finished_received(connection, CUTOFF, None, 2,
                                              wait_for_index=False) == 2
    assert remaining(db) == ["i2", "i3", "i4"]


def test_a_gone_instance_row_waits_for_the_index_to_drop_its_entry(
        make_database: MakeDatabase) -> None:
    db = make_database([AUDIT_SCHEMA, JOBS_SCHEMA, OWN_OUTPUT_SCHEMA, INDEX_SCHEMA])
    with db.transaction() as connection:
        received(connection, "gone-indexed", state="gone")
        received(connection, "gone-dropped", state="gone")
        received(connection, "ready-indexed")
        connection.executemany("INSERT INTO index_entries(instance_id, sop_instance_uid)"
                               " VALUES(?, '1.2')", [("gone-indexed",), ("ready-indexed",)])
        assert store.has_table(connection, "index_entries")
    with db.transaction() as connection:
        assert store.delete_finished_received(connection, CUTOFF, None, 500,
                                              wait_for_index=True) == 2
    assert remaining(db) == ["gone-indexed"]
    with db.transaction() as connection:
        assert store.delete_finished_received(connection, CUTOFF, None, 500,
                                              wait_for_index=False) == 1
