"""Reads and writes the harvest tables; every step's outcome is committed before the next starts.

Speaks SQL both engines accept (db_engine.py). Several nodes may share one harvest (PostgreSQL):
- a claim takes its row under the harvest's advisory lock, FOR UPDATE SKIP LOCKED, and by
  compare-and-set (`claim`), as a lease with its holder and a fencing token, as the queue's
  (jobs/lease_store.py): the holder renews it (`renew_leases`), any node takes a row whose
  lease ran out back to pending (`take_over_expired`), and a write of a holder that lost its row
  is refused whole (LeaseLost);
- the request rate to a source is booked in the shared request rows (`reserve_request`), so the
  cap holds across the nodes together;
- a patient's ZIP is built by the node whose claim on the patient row won (`claim_zip`);
- a harvest of the rules file gets each version once (`create_rule_version`)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from typing import Any

from orthanc_plugin.audit.clock import iso_at, now_iso
from orthanc_plugin.db_engine import POSTGRESQL, DbConnection, DbRow, StateDatabase
from orthanc_plugin.harvest.model import (
    ACTIVE_STATES,
    IN_FLIGHT_STATES,
    HarvestDefinition,
    ItemLevel,
    ItemState,
    SelectionKind,
    Transition,
    next_slot,
    parse_definition,
    start_state,
)
from orthanc_plugin.jobs.lease_store import LEASE_SECONDS, RENEWALS_PER_LEASE

DEPTH = {ItemLevel.SELECTION: 0, ItemLevel.PATIENT: 1, ItemLevel.STUDY: 2, ItemLevel.SERIES: 3}
_ACTIVE = tuple(s.value for s in ACTIVE_STATES)
_IN_FLIGHT = tuple(s.value for s in IN_FLIGHT_STATES)
# The first key of the per-harvest advisory locks a claim takes on PostgreSQL, apart from the
# queue's (250_001), the intake's (250_002) and the plans' (250_010).
HARVEST_LOCK_SPACE = 250_020
# A source's request slots: one node at a time books the next (second key: hashtext(source)).
RATE_LOCK_SPACE = 250_021
# A rules-file harvest's versions: one node at a time adds the next (second key: hashtext(name)).
RULES_LOCK_SPACE = 250_022
# The rows a claim may take: pending and due, of a running harvest with fewer rows in flight than
# its concurrency (counted over every node's claims: they share the rows).
_READY = (f"SELECT i.* FROM harvest_items i JOIN harvests h ON h.id = i.harvest_id "
          f"WHERE h.state='running' AND i.state='pending' AND i.next_attempt_at <= ? "
          f"AND (SELECT COUNT(*) FROM harvest_items j WHERE j.harvest_id = h.id "
          f"     AND j.state IN ({','.join('?' * len(_IN_FLIGHT))})) < h.concurrency ")
_READY_ORDER = "ORDER BY i.depth DESC, i.id LIMIT 1"


@dataclass(frozen=True)
class Child:
    """A row found by a query, to record under its parent."""

    level: ItemLevel
    patient_id: str
    study_uid: str = ""
    series_uid: str = ""
    modality: str = ""
    description: str = ""
    expected_instances: int | None = None
    state: ItemState = ItemState.PENDING
    query_id: str | None = None
    answer_index: int | None = None


@dataclass(frozen=True)
class Harvest:
    """A row of harvests. `definition` stays the JSON text (HarvestStore.definition parses it)."""

    id: int
    name: str
    source: str
    definition: str
    state: str
    pass_number: int        # the column `pass`
    concurrency: int
    max_requests_per_minute: int
    created_at: str
    started_epoch: float
    updated_at: str
    finished_at: str | None

    @classmethod
    def from_row(cls, row: DbRow) -> Harvest:
        return cls(row["id"], row["name"], row["source"], row["definition"], row["state"],
                   row["pass"], row["concurrency"], row["max_requests_per_minute"],
                   row["created_at"], row["started_epoch"], row["updated_at"], row["finished_at"])


@dataclass(frozen=True)
class HarvestItem:
    """A row of harvest_items: a selection query, a patient, a study or a series."""

    id: int
    harvest_id: int
    parent_id: int | None
    patient_item_id: int | None
    level: str
    depth: int
    patient_id: str
    study_uid: str
    series_uid: str
    modality: str
    description: str
    state: str
    attempts: int
    moves: int
    next_attempt_at: float
    expected_instances: int | None
    stored_instances: int | None
    orthanc_series_id: str | None
    query_id: str | None
    answer_index: int | None
    orthanc_job: str | None
    zip_name: str | None
    zip_series_count: int | None
    last_error: str | None
    found_in_pass: int
    updated_at: str
    # The claim (none for a row built by hand: the inventory's tests).
    claimed_by: str | None = None
    lease_until: float | None = None
    fence: int = 0
    zip_claimed_by: str | None = None
    zip_lease_until: float | None = None

    @classmethod
    def from_row(cls, row: DbRow) -> HarvestItem:
        """Every column by its name (the contract test checks the table has no other)."""
        return cls(**{field.name: row[field.name] for field in fields(cls)})


@dataclass(frozen=True)
class HarvestRuleVersion:
    """A row of harvest_rule_versions: one version of a harvest defined in the rules file."""

    name: str
    version: int
    harvest_id: int
    definition: str          # canonical JSON (sorted keys)
    rules_sha256: str
    created_at: str

    @classmethod
    def from_row(cls, row: DbRow) -> HarvestRuleVersion:
        return cls(**{field.name: row[field.name] for field in fields(cls)})


@dataclass(frozen=True)
class NewRuleVersion:
    """What `create_rule_version` added: the harvest of the new version, and the harvest of the
    version it replaces (None for the first)."""

    harvest_id: int
    version: int
    superseded: int | None


class LeaseLost(Exception):
    """A write for a row this node no longer holds: its lease ran out and another node took it
    over. Nothing of the write was kept; the row is the new holder's."""

    def __init__(self, item_id: int) -> None:
        self.item_id = item_id
        super().__init__(f"harvest item {item_id} was taken over by another node after its "
                         "lease ran out; this node's outcome for it is discarded")


@dataclass(frozen=True)
class SeriesSums:
    """Instances and C-MOVEs over a harvest's series rows, the skipped ones left out."""

    expected: int
    stored: int
    moves: int


def canonical_json(definition: HarvestDefinition) -> str:
    """The parsed definition in one spelling: `[ct]` and `[CT]`, or reordered keys, compare equal."""
    return json.dumps(definition.to_json(), sort_keys=True, separators=(",", ":"))


def _marks(values: tuple[str, ...]) -> str:
    return ",".join("?" * len(values))


class HarvestStore:
    """claimant: this node's worker, as the queue's ("<node>/<generation>:<pid>", RtGateway.NodeName
    first); empty for a node without a name (one node alone on its database)."""

    def __init__(self, db: StateDatabase, claimant: str = "",
                 lease_seconds: float = LEASE_SECONDS) -> None:
        self.db = db
        self.claimant = claimant
        self.lease_seconds = lease_seconds
        # The fencing tokens of the rows this node's threads run, and the tokens of the ZIP
        # claims it holds: checked inside each write's transaction, renewed by the runner.
        self._held: dict[int, int] = {}
        self._zips: dict[int, str] = {}
        self._held_lock = threading.Lock()
        # PostgreSQL: a checked row stays locked until the write commits, so a takeover cannot
        # slip between the check and the write. SQLite: the write transaction is the only one.
        self._lock_rows = " FOR UPDATE" if db.dialect == POSTGRESQL else ""

    # -- harvests ----------------------------------------------------------------------------------
    def create(self, definition: HarvestDefinition) -> int:
        with self.db.transaction() as connection:
            return self._create(connection, definition, now_iso())

    def create_rule_version(self, definition: HarvestDefinition,
                            rules_sha256: str) -> NewRuleVersion | None:
        """A harvest of the rules file whose definition differs from the version in force: its
        harvest and next version, in one transaction (a crash cannot leave a harvest the rules
        would start again). None when that definition is in force already: another node's sync
        of the same file added it since this one looked. On PostgreSQL the version is read
        again under the name's advisory lock (two nodes syncing at once would both add the same
        version: the second fails on the key); SQLite: one writer at a time."""
        stamp = now_iso()
        wanted = canonical_json(definition)
        with self.db.transaction() as connection:
            if self.db.dialect == POSTGRESQL:
                connection.execute("SELECT pg_advisory_xact_lock(CAST(? AS INTEGER), hashtext(?))",
                                   (RULES_LOCK_SPACE, definition.name)).fetchall()
            current = connection.execute(
                "SELECT version, harvest_id, definition FROM harvest_rule_versions WHERE name=? "
                "ORDER BY version DESC LIMIT 1", (definition.name,)).fetchone()
            if current is not None and current["definition"] == wanted:
                return None
            harvest_id = self._create(connection, definition, stamp)
            version = 1 if current is None else int(current["version"]) + 1
            connection.execute(
                "INSERT INTO harvest_rule_versions(name, version, harvest_id, definition,"
                " rules_sha256, created_at) VALUES(?,?,?,?,?,?)",
                (definition.name, version, harvest_id, wanted, rules_sha256, stamp))
        return NewRuleVersion(harvest_id, version,
                              None if current is None else int(current["harvest_id"]))

    def _create(self, connection: DbConnection, definition: HarvestDefinition, stamp: str) -> int:
        # RETURNING, not cursor.lastrowid (PostgreSQL has none); fetchall: SQLite finishes
        # the statement only once its rows are read.
        inserted = connection.execute(
            "INSERT INTO harvests(name, source, definition, concurrency, max_requests_per_minute,"
            " created_at, started_epoch, updated_at) VALUES(?,?,?,?,?,?,?,?) RETURNING id",
            (definition.name, definition.source, json.dumps(definition.to_json()),
             definition.concurrency, definition.max_requests_per_minute, stamp, time.time(), stamp),
        ).fetchall()
        harvest_id = int(inserted[0]["id"])
        if definition.selection.kind is SelectionKind.IDS:
            patient_state = ItemState.PENDING if "study" in definition.levels else ItemState.DONE
            for patient_id in definition.selection.patient_ids:
                self._insert(connection, harvest_id, None, None,
                             Child(ItemLevel.PATIENT, patient_id, state=patient_state), 1)
        else:
            self._insert(connection, harvest_id, None, None, Child(ItemLevel.SELECTION, ""), 1)
        return harvest_id

    def rule_version(self, name: str) -> HarvestRuleVersion | None:
        """The version in force of a harvest defined in the rules file (the highest), or None."""
        rows = self.db.query(
            "SELECT * FROM harvest_rule_versions WHERE name=? ORDER BY version DESC LIMIT 1", (name,))
        return HarvestRuleVersion.from_row(rows[0]) if rows else None

    def harvest(self, harvest_id: int) -> Harvest | None:
        rows = self.db.query("SELECT * FROM harvests WHERE id=?", (harvest_id,))
        return Harvest.from_row(rows[0]) if rows else None

    def definition(self, harvest: Harvest) -> HarvestDefinition:
        return parse_definition(json.loads(harvest.definition))

    def harvests(self) -> list[Harvest]:
        return [Harvest.from_row(row) for row in self.db.query("SELECT * FROM harvests ORDER BY id")]

    def set_harvest_state(self, harvest_id: int, state: str, only_from: tuple[str, ...]) -> bool:
        with self.db.transaction() as connection:
            cursor = connection.execute(
                f"UPDATE harvests SET state=?, updated_at=? WHERE id=? AND state IN ({_marks(only_from)})",
                (state, now_iso(), harvest_id, *only_from),
            )
            return cursor.rowcount > 0

    def refresh(self, harvest_id: int) -> bool:
        """A new pass: walk the queries again for new studies and series; retry what failed.

        Complete series stay complete: only what the new queries find is moved.
        """
        stamp = now_iso()
        with self.db.transaction() as connection:
            cursor = connection.execute(
                "UPDATE harvests SET state='running', pass=pass+1, updated_at=?, finished_at=NULL "
                "WHERE id=? AND state IN ('done','running','paused')",
                (stamp, harvest_id),
            )
            if cursor.rowcount == 0:
                return False
            harvest = connection.execute("SELECT * FROM harvests WHERE id=?", (harvest_id,)).fetchone()
            levels = parse_definition(json.loads(harvest["definition"])).levels
            walked = [ItemLevel.SELECTION.value, ItemLevel.PATIENT.value]
            if "series" in levels:
                walked.append(ItemLevel.STUDY.value)
            if "study" not in levels:
                walked.remove(ItemLevel.PATIENT.value)
            connection.execute(
                f"UPDATE harvest_items SET state='pending', attempts=0, next_attempt_at=0, updated_at=? "
                f"WHERE harvest_id=? AND level IN ({_marks(tuple(walked))}) AND state IN ('done','failed')",
                (stamp, harvest_id, *walked),
            )
            connection.execute(
                "UPDATE harvest_items SET state='pending', attempts=0, next_attempt_at=0, updated_at=? "
                "WHERE harvest_id=? AND level='series' AND state IN ('failed','incomplete')",
                (stamp, harvest_id),
            )
        return True

    def finish_if_settled(self, harvest_id: int) -> bool:
        """A running harvest with nothing left to do is done; true the first time only."""
        with self.db.transaction() as connection:
            if self.db.dialect == POSTGRESQL:
                # Another node's refresh (its harvest row updated, its rows made pending, not yet
                # committed) would not be counted below and then be marked done: wait for it on
                # the harvest's row, which a refresh writes first. SQLite: one writer at a time.
                connection.execute("SELECT id FROM harvests WHERE id=? FOR UPDATE",
                                   (harvest_id,)).fetchall()
            active = connection.execute(
                f"SELECT COUNT(*) FROM harvest_items WHERE harvest_id=? AND state IN ({_marks(_ACTIVE)})",
                (harvest_id, *_ACTIVE),
            ).fetchone()[0]
            if active:
                return False
            cursor = connection.execute(
                "UPDATE harvests SET state='done', finished_at=?, updated_at=? "
                "WHERE id=? AND state='running'",
                (now_iso(), now_iso(), harvest_id),
            )
            return cursor.rowcount > 0

    # -- items -------------------------------------------------------------------------------------
    def recover(self) -> int:
        """At this node's start: rows its earlier run was caught mid-step on (a crash, a kill, a
        stop) run that step again. Another node's rows are left to their lease, which runs out
        if that node is gone too (`take_over_expired`); rows without a holder or a lease were
        claimed before claims had them (one node alone), and a claimant without a node name is
        one node alone on its database: this node's."""
        node = self.claimant.split("/", 1)[0] + "/" if "/" in self.claimant else ""
        mine = ("AND (claimed_by IS NULL OR lease_until IS NULL OR claimed_by NOT LIKE '%/%' "
                "OR substr(claimed_by, 1, CAST(? AS INTEGER)) = ?)") if node else ""
        with self.db.transaction() as connection:
            rows = connection.execute(
                f"SELECT id FROM harvest_items WHERE state IN ({_marks(_IN_FLIGHT)}) {mine} "
                f"ORDER BY id", (*_IN_FLIGHT, *((len(node), node) if node else ()))).fetchall()
            return len(self._requeue(connection, [int(row["id"]) for row in rows]))

    def take_over_expired(self, now: float | None = None) -> list[int]:
        """Rows in flight whose lease ran out, whoever held them (a node that died, or stopped
        answering for longer than the lease): back to pending with a new fencing token, to be
        claimed anew. Their step runs again from what is known: a query has no effect at the
        source and a series is counted in the gateway before any C-MOVE (model.resume_state),
        so nothing is moved or counted twice. This node's own rows are renewed, not taken."""
        now = time.time() if now is None else now
        skip = " FOR UPDATE SKIP LOCKED" if self.db.dialect == POSTGRESQL else ""
        with self.db.transaction() as connection:
            rows = connection.execute(
                f"SELECT id FROM harvest_items WHERE state IN ({_marks(_IN_FLIGHT)}) AND "
                f"lease_until IS NOT NULL AND lease_until < ? ORDER BY id{skip}",
                (*_IN_FLIGHT, now)).fetchall()
            mine = self.held()
            return self._requeue(connection,
                                 [int(row["id"]) for row in rows if int(row["id"]) not in mine])

    @staticmethod
    def _requeue(connection: DbConnection, item_ids: Sequence[int]) -> list[int]:
        """Rows whose holder ended: pending again, no holder, a new token. Their reserved
        requests (booked, then the holder ended) may or may not have gone: said so."""
        stamp = now_iso()
        for item_id in item_ids:
            connection.execute(
                "UPDATE harvest_items SET state='pending', next_attempt_at=0, claimed_by=NULL, "
                "lease_until=NULL, fence=fence+1, updated_at=? WHERE id=?", (stamp, item_id))
            connection.execute(
                "UPDATE harvest_requests SET outcome='unknown', detail=? WHERE item_id=? AND "
                "outcome='reserved'",
                ("its node ended before it said whether the request went", item_id))
        return list(item_ids)

    def release(self) -> int:
        """At a clean stop: the rows this node still runs wait again at once for any node, rather
        than for the end of their lease."""
        held = self.held()
        with self.db.transaction() as connection:
            released = [item_id for item_id, fence in sorted(held.items()) if connection.execute(
                f"SELECT id FROM harvest_items WHERE id=? AND fence=? AND state IN "
                f"({_marks(_IN_FLIGHT)})", (item_id, fence, *_IN_FLIGHT)).fetchone() is not None]
            self._requeue(connection, released)
            for patient_item_id, token in self._zip_claims().items():
                self._drop_zip_claim(connection, patient_item_id, token)
        # The tokens stay held: a step still running after the stop has its writes refused.
        with self._held_lock:
            self._zips.clear()
        return len(released)

    # -- leases --------------------------------------------------------------------------------------
    @property
    def renew_every(self) -> float:
        return self.lease_seconds / RENEWALS_PER_LEASE

    def held(self) -> dict[int, int]:
        with self._held_lock:
            return dict(self._held)

    def orphaned_zips(self, now: float | None = None) -> list[tuple[int, int]]:
        """(harvest, patient row) of ZIP claims that ran out with nobody renewing them: their node
        died while building. Nothing else would build the ZIP again (a patient's ZIP is built
        after a step of that patient, and none is left), so the lease loop hands them back to
        the work loop. This node's own claims are renewed, never orphaned."""
        now = time.time() if now is None else now
        # Sorted here: ORDER BY id would have SQLite read every item in id order instead of the
        # few through the index of ZIP claims (harvest/tables.py, migration 12).
        rows = self.db.query(
            "SELECT harvest_id, id FROM harvest_items WHERE level='patient' AND "
            "zip_claimed_by IS NOT NULL AND zip_lease_until < ?", (now,))
        mine = self._zip_claims()
        return sorted(((int(row["harvest_id"]), int(row["id"])) for row in rows
                       if int(row["id"]) not in mine), key=lambda orphan: orphan[1])

    def _zip_claims(self) -> dict[int, str]:
        with self._held_lock:
            return dict(self._zips)

    def _forget(self, item_ids: Iterable[int]) -> None:
        with self._held_lock:
            for item_id in item_ids:
                self._held.pop(item_id, None)

    def renew_leases(self) -> list[int]:
        """Extend the leases of the rows and ZIPs this node holds; returns the rows it turned out
        to have lost (taken over meanwhile), which it forgets."""
        held, zips = self.held(), self._zip_claims()
        if not held and not zips:
            return []
        until = time.time() + self.lease_seconds
        with self.db.transaction() as connection:
            kept = [item_id for item_id, fence in sorted(held.items()) if connection.execute(
                f"UPDATE harvest_items SET lease_until=? WHERE id=? AND fence=? AND state IN "
                f"({_marks(_IN_FLIGHT)})", (until, item_id, fence, *_IN_FLIGHT)).rowcount == 1]
            for patient_item_id, token in sorted(zips.items()):
                connection.execute("UPDATE harvest_items SET zip_lease_until=? WHERE id=? AND "
                                   "zip_claimed_by=?", (until, patient_item_id, token))
        with self._held_lock:
            # A row settled by another thread meanwhile is gone from _held already: not lost.
            lost = [item_id for item_id in sorted(set(held) - set(kept)) if item_id in self._held]
        self._forget(lost)
        return lost

    def _check(self, connection: DbConnection, item_id: int) -> None:
        """Inside a write's transaction: raise LeaseLost unless the row, if this node claimed it,
        still carries the token its claim was given. Rows it never claimed (a patient row's ZIP
        fields, a test's direct call) are not fenced."""
        with self._held_lock:
            fence = self._held.get(item_id)
        if fence is None:
            return
        row = connection.execute(f"SELECT fence FROM harvest_items WHERE id=?{self._lock_rows}",
                                 (item_id,)).fetchone()
        if row is None or int(row["fence"]) != fence:
            # Still held here, so every later write of the step is refused too; the next
            # renewal finds it lost and forgets it.
            raise LeaseLost(item_id)

    def claim(self) -> HarvestItem | None:
        """The next ready row of a running harvest that has a free slot, marked in flight.

        Several nodes (PostgreSQL) claim from the same harvests: each row is taken once, by
        compare-and-set (still pending), and a harvest's concurrency holds over all of them."""
        now = time.time()
        with self.db.transaction() as connection:
            if self.db.dialect == POSTGRESQL:
                row = self._ready_row_shared(connection, now)
            else:
                # SQLite: one writer at a time (BEGIN IMMEDIATE), the row read stays ready.
                row = connection.execute(_READY + _READY_ORDER, (now, *_IN_FLIGHT)).fetchone()
            if row is None:
                return None
            state = start_state(ItemLevel(row["level"]))
            taken = connection.execute(
                "UPDATE harvest_items SET state=?, attempts=attempts+1, claimed_by=?, lease_until=?,"
                " fence=fence+1, updated_at=? WHERE id=? AND state='pending' RETURNING *",
                (state.value, self.claimant or None, now + self.lease_seconds, now_iso(),
                 row["id"]),
            ).fetchall()
        if not taken:
            return None
        item = HarvestItem.from_row(taken[0])
        with self._held_lock:
            self._held[item.id] = item.fence
        return item

    @staticmethod
    def _ready_row_shared(connection: DbConnection, now: float) -> DbRow | None:
        """PostgreSQL: the best ready row, read while this transaction alone claims from its
        harvest. Under READ COMMITTED two nodes counting a harvest's rows in flight at once would
        each see a free slot and both claim: so the count is read again under the harvest's
        advisory lock (held until commit, when the other node's claim is visible), and the row is
        read FOR UPDATE SKIP LOCKED (a row another transaction is writing is passed over, not
        waited for). The first lock is waited for (nothing else is held yet); a harvest after it
        is taken only if free at once, so two claims never wait for each other's lock."""
        passed: list[int] = []      # harvests with nothing for this claim, or locked by another
        while True:
            others = f"AND h.id NOT IN ({','.join('?' * len(passed))}) " if passed else ""
            best = connection.execute(_READY + others + _READY_ORDER,
                                      (now, *_IN_FLIGHT, *passed)).fetchone()
            if best is None:
                return None
            harvest_id = int(best["harvest_id"])
            key = (HARVEST_LOCK_SPACE, harvest_id & 0x7FFFFFFF)
            if passed:
                locked = bool(connection.execute(
                    "SELECT pg_try_advisory_xact_lock(CAST(? AS INTEGER), CAST(? AS INTEGER)) "
                    "AS locked", key).fetchone()["locked"])
            else:
                connection.execute("SELECT pg_advisory_xact_lock(CAST(? AS INTEGER), "
                                   "CAST(? AS INTEGER))", key).fetchall()
                locked = True
            if locked:
                row: DbRow | None = connection.execute(
                    _READY + "AND h.id = ? " + _READY_ORDER + " FOR UPDATE OF i SKIP LOCKED",
                    (now, *_IN_FLIGHT, harvest_id)).fetchone()
                if row is not None:
                    return row
            passed.append(harvest_id)

    def next_due_in(self) -> float | None:
        rows = self.db.query(
            "SELECT MIN(i.next_attempt_at) AS due FROM harvest_items i JOIN harvests h "
            "ON h.id=i.harvest_id WHERE h.state='running' AND i.state='pending'"
        )
        due = rows[0]["due"] if rows else None
        return None if due is None else max(0.0, due - time.time())

    def settle(self, item_id: int, transition: Transition, **columns: Any) -> None:
        """The step's outcome; the row leaves its claim (LeaseLost if it was taken over)."""
        names = ["state=?", "next_attempt_at=?", "last_error=?", "lease_until=NULL", "updated_at=?"]
        values: list[Any] = [transition.state.value, time.time() + transition.retry_in_seconds,
                             transition.error, now_iso()]
        for name, value in columns.items():
            names.append(f"{name}=?")
            values.append(value)
        with self.db.transaction() as connection:
            self._check(connection, item_id)
            connection.execute(
                f"UPDATE harvest_items SET {', '.join(names)} WHERE id=?", (*values, item_id)
            )
        self._forget([item_id])

    def update(self, item_id: int, **columns: Any) -> None:
        """Columns of a row (LeaseLost if this node claimed it and it was taken over)."""
        names = [f"{name}=?" for name in columns]
        with self.db.transaction() as connection:
            self._check(connection, item_id)
            connection.execute(
                f"UPDATE harvest_items SET {', '.join(names)}, updated_at=? WHERE id=?",
                (*columns.values(), now_iso(), item_id),
            )

    def add_children(self, parent: HarvestItem, children: list[Child], transition: Transition) -> int:
        """Record what a query found and settle the parent, in one transaction (LeaseLost, and
        nothing recorded, if the parent was taken over: its new holder queries again)."""
        added = 0
        with self.db.transaction() as connection:
            self._check(connection, parent.id)
            harvest = connection.execute(
                "SELECT pass FROM harvests WHERE id=?", (parent.harvest_id,)).fetchone()
            for child in children:
                patient_item = parent.patient_item_id
                if child.level is ItemLevel.STUDY and parent.level == ItemLevel.SELECTION.value:
                    patient_item = self._patient_row(connection, parent, child.patient_id, harvest["pass"])
                added += self._insert(connection, parent.harvest_id, parent.id, patient_item, child,
                                      harvest["pass"])
            connection.execute(
                "UPDATE harvest_items SET state=?, next_attempt_at=0, last_error=?, lease_until=NULL,"
                " updated_at=? WHERE id=?",
                (transition.state.value, transition.error, now_iso(), parent.id),
            )
        self._forget([parent.id])
        return added

    def _patient_row(self, connection: DbConnection, parent: HarvestItem, patient_id: str,
                     harvest_pass: int) -> int:
        """A query selection finds studies directly: their patient rows are recorded as done."""
        self._insert(connection, parent.harvest_id, parent.id, None,
                     Child(ItemLevel.PATIENT, patient_id, state=ItemState.DONE), harvest_pass)
        return int(connection.execute(
            "SELECT id FROM harvest_items WHERE harvest_id=? AND level='patient' AND patient_id=?",
            (parent.harvest_id, patient_id)).fetchone()[0])

    @staticmethod
    def _insert(connection: DbConnection, harvest_id: int, parent_id: int | None,
                patient_item_id: int | None, child: Child, harvest_pass: int) -> int:
        """Insert a row once; a row found again (a refresh) keeps its state. 1 if new."""
        key = (harvest_id, child.level.value, child.patient_id, child.study_uid, child.series_uid)
        existing = connection.execute(
            "SELECT id, state, stored_instances FROM harvest_items WHERE harvest_id=? AND level=? "
            "AND patient_id=? AND study_uid=? AND series_uid=?", key).fetchone()
        if existing is not None:
            state = existing["state"]
            if (state == ItemState.COMPLETE.value and child.expected_instances is not None
                    and child.expected_instances > (existing["stored_instances"] or 0)):
                state = ItemState.PENDING.value   # the series grew at the source: fetch it again
            connection.execute(
                "UPDATE harvest_items SET query_id=?, answer_index=?, state=?, updated_at=?,"
                " expected_instances=COALESCE(?, expected_instances) WHERE id=?",
                (child.query_id, child.answer_index, state, now_iso(), child.expected_instances,
                 existing["id"]))
            return 0
        inserted = connection.execute(
            "INSERT INTO harvest_items(harvest_id, parent_id, patient_item_id, level, depth, patient_id,"
            " study_uid, series_uid, modality, description, state, expected_instances, query_id,"
            " answer_index, found_in_pass, updated_at) VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
            " RETURNING id",
            (harvest_id, parent_id, patient_item_id, child.level.value, DEPTH[child.level],
             child.patient_id, child.study_uid, child.series_uid, child.modality, child.description,
             child.state.value, child.expected_instances, child.query_id, child.answer_index,
             harvest_pass, now_iso()),
        ).fetchall()
        if child.level is ItemLevel.PATIENT and patient_item_id is None:
            connection.execute("UPDATE harvest_items SET patient_item_id=id WHERE id=?",
                               (inserted[0]["id"],))
        return 1

    def item(self, item_id: int) -> HarvestItem:
        return HarvestItem.from_row(
            self.db.query("SELECT * FROM harvest_items WHERE id=?", (item_id,))[0])

    def items(self, harvest_id: int) -> list[HarvestItem]:
        """By patient, level, study and series. Text is ordered here, by code point (SQLite's
        BINARY order): PostgreSQL's ORDER BY follows the database's collation ('b' before 'C'
        in en_US), and the inventory and the ZIP names must not depend on the engine."""
        rows = [HarvestItem.from_row(row) for row in self.db.query(
            "SELECT * FROM harvest_items WHERE harvest_id=? AND level <> 'selection'",
            (harvest_id,))]
        return sorted(rows, key=lambda row: (row.patient_id, row.depth, row.study_uid,
                                             row.series_uid, row.id))

    def patient_active(self, patient_item_id: int) -> int:
        return int(self.db.query(
            f"SELECT COUNT(*) AS n FROM harvest_items WHERE (patient_item_id=? OR id=?) "
            f"AND state IN ({_marks(_ACTIVE)})", (patient_item_id, patient_item_id, *_ACTIVE))[0]["n"])

    def complete_series(self, patient_item_id: int) -> list[HarvestItem]:
        """By study and series UID, ordered here as `items` orders."""
        rows = [HarvestItem.from_row(row) for row in self.db.query(
            "SELECT * FROM harvest_items WHERE patient_item_id=? AND level='series' AND state='complete'",
            (patient_item_id,))]
        return sorted(rows, key=lambda row: (row.study_uid, row.series_uid, row.id))

    def counts(self, harvest_id: int) -> dict[str, dict[str, int]]:
        counts: dict[str, dict[str, int]] = {}
        for row in self.db.query(
            "SELECT level, state, COUNT(*) AS n FROM harvest_items WHERE harvest_id=? GROUP BY level, state",
            (harvest_id,),
        ):
            counts.setdefault(row["level"], {})[row["state"]] = row["n"]
        return counts

    def series_sums(self, harvest_id: int) -> SeriesSums:
        row = self.db.query(
            "SELECT COALESCE(SUM(expected_instances),0) AS expected, COALESCE(SUM(stored_instances),0)"
            " AS stored, COALESCE(SUM(moves),0) AS moves FROM harvest_items WHERE harvest_id=? AND"
            " level='series' AND state <> 'skipped'", (harvest_id,))[0]
        return SeriesSums(row["expected"], row["stored"], row["moves"])

    # -- a patient's ZIP: built by one node --------------------------------------------------------
    def claim_zip(self, patient_item_id: int, series_count: int,
                  now: float | None = None) -> str | None:
        """The right to build the patient's ZIP of `series_count` series, by compare-and-set on its
        row: not when that ZIP is written already, nor while another claim on it holds (two nodes
        settling the patient's last two series at once would both build it). Returns the claim's
        token (for `finish_zip` or `release_zip`), or None. A claim whose node died runs out
        with its lease; the holder renews it while it builds (`renew_leases`)."""
        now = time.time() if now is None else now
        token = f"{self.claimant}#{uuid.uuid4().hex}"
        with self.db.transaction() as connection:
            taken = connection.execute(
                "UPDATE harvest_items SET zip_claimed_by=?, zip_lease_until=? WHERE id=? AND "
                "COALESCE(zip_series_count, -1) <> ? AND "
                "(zip_lease_until IS NULL OR zip_lease_until < ?)",
                (token, now + self.lease_seconds, patient_item_id, series_count, now)).rowcount
        if taken != 1:
            return None
        with self._held_lock:
            self._zips[patient_item_id] = token
        return token

    def finish_zip(self, patient_item_id: int, token: str, zip_name: str,
                   series_count: int) -> bool:
        """The ZIP written under the claim `token`; False (nothing recorded) if the claim ran out
        and another node took it."""
        with self.db.transaction() as connection:
            done = connection.execute(
                "UPDATE harvest_items SET zip_name=?, zip_series_count=?, zip_claimed_by=NULL, "
                "zip_lease_until=NULL, updated_at=? WHERE id=? AND zip_claimed_by=?",
                (zip_name, series_count, now_iso(), patient_item_id, token)).rowcount == 1
        self._forget_zip(patient_item_id)
        return done

    def release_zip(self, patient_item_id: int, token: str) -> None:
        """A ZIP not written after all (Orthanc or the disk failed): the next step may try."""
        with self.db.transaction() as connection:
            self._drop_zip_claim(connection, patient_item_id, token)
        self._forget_zip(patient_item_id)

    def _forget_zip(self, patient_item_id: int) -> None:
        with self._held_lock:
            self._zips.pop(patient_item_id, None)

    @staticmethod
    def _drop_zip_claim(connection: DbConnection, patient_item_id: int, token: str) -> None:
        connection.execute("UPDATE harvest_items SET zip_claimed_by=NULL, zip_lease_until=NULL "
                           "WHERE id=? AND zip_claimed_by=?", (patient_item_id, token))

    def patient_zips(self, harvest_id: int) -> list[str]:
        """The ZIP names written so far, one per patient, by PatientID (ordered here as `items`
        orders)."""
        rows = self.db.query(
            "SELECT patient_id, id, zip_name FROM harvest_items WHERE harvest_id=? AND"
            " level='patient' AND zip_name IS NOT NULL", (harvest_id,))
        return [row["zip_name"] for row in sorted(rows, key=lambda row: (row["patient_id"],
                                                                          row["id"]))]

    # -- requests ----------------------------------------------------------------------------------
    def reserve_request(self, item: HarvestItem, source: str, kind: str, per_minute: int,
                        burst: int = 1, now: float | None = None) -> tuple[int, float]:
        """Book the next request slot to `source` for every node at once: its row (outcome
        'reserved', at_epoch the slot) among the source's requests of the last minute, those
        booked by other nodes included, so that no 60 s window holds more than the cap
        (model.next_slot). The cap is the lowest of `per_minute` and the running harvests' of
        the source. One booking at a time per source: on PostgreSQL under the source's advisory
        lock (two nodes reading the same rows would book the same slot), on SQLite the single
        writer. Returns (the row's id, the slot's epoch): the caller waits for it, then sends
        (`request_sent`) or gives the slot up (`cancel_request`). The nodes' clocks must agree
        (NTP), as for the leases."""
        now = time.time() if now is None else now
        with self.db.transaction() as connection:
            if self.db.dialect == POSTGRESQL:
                connection.execute("SELECT pg_advisory_xact_lock(CAST(? AS INTEGER), hashtext(?))",
                                   (RATE_LOCK_SPACE, source)).fetchall()
            running = connection.execute(
                "SELECT MIN(max_requests_per_minute) AS cap FROM harvests WHERE source=? AND "
                "state='running'", (source,)).fetchone()["cap"]
            cap = per_minute if running is None else min(per_minute, int(running))
            recent = [float(row["at_epoch"]) for row in connection.execute(
                "SELECT at_epoch FROM harvest_requests WHERE source=? AND at_epoch > ? "
                "ORDER BY at_epoch DESC LIMIT ?", (source, now - 60, cap)).fetchall()]
            at = next_slot(recent, now, cap, burst)
            inserted = connection.execute(
                "INSERT INTO harvest_requests(at, at_epoch, harvest_id, item_id, source, kind, level,"
                " outcome, detail) VALUES(?,?,?,?,?,?,?,'reserved',NULL) RETURNING id",
                (iso_at(at), at, item.harvest_id, item.id, source, kind, item.level),
            ).fetchall()
        return int(inserted[0]["id"]), at

    def request_sent(self, request_id: int, item: HarvestItem, outcome: str,
                     detail: str | None) -> None:
        """A reserved request went: its outcome (ok, error, or sent: a C-MOVE whose job runs).
        The row keeps its slot's time: the rate is counted on the slots booked."""
        with self.db.transaction() as connection:
            kind = connection.execute(
                "UPDATE harvest_requests SET outcome=?, detail=? WHERE id=? RETURNING kind",
                (outcome, detail, request_id)).fetchall()
            if kind and kind[0]["kind"] == "C-MOVE":
                connection.execute("UPDATE harvest_items SET moves=moves+1 WHERE id=?", (item.id,))

    def cancel_request(self, request_id: int) -> None:
        """A reserved request that never went (the node stops while waiting for its slot): no
        row says it did."""
        with self.db.transaction() as connection:
            connection.execute("DELETE FROM harvest_requests WHERE id=? AND outcome='reserved'",
                               (request_id,))

    def finish_request(self, request_id: int, outcome: str, detail: str | None) -> None:
        """A C-MOVE is only known to have worked once its Orthanc job ended."""
        with self.db.transaction() as connection:
            connection.execute("UPDATE harvest_requests SET outcome=?, detail=? WHERE id=?",
                               (outcome, detail, request_id))

    def requests(self, harvest_id: int) -> list[dict[str, object]]:
        """The harvest's requests as the page shows them (JSON): every column of harvest_requests,
        in the table's order, then the series UID of the row it was sent for."""
        return [dict(row) for row in self.db.query(
            "SELECT r.*, i.series_uid FROM harvest_requests r JOIN harvest_items i ON i.id=r.item_id "
            "WHERE r.harvest_id=? ORDER BY r.id", (harvest_id,))]

    def requests_last_minute(self, source: str) -> int:
        """Sent or due now, by every node; slots booked for later are not counted yet."""
        now = time.time()
        return int(self.db.query(
            "SELECT COUNT(*) AS n FROM harvest_requests WHERE source=? AND at_epoch > ? AND "
            "at_epoch <= ?", (source, now - 60, now))[0]["n"])
