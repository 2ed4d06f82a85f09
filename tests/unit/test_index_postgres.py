"""The SQL index on PostgreSQL (several nodes, one index): the user's SQL runs as the reader role
with SQLite's limits (index/postgres_query.py), answers as SQLite does for the same data, and
two nodes writing one index leave one row per instance (index/store.py's lock per patient)."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from orthanc_plugin.audit.tables import SCHEMA as AUDIT_SCHEMA
from orthanc_plugin.db_postgres import PostgresDatabase
from orthanc_plugin.index.model import DEFAULT_LAYOUT
from orthanc_plugin.index.postgres_query import FETCH_ROWS
from orthanc_plugin.index.postgres_store import PostgresIndexSettings, open_postgres_index
from orthanc_plugin.index.query import QueryError
from orthanc_plugin.index.store import IndexStore
from orthanc_plugin.jobs.tables import SCHEMA as JOBS_SCHEMA
from tests.support.index_data import fill
from tests.support.postgres import SUPERUSER
from tests.support.rtset import RtSet, make_rt_set


@pytest.fixture(scope="module")
def rtset() -> RtSet:
    return make_rt_set("PGIDX-1", plan_label="ADP1", n_slices=4, rows=16, columns=16)


@pytest.fixture
def gateway(postgres_conninfo: str) -> Iterator[PostgresDatabase]:
    """The gateway's own state on the server (the queue's `jobs` among it), beside the index."""
    db = PostgresDatabase(postgres_conninfo, [AUDIT_SCHEMA, JOBS_SCHEMA])
    yield db
    db.close()


def open_index(gateway: PostgresDatabase,
               settings: PostgresIndexSettings | None = None) -> IndexStore:
    return open_postgres_index(gateway, gateway.conninfo, DEFAULT_LAYOUT,
                               settings or PostgresIndexSettings())


@pytest.fixture
def store(gateway: PostgresDatabase, rtset: RtSet) -> IndexStore:
    return fill(open_index(gateway), rtset)


def owner(gateway: PostgresDatabase, sql: str) -> list[Any]:
    """What the gateway's own user (the superuser here) sees, past the reader's limits."""
    with psycopg.connect(gateway.conninfo, autocommit=True) as connection:
        return connection.execute(sql).fetchall()


# -- the same answers as SQLite --------------------------------------------------------------------
SAME_QUERIES = [
    "select * from DICOMpatients",
    "select * from dicomstudies",
    "select * from DICOMseries order by SeriesInst",
    "select * from DICOMimages order by SOPInstanc",
    "select seriesinst, Modality from dicomseries where modality = 'RTPLAN'",
    "select * from RTplans",
    "select * from RTbeams order by BeamNumber",
    "select * from RTrois order by ROINumber",
    "select * from RTstructs",
    "select * from RTdoses",
    "select RefKind, RefSOPInst from RTreferences order by RefKind, RefSOPInst",
    "select ImagePat, ObjectFile from DICOMimages where ImagePat = 'PGIDX-1' order by ObjectFile",
    # PostgreSQL's numeric sum and boolean come back as SQLite's integers.
    "select count(*) as n, sum(BeamNumber) as total, max(MU) as top_mu from RTbeams",
    "select SeriesInst, Modality = 'CT' as is_ct from DICOMseries order by SeriesInst",
]
# Stamped with the second each was written: not the same in two indexes written one after another.
STAMPS = {"AccessTime", "qTimeStamp"}


@pytest.mark.parametrize("sql", SAME_QUERIES)
def test_the_same_columns_and_rows_as_sqlite(store: IndexStore, rtset: RtSet, tmp_path: Path,
                                             sql: str) -> None:
    sqlite = fill(IndexStore(tmp_path / "conquest.sqlite", DEFAULT_LAYOUT), rtset)
    on_sqlite, on_postgres = sqlite.reader.run_query(sql), store.reader.run_query(sql)
    assert on_postgres.columns == on_sqlite.columns
    kept = [n for n, name in enumerate(on_sqlite.columns) if name not in STAMPS]

    def rows(result: Any) -> list[tuple[Any, ...]]:
        # With each value's type: Decimal('10') == 10, but the answer's JSON cannot hold it.
        return [tuple((type(row[n]), row[n]) for n in kept) for row in result.rows]

    assert rows(on_postgres) == rows(on_sqlite) and on_sqlite.rows


def test_the_same_tables_as_sqlite(store: IndexStore, tmp_path: Path) -> None:
    sqlite = IndexStore(tmp_path / "conquest.sqlite", DEFAULT_LAYOUT)
    assert store.reader.table_names() == sqlite.reader.table_names()
    assert store.dump_table("DICOMseries", 100, 1_000_000).columns == \
        sqlite.dump_table("DICOMseries", 100, 1_000_000).columns


# -- read-only: each of the server's guards -----------------------------------------------------------
@pytest.mark.parametrize("sql", [
    "INSERT INTO DICOMimages(sopinstanc) VALUES('x')",
    "UPDATE DICOMseries SET modality = 'X'",
    "DELETE FROM DICOMimages",
    "DROP TABLE DICOMimages",
    "CREATE TABLE evil(x int)",
    "WITH gone AS (DELETE FROM DICOMimages RETURNING *) SELECT * FROM gone",
    "TRUNCATE DICOMimages",
])
def test_writes_are_refused(store: IndexStore, gateway: PostgresDatabase, sql: str) -> None:
    snapshot = ("SELECT count(*), (SELECT string_agg(modality, ',' ORDER BY modality) "
                "FROM conquest.dicomseries) FROM conquest.dicomimages")
    before = owner(gateway, snapshot)
    with pytest.raises(QueryError):
        store.reader.run_query(sql)
    assert owner(gateway, snapshot) == before
    assert owner(gateway, "SELECT to_regclass('conquest.evil'), to_regclass('public.evil')") == \
        [(None, None)]


@pytest.mark.parametrize("sql", ["SET statement_timeout = 0", "SELECT 1; SELECT 2",
                                 "SET default_transaction_read_only = off"])
def test_only_one_query_runs(store: IndexStore, sql: str) -> None:
    """A cursor's query: no SET, no second statement (the server refuses them)."""
    with pytest.raises(QueryError, match=r"only one query|multiple commands"):
        store.reader.run_query(sql)


@pytest.mark.parametrize("sql", [
    f"SET ROLE {SUPERUSER}",
    "RESET ROLE",
    f"SET SESSION AUTHORIZATION {SUPERUSER}",
    f"SELECT set_config('role', '{SUPERUSER}', false)",
    f"SELECT set_config('session_authorization', '{SUPERUSER}', false)",
])
def test_the_owner_role_cannot_be_taken_back(store: IndexStore, sql: str) -> None:
    with pytest.raises(QueryError):
        store.reader.run_query(sql)
    who = store.reader.run_query("SELECT current_user, session_user")
    assert who.rows == [("rtgw_index_reader", "rtgw_index_reader")]


@pytest.mark.parametrize("sql", [
    "SELECT * FROM public.jobs",
    "SELECT * FROM jobs",
    "SELECT * FROM public.meta",
    "SELECT query_to_xml('select * from public.jobs', true, true, '')",
    "SELECT * FROM pg_authid",
])
def test_tables_outside_the_index_are_refused(store: IndexStore, gateway: PostgresDatabase,
                                              sql: str) -> None:
    assert owner(gateway, "SELECT count(*) FROM public.jobs") == [(0,)]    # there, to the owner
    with pytest.raises(QueryError, match=r"permission denied|does not exist"):
        store.reader.run_query(sql)


def test_a_write_a_read_only_transaction_lets_through_is_rolled_back(
        store: IndexStore, gateway: PostgresDatabase) -> None:
    # PostgreSQL 15 (bookworm) lets a large object be made in a READ ONLY transaction: the
    # rollback takes it away. 17 (trixie) refuses it outright. Either way nothing is kept.
    server_version = int(owner(gateway, "SHOW server_version_num")[0][0])
    if server_version < 160000:
        result = store.reader.run_query("SELECT lo_from_bytea(0, 'x')")
        assert len(result.rows) == 1
    else:
        with pytest.raises(QueryError, match="read-only transaction"):
            store.reader.run_query("SELECT lo_from_bytea(0, 'x')")
    assert owner(gateway, "SELECT count(*) FROM pg_largeobject_metadata") == [(0,)]


def test_the_transaction_is_read_only(store: IndexStore) -> None:
    result = store.reader.run_query("SELECT current_setting('transaction_read_only')")
    assert result.rows == [("on",)]


# -- the limits --------------------------------------------------------------------------------------
def test_the_row_cap_and_the_byte_cap(store: IndexStore) -> None:
    rows = store.reader.run_query("SELECT n FROM generate_series(1, 100000) n", max_rows=10)
    assert rows.truncated and rows.truncated_reason == "more than 10 rows"
    assert rows.rows == [(n,) for n in range(1, 11)]
    big = store.reader.run_query("SELECT repeat('x', 1000) FROM generate_series(1, 5000)",
                                 max_result_bytes=100_000)
    assert big.truncated and big.truncated_reason == "more than 100000 bytes"
    assert 90 <= len(big.rows) <= 100


def test_a_query_past_the_time_limit_is_cut(store: IndexStore) -> None:
    with pytest.raises(QueryError, match=r"interrupted after 0\.5 s"):
        store.reader.run_query("SELECT pg_sleep(5)", time_limit_seconds=0.5)


def test_the_server_holds_the_time_limit_too(store: IndexStore) -> None:
    """If the worker dies mid-query, the server still stops it."""
    result = store.reader.run_query("SELECT current_setting('statement_timeout')",
                                    time_limit_seconds=0.5)
    assert result.rows == [("500ms",)]


def test_a_query_that_switches_the_server_timeout_off_is_still_cut(store: IndexStore) -> None:
    # The first fetch's rows turn the server's timeout off for the fetches after it; the
    # client's deadline still holds.
    sql = (f"SELECT CASE WHEN n <= {FETCH_ROWS} "
           "THEN set_config('statement_timeout', '0', false) ELSE pg_sleep(5)::text END "
           f"FROM generate_series(1, {FETCH_ROWS + 1}) n")
    with pytest.raises(QueryError, match=r"interrupted after 0\.5 s"):
        store.reader.run_query(sql, time_limit_seconds=0.5)


# -- the reader role --------------------------------------------------------------------------------
def test_a_reader_role_that_could_read_more_is_refused(gateway: PostgresDatabase) -> None:
    store = open_index(gateway, PostgresIndexSettings(reader_role=SUPERUSER))
    with pytest.raises(QueryError, match="superuser or a member"):
        store.reader.run_query("SELECT count(*) FROM public.jobs")


def test_a_missing_role_the_gateway_may_not_create_is_named_and_granted_once_created(
        postgres_conninfo: str) -> None:
    role, owner_role = "rtgw_reader_by_dba", "rtgw_plain_owner"
    with psycopg.connect(postgres_conninfo, autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {owner_role} LOGIN NOCREATEROLE")
        admin.execute(f"GRANT CREATE ON DATABASE {postgres_conninfo.rsplit('=', 1)[1]} "
                      f"TO {owner_role}")
        admin.execute(f"ALTER SCHEMA public OWNER TO {owner_role}")
    conninfo = postgres_conninfo.replace(f"user={SUPERUSER}", f"user={owner_role}")
    gateway = PostgresDatabase(conninfo, [])
    try:
        store = open_postgres_index(gateway, conninfo, DEFAULT_LAYOUT,
                                    PostgresIndexSettings(reader_role=role))
        with pytest.raises(QueryError, match=f"CREATE ROLE {role} LOGIN"):
            store.reader.run_query("SELECT count(*) FROM DICOMimages")
        with psycopg.connect(postgres_conninfo, autocommit=True) as admin:
            admin.execute(f"CREATE ROLE {role} LOGIN")      # what the DBA runs
        assert store.reader.run_query("SELECT count(*) FROM DICOMimages").rows == [(0,)]
    finally:
        gateway.close()


# -- two nodes writing one index ----------------------------------------------------------------------
def counts(gateway: PostgresDatabase) -> list[Any]:
    return owner(gateway, "SELECT (SELECT count(*) FROM conquest.dicompatients), "
                          "(SELECT count(*) FROM conquest.dicomstudies), "
                          "(SELECT count(*) FROM conquest.dicomseries), "
                          "(SELECT count(*) FROM conquest.dicomimages), "
                          "(SELECT count(*) FROM conquest.rtplans), "
                          "(SELECT count(*) FROM conquest.rtbeams), "
                          "(SELECT count(*) FROM conquest.rtreferences)")


def test_two_nodes_indexing_the_same_instances_leave_one_row_each(
        gateway: PostgresDatabase, rtset: RtSet) -> None:
    first = fill(open_index(gateway), rtset)
    once = counts(gateway)
    other_node = PostgresDatabase(gateway.conninfo, [])
    try:
        fill(open_postgres_index(other_node, gateway.conninfo, DEFAULT_LAYOUT,
                                 PostgresIndexSettings()), rtset)
    finally:
        other_node.close()
    assert counts(gateway) == once
    assert first.reader.run_query("SELECT StudyModal FROM DICOMstudies").rows == [
        ("CT\\RTDOSE\\RTPLAN\\RTSTRUCT",)]


def test_a_removal_waits_for_another_node_adding_to_the_same_series(
        gateway: PostgresDatabase) -> None:
    """Node A adds a slice to a series while node B removes the series' only other slice: B
    must see A's slice (and keep the series, study and patient rows), not delete them under it."""
    ct = make_rt_set("PGIDX-2", n_slices=2, rows=8, columns=8, with_dose=False).ct
    node_a = open_index(gateway)
    node_a.put(ct[0], "first", None)
    other_node = PostgresDatabase(gateway.conninfo, [])
    node_b = open_postgres_index(other_node, gateway.conninfo, DEFAULT_LAYOUT,
                                 PostgresIndexSettings())
    refresh = node_a._refresh_study_modalities
    a_wrote = threading.Event()

    def refresh_then_wait_for_a_waiter(connection: Any, ds: Any) -> None:
        refresh(connection, ds)
        a_wrote.set()
        # A's transaction stays open until B waits on a lock: A's patient lock, or without it a
        # row A wrote; B's statements then come where the race is.
        deadline = time.monotonic() + 20
        while not owner(gateway, "SELECT 1 FROM pg_locks WHERE NOT granted") \
                and time.monotonic() < deadline:
            time.sleep(0.02)

    node_a._refresh_study_modalities = refresh_then_wait_for_a_waiter  # type: ignore[method-assign]
    adding = threading.Thread(target=node_a.put, args=(ct[1], "second", None))
    removal = threading.Thread(target=node_b.remove, args=(str(ct[0].SOPInstanceUID),))
    try:
        adding.start()
        assert a_wrote.wait(20)
        removal.start()
        adding.join(30)
        removal.join(30)
    finally:
        other_node.close()
    assert owner(gateway, "SELECT objectfile FROM conquest.dicomimages") == [("second",)]
    assert counts(gateway)[0][:4] == (1, 1, 1, 1)


# -- which engine --------------------------------------------------------------------------------
def test_the_index_goes_where_the_gateway_state_goes(gateway: PostgresDatabase,
                                                     tmp_path: Path) -> None:
    from orthanc_plugin.config import ConfigError, GatewayConfig
    from orthanc_plugin.index.index_database import open_index_store

    one_node = GatewayConfig(rules_file=tmp_path / "r", database=tmp_path / "state.sqlite",
                             transaction_log_folder=tmp_path, quarantine_folder=tmp_path)
    assert open_index_store(one_node, gateway, {}, DEFAULT_LAYOUT).reader.engine == "SQLite"
    assert (tmp_path / "conquest.sqlite").exists()
    nodes = dataclasses.replace(one_node, postgresql=gateway.conninfo)
    shared = open_index_store(nodes, gateway, {"Schema": "site_index"}, DEFAULT_LAYOUT)
    assert shared.reader.engine == "PostgreSQL" and shared.table("DICOMimages") == \
        "site_index.DICOMimages"
    assert shared.reader.run_query("SELECT count(*) FROM DICOMimages").rows == [(0,)]
    with pytest.raises(ConfigError, match="ReaderRole"):
        open_index_store(nodes, gateway, {"ReaderRole": "Robert'); DROP"}, DEFAULT_LAYOUT)
