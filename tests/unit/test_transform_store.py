"""The copy names' store against the real copy_names table: what a copy's names were, for the
plan page, and the names sent unchanged, for the synonyms page."""

from __future__ import annotations

import pytest

from orthanc_plugin.db_engine import StateDatabase
from orthanc_plugin.transform.store import (
    CopyName,
    names_of,
    note_copy_names,
    unmapped_count,
    unmapped_names,
)
from orthanc_plugin.transform.tables import SCHEMA
from tests.conftest import MakeDatabase


@pytest.fixture
def db(make_database: MakeDatabase) -> StateDatabase:
    """On each engine (conftest.make_database: SQLite, then PostgreSQL)."""
    return make_database([SCHEMA])


def note(db: StateDatabase, at: str, target: str, rule: str, *names: CopyName) -> None:
    with db.transaction() as connection:
        note_copy_names(connection, at, target, rule, names)


def renamed(instance_id: str, before: str, after: str | None, status: str = "renamed",
            attribute: str = "ROIName") -> CopyName:
    return CopyName(instance_id, attribute, before, after, status)


def test_a_resent_copy_keeps_its_first_record(db: StateDatabase) -> None:
    note(db, "t1", "TPS", "r", renamed("i1", "Lt Parotid", "Parotid_L"))
    note(db, "t2", "TPS", "r", renamed("i1", "Lt Parotid", "other"),
         renamed("i1", "PTV", None, "no match"))
    rows = [tuple(row) for row in db.query(
        "SELECT at, instance_id, target, rule, attribute, before, after, status FROM copy_names"
        " ORDER BY id")]
    assert rows == [("t1", "i1", "TPS", "r", "ROIName", "Lt Parotid", "Parotid_L", "renamed"),
                    ("t2", "i1", "TPS", "r", "ROIName", "PTV", None, "no match")]


def test_names_of_instances_latest_per_name_in_order(db: StateDatabase) -> None:
    note(db, "t1", "TPS", "r", renamed("i1", "PTV", "PTV"), renamed("i1", "Body", "BODY"))
    note(db, "t3", "TPS", "r", renamed("i2", "PTV", "PTV"))     # a second instance, later
    note(db, "t2", "ARCHIVE", "r", renamed("i1", "ADP1", "ADP1", attribute="RTPlanLabel"))
    note(db, "t9", "TPS", "r", renamed("elsewhere", "Rectum", "RECTUM"))
    # more instance ids than one statement takes: the rows of every chunk come back
    rows = names_of(db, [f"x{n}" for n in range(600)] + ["i1", "i2"])
    assert rows == [
        {"target": "ARCHIVE", "rule": "r", "attribute": "RTPlanLabel", "before": "ADP1",
         "after": "ADP1", "status": "renamed", "at": "t2"},
        {"target": "TPS", "rule": "r", "attribute": "ROIName", "before": "Body",
         "after": "BODY", "status": "renamed", "at": "t1"},
        {"target": "TPS", "rule": "r", "attribute": "ROIName", "before": "PTV",
         "after": "PTV", "status": "renamed", "at": "t3"},
    ]
    assert names_of(db, []) == []


def test_unmapped_names_most_seen_first_with_their_counts(db: StateDatabase) -> None:
    note(db, "t1", "TPS", "r1", renamed("i1", "zPTV", None, "helper"),
         renamed("i1", "Lens", None, "no match"), renamed("i1", "Body", "BODY"))
    note(db, "t2", "TPS", "r2", renamed("i2", "Lens", None, "no match"))
    note(db, "t3", "ARCHIVE", "r1", renamed("i2", "Lens", None, "too long"),
         renamed("i3", "Arm", None, "no match"))
    assert unmapped_count(db) == 3
    assert unmapped_names(db, 50, 0) == [
        {"name": "Lens", "status": "too long", "copies": 3, "rules": 2, "last_seen": "t3"},
        {"name": "Arm", "status": "no match", "copies": 1, "rules": 1, "last_seen": "t3"},
        {"name": "zPTV", "status": "helper", "copies": 1, "rules": 1, "last_seen": "t1"},
    ]
    assert [row["name"] for row in unmapped_names(db, 1, 1)] == ["Arm"]
    assert unmapped_names(db, 10, 3) == []


def test_a_names_row_is_its_latest_record_whole(db: StateDatabase) -> None:
    """The latest copy's name after and status, not another copy's (SQLite's bare columns beside
    MAX(at) did this; PostgreSQL has none)."""
    note(db, "t5", "TPS", "r", renamed("i3", "PTV", None, "conflict"))
    note(db, "t7", "TPS", "r", renamed("i2", "PTV", "PTV_1"))
    note(db, "t6", "TPS", "r", renamed("i1", "PTV", "PTV_2"))
    assert names_of(db, ["i1", "i2", "i3"]) == [
        {"target": "TPS", "rule": "r", "attribute": "ROIName", "before": "PTV",
         "after": "PTV_1", "status": "renamed", "at": "t7"}]
    assert names_of(db, ["i1", "i3"])[0]["after"] == "PTV_2"
