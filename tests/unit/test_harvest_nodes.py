"""One harvest shared by several nodes, on both engines (tests/conftest.py make_database: an SQLite
file, then a real PostgreSQL; two `make_database` calls in a test open the same database twice,
one per "node"): the request cap held across the nodes together, claims as leases that only their
node's start takes back and any node takes over once they run out, a rules-file version added
once, and a patient's ZIP built once."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from orthanc_plugin.audit.metrics import Metrics
from orthanc_plugin.audit.recorder import AuditRecorder
from orthanc_plugin.audit.tables import SCHEMA as AUDIT_SCHEMA
from orthanc_plugin.audit.translog import TransactionLog
from orthanc_plugin.capabilities import load_rules_text
from orthanc_plugin.harvest.action import HarvestRunner, HarvestSettings
from orthanc_plugin.harvest.model import ItemState, Transition, parse_definition
from orthanc_plugin.harvest.remote import Interrupted
from orthanc_plugin.harvest.rules_sync import RulesHarvests
from orthanc_plugin.harvest.store import HarvestItem, HarvestStore, LeaseLost
from orthanc_plugin.harvest.tables import SCHEMA
from orthanc_plugin.ports import HostError
from tests.conftest import MakeDatabase
from tests.unit.test_harvest_moves import GATE, FakeOrthanc, run_all

NODE_A = "node-a/100-1:101"
NODE_B = "node-b/200-2:201"


def two_nodes(make_database: MakeDatabase, lease_seconds: float = 60.0) -> list[HarvestStore]:
    """Node A's and node B's stores on one database, each with connections of its own."""
    return [HarvestStore(make_database([AUDIT_SCHEMA, SCHEMA]), claimant, lease_seconds)
            for claimant in (NODE_A, NODE_B)]


def make_runner(store: HarvestStore, folder: Path, host: object = None) -> HarvestRunner:
    recorder = AuditRecorder(store.db, TransactionLog(folder / f"log-{store.claimant[:6]}"),
                             Metrics(lambda name, value: None))
    return HarvestRunner(host, store, recorder,  # type: ignore[arg-type]
                         HarvestSettings(folder / "h", poll_seconds=0.01), lambda message: None,
                         GATE)


def patients(store: HarvestStore, names: list[str], **extra: object) -> dict[str, HarvestItem]:
    harvest_id = store.create(parse_definition(
        {"source": "PACS", "patients": names, "concurrency": len(names), **extra}))
    return {row.patient_id: row for row in store.items(harvest_id)}


def wait_for(condition: Callable[[], bool], what: str) -> None:
    """A state, not a time: fails only if it never comes."""
    deadline = time.monotonic() + 30
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"never: {what}")
        time.sleep(0.01)


def most_in_a_minute(times: list[float]) -> int:
    ordered = sorted(times)
    return max((sum(1 for t in ordered[i:] if t < start + 60) for i, start in enumerate(ordered)),
               default=0)


# -- the request cap, across the nodes together ------------------------------------------------------

def test_two_nodes_booking_at_once_never_put_more_than_the_cap_in_a_minute(
        make_database: MakeDatabase) -> None:
    """Two threads on each node book requests to one source at the same moment. Counted from
    the request rows, no 60 s window holds more than the cap. Each node alone within the cap
    (the token bucket per process this replaced) would put twice the cap in a minute; on
    PostgreSQL, booking without the source's lock books the same slot twice."""
    nodes = two_nodes(make_database)
    cap = 5
    item = patients(nodes[0], ["P1"], max_requests_per_minute=cap)["P1"]
    start = threading.Barrier(4)
    errors: list[BaseException] = []

    def book(store: HarvestStore) -> None:
        try:
            start.wait()
            for _ in range(8):
                store.reserve_request(item, "PACS", "C-FIND", cap, now=1000.0)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=book, args=(nodes[n % 2],)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    times = [float(row["at_epoch"]) for row in nodes[1].requests(item.harvest_id)]
    assert len(times) == 32
    assert most_in_a_minute(times) <= cap


def test_the_lowest_cap_of_the_source_s_running_harvests_holds(make_database: MakeDatabase) -> None:
    first, second = two_nodes(make_database)
    fast = patients(first, ["P1"], max_requests_per_minute=600)["P1"]
    patients(second, ["P2"], max_requests_per_minute=3)
    booked = [first.reserve_request(fast, "PACS", "C-FIND", 600, now=1000.0)[1] for _ in range(3)]
    assert booked == [1000.0, 1030.0, 1060.0]   # the slow harvest's cap, for both


def test_a_booked_request_becomes_its_row_and_one_never_sent_leaves_none(
        make_database: MakeDatabase, tmp_path: Path) -> None:
    store = two_nodes(make_database)[0]
    runner = make_runner(store, tmp_path)
    item = patients(store, ["P1"], max_requests_per_minute=1)["P1"]
    definition = parse_definition({"source": "PACS", "patients": ["P1"],
                                   "max_requests_per_minute": 1})
    assert runner._request(item, definition, "C-FIND", lambda: "answer")[0] == "answer"

    def refused() -> None:
        raise HostError("association refused")

    # The next slot is a minute away: a stop while waiting for it sends nothing, and no row
    # says anything was sent.
    runner.stopping.set()
    with pytest.raises(Interrupted):
        runner._request(item, definition, "C-FIND", refused)
    runner.stopping.clear()
    rows = store.requests(item.harvest_id)
    assert [(row["kind"], row["outcome"]) for row in rows] == [("C-FIND", "ok")]
    # A request that went and failed says so (its own source, its own cap).
    other = parse_definition({"source": "OTHER", "patients": ["P1"]})
    with pytest.raises(HostError):
        runner._request(item, other, "C-FIND", refused)
    rows = store.requests(item.harvest_id)
    assert [(row["source"], row["outcome"], row["detail"]) for row in rows] == [
        ("PACS", "ok", None), ("OTHER", "error", "association refused")]


# -- claims as leases ------------------------------------------------------------------------------

def test_a_start_takes_back_only_its_own_node_s_rows(make_database: MakeDatabase) -> None:
    """Node A starts again (a new generation, same node name): its rows in flight run again, and
    so does a row claimed before claims had holders; node B's row is B's, still running."""
    node_a, node_b = two_nodes(make_database)
    rows = patients(node_a, ["P1", "P2", "P3"])
    legacy = HarvestStore(node_a.db)           # no node name: as before several nodes
    claimed = [store.claim() for store in (node_a, node_b, legacy)]
    assert [item.claimed_by if item else "" for item in claimed] == [NODE_A, NODE_B, None]
    restarted = HarvestStore(node_a.db, "node-a/300-3:301")
    assert restarted.recover() == 2
    states = {row.patient_id: (row.state, row.claimed_by) for row in node_b.items(
        rows["P1"].harvest_id)}
    a_item, b_item, legacy_item = claimed
    assert a_item is not None and b_item is not None and legacy_item is not None
    assert states[b_item.patient_id] == ("querying", NODE_B)
    assert states[a_item.patient_id] == ("pending", None)
    assert states[legacy_item.patient_id] == ("pending", None)


def test_an_expired_lease_is_taken_over_and_its_old_holder_s_writes_are_refused(
        make_database: MakeDatabase) -> None:
    node_a, node_b = two_nodes(make_database)
    patients(node_a, ["P1"])
    item = node_a.claim()
    assert item is not None and item.lease_until is not None
    assert node_b.take_over_expired(now=item.lease_until - 1) == []     # alive: left alone
    assert node_a.take_over_expired(now=item.lease_until + 1) == []     # its own: renewed, not taken
    assert node_b.take_over_expired(now=item.lease_until + 1) == [item.id]
    again = node_b.claim()
    assert again is not None and again.id == item.id and again.claimed_by == NODE_B
    assert again.fence > item.fence
    # Node A comes back from its pause: whatever it writes for the row is refused.
    with pytest.raises(LeaseLost):
        node_a.update(item.id, orthanc_job="a's job")
    with pytest.raises(LeaseLost):
        node_a.settle(item.id, Transition(ItemState.DONE))
    row = node_b.item(item.id)
    assert (row.state, row.claimed_by, row.orthanc_job) == ("querying", NODE_B, None)
    node_b.settle(item.id, Transition(ItemState.DONE))
    assert node_b.item(item.id).state == "done"


def test_a_renewed_lease_is_not_taken_over(make_database: MakeDatabase) -> None:
    node_a, node_b = two_nodes(make_database)
    rows = patients(node_a, ["P1"])
    item = node_a.claim()
    assert item is not None and item.lease_until is not None
    token = node_a.claim_zip(rows["P1"].id, 1)
    assert token is not None
    node_a.lease_seconds = 600.0    # the renewal surely ends later than the claim
    assert node_a.renew_leases() == []
    renewed = node_a.item(item.id)
    assert renewed.lease_until is not None and renewed.lease_until > item.lease_until
    assert renewed.zip_lease_until is not None and renewed.zip_lease_until > item.lease_until
    assert node_b.take_over_expired(now=item.lease_until + 1) == []
    assert node_b.claim_zip(rows["P1"].id, 1, now=item.lease_until + 1) is None
    # Taken over once its renewal ran out too: node A learns it at its next renewal.
    assert node_b.take_over_expired(now=renewed.lease_until + 1) == [item.id]
    assert node_a.renew_leases() == [item.id]


def test_the_running_node_renews_its_leases_and_takes_over_a_dead_node_s(
        make_database: MakeDatabase, tmp_path: Path) -> None:
    node_a, node_b = two_nodes(make_database, lease_seconds=0.6)
    patients(node_a, ["P1", "P2"])
    mine = node_a.claim()
    dead = node_b.claim()            # node B claims, then never renews (it died)
    assert mine is not None and dead is not None and mine.lease_until is not None
    runner = make_runner(node_a, tmp_path)
    loop = threading.Thread(target=runner._lease_loop, daemon=True)
    loop.start()
    try:
        wait_for(lambda: node_b.item(dead.id).state == "pending", "node B's row taken over")
        wait_for(lambda: (node_b.item(mine.id).lease_until or 0) > mine.lease_until + 0.6,
                 "node A's lease renewed")
        assert node_b.item(mine.id).state == "querying"
    finally:
        runner.stopping.set()
        loop.join(10)


def test_a_clean_stop_gives_its_rows_back_at_once(make_database: MakeDatabase,
                                                  tmp_path: Path) -> None:
    node_a, node_b = two_nodes(make_database)
    patients(node_a, ["P1"])
    item = node_a.claim()
    assert item is not None
    make_runner(node_a, tmp_path).stop()
    again = node_b.claim()           # no wait for the lease's end
    assert again is not None and again.id == item.id
    with pytest.raises(LeaseLost):   # a step of A's still running after the stop
        node_a.settle(item.id, Transition(ItemState.DONE))


# -- the rules' harvests -----------------------------------------------------------------------------

def test_a_version_another_node_added_since_this_one_looked_is_not_added_again(
        make_database: MakeDatabase, tmp_path: Path) -> None:
    """Node B reads the version in force (none), then node A's sync of the same file adds it,
    then node B adds its own: it finds A's version and adds nothing. Reading only before
    (as before) made a second version and cancelled A's harvest (on PostgreSQL two syncs
    at the same moment failed on the versions' key)."""
    node_a, node_b = (make_runner(store, tmp_path) for store in two_nodes(make_database))
    ruleset = load_rules_text(
        "rules: []\nharvests:\n  - name: nightly\n    source: PACS\n    patients: [P1]\n", None)
    outcomes: dict[str, str] = {}

    def a_syncs_first() -> tuple[str, ...]:
        outcomes.update(RulesHarvests(node_a, lambda: ("PACS",), fail).sync(ruleset))
        return ("PACS",)

    def fail(message: str) -> None:
        raise AssertionError(message)

    outcomes_b = RulesHarvests(node_b, a_syncs_first, fail).sync(ruleset)
    assert (outcomes, outcomes_b) == ({"nightly": "created"}, {"nightly": "unchanged"})
    assert [(h.name, h.state) for h in node_b.store.harvests()] == [("nightly", "running")]
    version = node_b.store.rule_version("nightly")
    assert version is not None and version.version == 1


# -- a patient's ZIP, built once ---------------------------------------------------------------------

def settled_short_of_the_zip(make_database: MakeDatabase, tmp_path: Path,
                             lease_seconds: float = 60.0
                             ) -> tuple[HarvestRunner, HarvestRunner, HarvestItem, Path]:
    """Two nodes' runners; node A has walked and moved patient P1's 3 series and stopped short of
    its ZIP. Returns the runners, the patient's row and where its ZIP goes."""
    fake = FakeOrthanc()
    node_a, node_b = (make_runner(store, tmp_path, fake)
                      for store in two_nodes(make_database, lease_seconds))
    harvest_id = node_a.create(parse_definition({
        "source": "PACS", "patients": ["P1"], "max_requests_per_minute": 100_000}))
    node_a._write_zip_if_settled = lambda harvest, patient: None  # type: ignore[method-assign]
    run_all(node_a)
    patient = next(row for row in node_a.store.items(harvest_id) if row.level == "patient")
    return node_a, node_b, patient, tmp_path / "h" / f"harvest-{harvest_id}" / "P1__seriesCount3.zip"


def test_a_patient_s_zip_is_built_by_one_node(make_database: MakeDatabase, tmp_path: Path) -> None:
    """Both nodes find the patient settled with its ZIP not written: the one whose claim won
    builds it, the other leaves it (building it too, it would race on the same file and on the
    series' ZIPs the first one deletes). A claim whose node died runs out with its lease."""
    node_a, node_b, patient, zip_file = settled_short_of_the_zip(make_database, tmp_path)
    harvest_id = patient.harvest_id
    token = node_a.store.claim_zip(patient.id, 3)     # A is building it
    assert token is not None
    node_b._write_zip_if_settled(harvest_id, patient.id)
    assert not zip_file.exists() and node_b.store.item(patient.id).zip_name is None
    # A's claim ran out (A died while building): B builds it.
    with node_a.store.db.transaction() as connection:
        connection.execute("UPDATE harvest_items SET zip_lease_until=? WHERE id=?",
                           (time.time() - 1, patient.id))
    node_b._write_zip_if_settled(harvest_id, patient.id)
    assert zip_file.exists()
    row = node_b.store.item(patient.id)
    assert (row.zip_name, row.zip_series_count, row.zip_claimed_by) == (zip_file.name, 3, None)
    assert node_a.store.finish_zip(patient.id, token, zip_file.name, 3) is False   # A's too late
    zips = node_a.store.db.query(
        "SELECT status FROM audit_events WHERE event='harvest-zip' ORDER BY id")
    assert [event["status"] for event in zips] == ["ok"]


def test_a_zip_whose_builder_died_is_built_by_a_node_still_running(
        make_database: MakeDatabase, tmp_path: Path) -> None:
    """Node A settles the patient's last series and starts its ZIP, then dies: its claim runs
    out and no step of the patient is left to start the ZIP again. Node B, running, builds it
    and clears A's half-written file (before, the harvest ended 'done' without the ZIP)."""
    node_a, node_b, patient, zip_file = settled_short_of_the_zip(make_database, tmp_path, 0.6)
    folder = zip_file.parent
    assert node_a.store.claim_zip(patient.id, 3) is not None   # A builds it, and dies
    folder.mkdir(parents=True, exist_ok=True)
    leftover = folder / f".{zip_file.name}.4242.17.partial"
    leftover.write_bytes(b"half a zip")
    node_b.start()
    try:
        wait_for(lambda: node_b.store.item(patient.id).zip_name == zip_file.name,
                 "node B built the dead node's ZIP")
    finally:
        node_b.stop()
    assert zip_file.exists() and not leftover.exists()
    row = node_b.store.item(patient.id)
    assert (row.zip_series_count, row.zip_claimed_by) == (3, None)
