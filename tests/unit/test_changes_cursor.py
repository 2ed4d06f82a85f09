"""The intake's cursor in Orthanc's changes log moves only through an unbroken run of change
numbers (jobs/changes_cursor.py): a change that becomes visible late (several Orthanc nodes on one
PostgreSQL index) is waited for and read, never skipped."""

from __future__ import annotations

from pathlib import Path

from orthanc_plugin.jobs.changes_cursor import REREAD_SECONDS, ChangesCursor
from orthanc_plugin.jobs.intake import CURSOR_KEY
from tests.support.fake_orthanc import FakeOrthanc
from tests.support.gateway_site import build_site
from tests.support.rtset import make_rt_set


def test_the_cursor_moves_through_an_unbroken_run_only() -> None:
    cursor = ChangesCursor(gap_wait_seconds=10)
    assert cursor.advance(10, [11, 12, 13], now=0) == 13
    assert cursor.advance(10, [13, 11, 12], now=0) == 13         # any order
    assert cursor.advance(10, [], now=0) == 10
    # 12 is not visible yet: the cursor waits at 11, whatever follows.
    assert cursor.advance(10, [11, 13, 14], now=100) == 11
    assert cursor.waiting_for(11) == 12
    assert cursor.advance(11, [13, 14], now=105) == 11
    # It shows up: read, and the cursor runs on.
    assert cursor.advance(11, [12, 13, 14], now=106) == 14
    assert cursor.waiting_for(14) is None


def test_a_number_missing_for_longer_than_any_transaction_is_passed_after_a_last_read() -> None:
    cursor = ChangesCursor(gap_wait_seconds=10)
    assert cursor.advance(20, [21, 23], now=0) == 21            # 22 missing since t=0
    assert cursor.advance(21, [23], now=9.9) == 21               # still within the wait
    # Ten seconds on, this read (after the wait) still lacks 22: no transaction is that long,
    # it was rolled back (or its resource deleted) and it will never come.
    assert cursor.advance(21, [23, 24], now=10) == 24
    # Two gaps: the older one passed, the newer one waited for.
    assert cursor.advance(30, [32], now=50) == 30
    assert cursor.advance(30, [32, 34], now=60) == 32
    assert cursor.waiting_for(32) == 33


def test_on_orthanc_s_own_index_a_gap_is_passed_at_once() -> None:
    """SQLite numbers in commit order: a missing number is a deleted resource's change."""
    cursor = ChangesCursor()
    assert cursor.take(10, 10, [11, 13], now=0) == (13, {11, 13})
    assert cursor.waiting_for(13) is None and cursor.since(13, now=0) == 13


def test_while_a_gap_is_open_reads_take_each_change_once_and_reread_from_the_cursor() -> None:
    cursor = ChangesCursor(gap_wait_seconds=10)
    assert cursor.since(10, now=0) == 10
    assert cursor.take(10, 10, [11, 13, 14], now=0) == (11, {11, 13, 14})
    # Soon after: only what is newer than what was read.
    assert cursor.since(11, now=0.5) == 14
    assert cursor.take(11, 14, [15], now=0.5) == (11, {15})
    # A second on: again from the cursor; 12 shows, and nothing else is taken twice.
    assert cursor.since(11, now=1.0) == 11
    assert cursor.take(11, 11, [12, 13, 14, 15], now=1.0) == (15, {12})
    assert cursor.since(15, now=1.1) == 15


def test_an_instance_whose_change_shows_late_is_still_taken_in(tmp_path: Path) -> None:
    """On the fake Orthanc with a PostgreSQL index: three CT slices arrive; the first one's
    change is not visible yet when the intake reads. The other two are taken in, the cursor
    stays before the first, and once its change shows, it is taken in too."""
    orthanc = FakeOrthanc({"ARCHIVE": "ARCHIVE_AE"})
    orthanc.database_plugin = "/usr/share/orthanc/plugins/libOrthancPostgreSQLIndex.so"
    site = build_site(tmp_path, "rules: []\n", orthanc)
    start = int(site.gateway.db.get_meta(CURSOR_KEY) or 0)
    ids = [orthanc.receive(slice_, calling_aet="CT") for slice_ in make_rt_set(n_slices=3).ct]
    late = next(change["Seq"] for change in orthanc.changes
                if change["ID"] == ids[0] and change["ChangeType"] == "NewInstance")
    orthanc.invisible_changes.add(late)
    site.take_in()

    def taken_in() -> set[str]:
        return {row["instance_id"] for row in site.rows("SELECT instance_id FROM received")}

    assert taken_in() == set(ids[1:])
    assert int(site.gateway.db.get_meta(CURSOR_KEY) or 0) == late - 1 >= start
    # The change shows; the intake reads from its cursor again a second on (REREAD_SECONDS).
    orthanc.invisible_changes.clear()
    site.clock.advance(REREAD_SECONDS)
    site.take_in()
    assert taken_in() == set(ids)
    assert int(site.gateway.db.get_meta(CURSOR_KEY) or 0) == orthanc.changes[-1]["Seq"]
