"""The import folder's records on both engines (tests/conftest.py make_database: SQLite, then a
real PostgreSQL)."""

from __future__ import annotations

import pytest

from orthanc_plugin.importer.tables import SCHEMA, ImportTables
from tests.conftest import MakeDatabase


@pytest.fixture
def tables(make_database: MakeDatabase) -> ImportTables:
    return ImportTables(make_database([SCHEMA]))


def test_progress_counts_each_file_version_once_and_leaves_zip_members_out(
        tables: ImportTables) -> None:
    assert tables.progress()["files_seen"] == 0
    tables.record("a/ct.dcm", 10, 111, "s1", "stored", "i1")
    tables.record("a/ct.dcm", 10, 111, "s1", "duplicate")           # the same file again
    tables.record("a/ct.dcm", 12, 222, "s2", "stored", "i2")        # rewritten: another version
    tables.record("b.zip", 99, 333, "z", "taken", detail="2 members")
    tables.record("b.zip!ct1.dcm", 5, None, "m1", "stored", "i3")   # a member: no file of its own
    tables.record("b.zip!ct2.dcm", 5, None, "m2", "quarantined", detail="not DICOM")
    # A missing size and time still count as one version (PostgreSQL takes no '' for a number:
    # the store casts them to text).
    tables.record("c.dcm", None, None, None, "quarantined", detail="gone")  # type: ignore[arg-type]
    tables.record("c.dcm", None, None, None, "quarantined", detail="gone")  # type: ignore[arg-type]
    progress = tables.progress(recent=3)
    assert progress["files_seen"] == 4
    assert (progress["stored"], progress["duplicate"], progress["quarantined"]) == (3, 1, 3)
    assert [row["path"] for row in progress["recent"]] == ["c.dcm", "c.dcm", "b.zip!ct2.dcm"]
    assert set(progress["recent"][0]) == {"path", "state", "instance_id", "detail", "at"}


def test_a_file_is_taken_once_per_size_and_time_and_a_digest_once_stored(
        tables: ImportTables) -> None:
    tables.record("x.dcm", 10, 111, "s1", "quarantined", detail="bad")
    assert tables.already_taken("x.dcm", 10, 111)
    assert not tables.already_taken("x.dcm", 10, 112)
    assert not tables.already_taken("X.dcm", 10, 111)      # paths are case-sensitive
    assert not tables.stored_before("s1")                  # quarantined is not stored
    tables.record("y.zip", 20, 222, "s2", "taken")
    tables.record("z.dcm", 30, 333, "s3", "stored", "i3")
    assert tables.stored_before("s2") and tables.stored_before("s3")


def test_an_instance_expected_twice_is_one_row(tables: ImportTables) -> None:
    assert not tables.is_imported("i1")
    tables.expect_instance("i1")
    tables.expect_instance("i1")     # the POST answered after the intake described it: no error
    assert tables.is_imported("i1")
    assert not tables.is_imported("i2")
    assert len(tables.db.query("SELECT instance_id FROM import_instances")) == 1
