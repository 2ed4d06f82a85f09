"""The plans' store: the RT objects and bundles the tracker keeps (plans/tables.py), what each
plan-complete rule did, and what the plans' pages read of the received instances, the queue and
the audit. SQL only here; the tracker and the manual send own their transactions, so the writers
(and the reads made inside them) take the caller's connection and a pass commits together.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from orthanc_plugin.db_engine import POSTGRESQL, DbConnection, DbRow, StateDatabase
from orthanc_plugin.jobs.intake_store import Received
from orthanc_plugin.plans.model import RtObject, StoredInstance
from orthanc_plugin.plans.search import fold

if TYPE_CHECKING:
    from orthanc_plugin.plans.worklist import WorklistQuery

# Values per IN (...) query: well under SQLite's bound on parameters.
CHUNK = 500

# The plans' advisory locks on PostgreSQL (apart from the queue's 250_001 and the intake's
# 250_002): one per patient, whose bundles one transaction at a time builds (lock_patients).
PLANS_LOCK_SPACE = 250_010


def _chunks(values: Sequence[str]) -> list[list[str]]:
    items = list(values)
    return [items[start:start + CHUNK] for start in range(0, len(items), CHUNK)]


def _marks(values: Sequence[Any]) -> str:
    return ",".join("?" * len(values))


# -- plan bundles --------------------------------------------------------------------------------
@dataclass(frozen=True)
class PlanBundle:
    """A row of plan_bundles. The JSON columns stay text: each reader decodes its own copy, so
    what one caller changes in its answer never shows in another's."""

    plan_uid: str
    plan_instance_id: str
    patient_id: str | None
    patient_name: str | None
    study_uid: str | None
    calling_aet: str | None
    remote_ip: str | None
    plan_label: str | None
    plan_name: str | None
    plan_date: str | None
    complete: bool
    missing_json: str
    members_json: str
    first_seen_epoch: float
    completed_epoch: float | None
    updated_at: str
    accession_number: str | None
    patient_birth_date: str | None
    patient_sex: str | None

    @property
    def missing(self) -> list[str]:
        return list(json.loads(self.missing_json))

    @property
    def members(self) -> list[dict[str, Any]]:
        """The stored members in sending order: instance_id, sop_instance_uid, modality,
        series_uid."""
        return list(json.loads(self.members_json))


_BUNDLE_COLUMNS = ("plan_uid, plan_instance_id, patient_id, patient_name, study_uid, calling_aet, "
                   "remote_ip, plan_label, plan_name, plan_date, complete, missing_json, "
                   "members_json, first_seen_epoch, completed_epoch, updated_at, accession_number, "
                   "patient_birth_date, patient_sex")


def _bundle(row: DbRow) -> PlanBundle:
    return PlanBundle(
        row["plan_uid"], row["plan_instance_id"], row["patient_id"], row["patient_name"],
        row["study_uid"], row["calling_aet"], row["remote_ip"], row["plan_label"],
        row["plan_name"], row["plan_date"], bool(row["complete"]), row["missing_json"],
        row["members_json"], row["first_seen_epoch"], row["completed_epoch"], row["updated_at"],
        row["accession_number"], row["patient_birth_date"], row["patient_sex"])


def bundle(db: StateDatabase, plan_uid: str) -> PlanBundle | None:
    rows = db.query(f"SELECT {_BUNDLE_COLUMNS} FROM plan_bundles WHERE plan_uid=?", (plan_uid,))
    return _bundle(rows[0]) if rows else None


def bundles_by_uid(db: StateDatabase, plan_uids: Sequence[str]) -> list[PlanBundle]:
    """The bundles of these plans, in the order given (an unknown one is left out)."""
    if not plan_uids:
        return []
    by_uid = {row["plan_uid"]: _bundle(row) for row in db.query(
        f"SELECT {_BUNDLE_COLUMNS} FROM plan_bundles WHERE plan_uid IN ({_marks(plan_uids)})",
        plan_uids)}
    return [by_uid[uid] for uid in plan_uids if uid in by_uid]


def filtered_bundles(db: StateDatabase, *, label: str = "", patient_id: str = "", study_uid: str = "",
                     plan_date_from: str | None = None,
                     complete: bool | None = None) -> list[PlanBundle]:
    """Every bundle that passes the given filters (an empty text or None is no filter), by
    patient, plan date and label; `label` is a substring, `plan_date_from` a DICOM date."""
    clauses: list[str] = []
    values: list[Any] = []
    if label:
        # Case-insensitive on both engines (SQLite's LIKE is for ASCII, PostgreSQL's is not).
        clauses.append("LOWER(plan_label) LIKE LOWER(?) ESCAPE '\\'")
        values.append("%" + _escape_like(label) + "%")
    if patient_id:
        clauses.append("patient_id = ?")
        values.append(patient_id)
    if study_uid:
        clauses.append("study_uid = ?")
        values.append(study_uid)
    if plan_date_from is not None:
        clauses.append("plan_date >= ?")
        values.append(plan_date_from)
    if complete is not None:
        clauses.append("complete = ?")
        values.append(int(complete))
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    first = _nulls_first(db)
    return [_bundle(row) for row in db.query(
        f"SELECT {_BUNDLE_COLUMNS} FROM plan_bundles {where} "
        f"ORDER BY patient_id{first}, plan_date{first}, plan_label{first}", values)]


def _nulls_first(db: StateDatabase, descending: bool = False) -> str:
    """Where an ORDER BY term puts NULLs on PostgreSQL, as SQLite does (first going up, last
    going down; PostgreSQL's default is the other way round). Nothing on SQLite."""
    if db.dialect != POSTGRESQL:
        return ""
    return " NULLS LAST" if descending else " NULLS FIRST"


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


@dataclass(frozen=True)
class BundleState:
    """What the tracker writes of a bundle each time it builds it again."""

    plan_uid: str
    plan_instance_id: str
    patient_id: str
    patient_name: str
    study_uid: str | None
    calling_aet: str | None
    remote_ip: str | None
    plan_label: str | None
    plan_name: str | None
    plan_date: str | None
    complete: bool
    missing: Sequence[str]
    members: Sequence[dict[str, Any]]
    accession_number: str
    patient_birth_date: str
    patient_sex: str


def save_bundle(connection: DbConnection, state: BundleState, now: float,
                updated_at: str) -> None:
    """A new bundle is first seen now; a known one keeps its first sighting, its source and its
    plan's names, and keeps the moment it first became complete (kept by the statement itself:
    two writers at once on PostgreSQL, the second updates the row the first committed). Its
    search text follows the names it keeps (fold_search_text)."""
    connection.execute(
        "INSERT INTO plan_bundles(plan_uid, plan_instance_id, patient_id, patient_name,"
        " study_uid, calling_aet, remote_ip, plan_label, plan_name, plan_date, complete,"
        " missing_json, members_json, first_seen_epoch, completed_epoch, updated_at,"
        " accession_number, patient_birth_date, patient_sex)"
        " VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT(plan_uid) DO UPDATE SET"
        " complete=excluded.complete, missing_json=excluded.missing_json,"
        " accession_number=excluded.accession_number,"
        " patient_birth_date=excluded.patient_birth_date,"
        " patient_sex=excluded.patient_sex,"
        " members_json=excluded.members_json, updated_at=excluded.updated_at,"
        " completed_epoch=COALESCE(plan_bundles.completed_epoch, excluded.completed_epoch)",
        (
            state.plan_uid, state.plan_instance_id, state.patient_id, state.patient_name,
            state.study_uid, state.calling_aet, state.remote_ip, state.plan_label,
            state.plan_name, state.plan_date, int(state.complete),
            json.dumps(list(state.missing)), json.dumps(list(state.members)),
            now, now if state.complete else None, updated_at, state.accession_number,
            state.patient_birth_date, state.patient_sex,
        ),
    )
    fold_search_text(connection, [state.plan_uid])


# The columns the worklist's search looks in (plans/tables.py SEARCH_TEXT says the same in SQL).
SEARCH_COLUMNS = ("patient_name", "patient_id", "plan_label", "plan_name", "accession_number")


def search_text(row: DbRow) -> str:
    """A bundle's folded search text, as plans/tables.py's SEARCH_TEXT computes it in SQLite."""
    return fold(" ".join(row[column] or "" for column in SEARCH_COLUMNS))


def fold_search_text(connection: DbConnection, plan_uids: Sequence[str] | None) -> int:
    """Sets search_text of these bundles (of every bundle without one, for None) where it is not
    their names folded; returns how many it set. On SQLite the triggers of plans/tables.py have
    set it already and this only reads; PostgreSQL has no rtgw_fold, so the text is folded here,
    by the writer, in its transaction."""
    columns = ", ".join(SEARCH_COLUMNS)
    if plan_uids is None:
        rows = connection.execute(f"SELECT plan_uid, search_text, {columns} FROM plan_bundles "
                                  "WHERE search_text IS NULL").fetchall()
    else:
        rows = [row for chunk in _chunks(plan_uids) for row in connection.execute(
            f"SELECT plan_uid, search_text, {columns} FROM plan_bundles WHERE plan_uid IN "
            f"({_marks(chunk)})", chunk).fetchall()]
    changed = [(text, row["plan_uid"]) for row in rows
               if row["search_text"] != (text := search_text(row))]
    if changed:
        connection.executemany("UPDATE plan_bundles SET search_text=? WHERE plan_uid=?", changed)
    return len(changed)


def lock_patients(db: StateDatabase, connection: DbConnection,
                  patient_ids: Iterable[str]) -> None:
    """Taken first in a transaction that builds these patients' bundles again: on PostgreSQL an
    advisory lock per patient until the transaction ends, in one order (no deadlock between two
    nodes), so two nodes never build one patient's bundles at once, each from what the other has
    not committed yet (node A's CT, node B's plan: neither would see the bundle complete, and
    the later commit could undo the other's completeness). Under READ COMMITTED each statement
    after the lock sees what the previous holder committed. SQLite: its one writer at a time
    (BEGIN IMMEDIATE) does the same, nothing to take."""
    if db.dialect != POSTGRESQL:
        return
    for patient_id in sorted(set(patient_ids)):
        connection.execute("SELECT pg_advisory_xact_lock(CAST(? AS INTEGER), CAST(? AS INTEGER))",
                           (PLANS_LOCK_SPACE, _lock_key(patient_id))).fetchall()


def _lock_key(text: str) -> int:
    """A stable signed 32-bit key of the text, the same on every node."""
    key = zlib.crc32(text.encode())
    return key - (1 << 32) if key >= 1 << 31 else key


# -- what the tracker follows --------------------------------------------------------------------
@dataclass(frozen=True)
class ReceivedRow:
    """A received instance as the tracker follows it."""

    seq: int
    instance_id: str
    state: str
    modality: str | None
    patient_id: str | None
    study_uid: str | None
    calling_aet: str | None


def received_after(db: StateDatabase, seq: int, limit: int) -> list[ReceivedRow]:
    """The received rows after `seq`, in the order they came, whatever their state."""
    return [ReceivedRow(row["seq"], row["instance_id"], row["state"], row["modality"],
                        row["patient_id"], row["study_uid"], row["calling_aet"])
            for row in db.query(
                "SELECT seq, instance_id, state, modality, patient_id, study_uid, calling_aet "
                "FROM received WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit))]


def record_object(connection: DbConnection, row: ReceivedRow, item: RtObject,
                  plan_name: str, plan_date: str, recorded_at: str) -> None:
    """An RT object read again keeps what it was first recorded with but its references."""
    connection.execute(
        "INSERT INTO rt_objects(instance_id, sop_instance_uid, modality, patient_id, study_uid,"
        " calling_aet, plan_label, plan_name, plan_date, references_json, recorded_at,"
        " dose_summation, beam_count) VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?)"
        " ON CONFLICT(instance_id) DO UPDATE SET references_json=excluded.references_json",
        (
            row.instance_id, item.sop_instance_uid, item.modality, row.patient_id,
            row.study_uid, row.calling_aet, item.plan_label, plan_name, plan_date,
            json.dumps(list(item.references)), recorded_at, item.dose_summation, item.beam_count,
        ),
    )


@dataclass(frozen=True)
class RecordedObject:
    """An RT object of a patient, with the study and source of its stored instance. The names
    are as stored (None where an old row has none); `rt.plan_label` is "" for none."""

    rt: RtObject
    instance_id: str
    study_id: str           # described instances all have one
    study_uid: str | None
    calling_aet: str | None
    remote_ip: str | None
    plan_label: str | None
    plan_name: str | None
    plan_date: str | None


def patient_objects(connection: DbConnection, patient_id: str) -> list[RecordedObject]:
    """The patient's RT objects whose instance is still stored (described and not gone)."""
    return [
        RecordedObject(
            RtObject(row["sop_instance_uid"], row["modality"],
                     tuple(json.loads(row["references_json"])), row["plan_label"] or "",
                     row["dose_summation"] or "", row["beam_count"] or 0),
            row["instance_id"], row["study_id"], row["study_uid"], row["calling_aet"],
            row["remote_ip"], row["plan_label"], row["plan_name"], row["plan_date"])
        for row in connection.execute(
            "SELECT o.*, r.study_id, r.remote_ip FROM rt_objects o JOIN received r "
            "ON r.instance_id = o.instance_id WHERE o.patient_id=? AND r.state='ready'",
            (patient_id,))
    ]


def stored_by_uid(connection: DbConnection,
                  uids: Sequence[str]) -> dict[str, StoredInstance]:
    """The stored instances among these SOP Instance UIDs, by UID."""
    stored: dict[str, StoredInstance] = {}
    for chunk in _chunks(uids):
        for row in connection.execute(
            "SELECT instance_id, sop_instance_uid, modality, series_uid, instance_number, state "
            f"FROM received WHERE sop_instance_uid IN ({_marks(chunk)})", chunk,
        ):
            # The state is tested here, not in SQL: with `state='ready'` there SQLite read every
            # ready row through the index by state, months of them (tests/unit/test_query_plans.py).
            if row["state"] != "ready":
                continue
            stored[row["sop_instance_uid"]] = StoredInstance(
                row["instance_id"], row["sop_instance_uid"], row["modality"] or "",
                row["series_uid"] or "", row["instance_number"] or 0,
            )
    return stored


def member_rows(connection: DbConnection,
                instance_ids: Sequence[str]) -> list[Received]:
    """The received rows of these instances that are still stored, in the order given. Whole
    rows: the rules' facts (jobs/facts.py) read them as the intake does."""
    rows: dict[str, Received] = {}
    for chunk in _chunks(instance_ids):
        for row in connection.execute(
            f"SELECT * FROM received WHERE instance_id IN ({_marks(chunk)})", chunk,
        ):
            if row["state"] == "ready":   # tested here: see stored_by_uid
                rows[row["instance_id"]] = Received.from_row(row)
    return [rows[iid] for iid in instance_ids if iid in rows]


# -- plan-complete rules -------------------------------------------------------------------------
def bundles_not_run(db: StateDatabase, rule: str, outcomes: Sequence[str]) -> list[PlanBundle]:
    """The bundles the rule has no run of with one of these outcomes, the first seen first."""
    return [_bundle(row) for row in db.query(
        f"SELECT {_BUNDLE_COLUMNS} FROM plan_bundles b WHERE NOT EXISTS (SELECT 1 FROM "
        f"plan_rule_runs r WHERE r.rule=? AND r.plan_uid=b.plan_uid AND r.outcome IN "
        f"({_marks(outcomes)})) ORDER BY first_seen_epoch", (rule, *outcomes))]


def has_run(db: StateDatabase, rule: str, plan_uid: str, outcomes: Sequence[str]) -> bool:
    return bool(db.query(
        f"SELECT 1 FROM plan_rule_runs WHERE rule=? AND plan_uid=? AND outcome IN "
        f"({_marks(outcomes)})", (rule, plan_uid, *outcomes)))


def rule_still_to_run(db: StateDatabase, connection: DbConnection, rule: str, plan_uid: str,
                      outcomes: Sequence[str]) -> bool:
    """Read first in the transaction that acts on the bundle and records the run
    (record_rule_run): whether the bundle is still there and the rule has no run of these
    outcomes. On PostgreSQL the bundle's row is locked first (FOR UPDATE, until the transaction
    ends), so a second node deciding the same plan waits for the first to commit and then sees
    its run: a plan fires, and is forwarded, once. SQLite: the transaction is the one writer."""
    lock = " FOR UPDATE" if db.dialect == POSTGRESQL else ""
    if not connection.execute(f"SELECT 1 FROM plan_bundles WHERE plan_uid=?{lock}",
                              (plan_uid,)).fetchall():
        return False
    return not connection.execute(
        f"SELECT 1 FROM plan_rule_runs WHERE rule=? AND plan_uid=? AND outcome IN "
        f"({_marks(outcomes)})", (rule, plan_uid, *outcomes)).fetchall()


def record_rule_run(connection: DbConnection, rule: str, plan_uid: str, outcome: str,
                    at: str, missing: Sequence[str], jobs: int) -> None:
    """One run per (rule, plan, outcome): a repeat of the same outcome is not recorded again."""
    connection.execute(
        "INSERT INTO plan_rule_runs(rule, plan_uid, outcome, at, missing_json, jobs)"
        " VALUES(?,?,?,?,?,?) ON CONFLICT DO NOTHING",
        (rule, plan_uid, outcome, at, json.dumps(list(missing)), jobs))


def rule_runs(db: StateDatabase, plan_uid: str) -> list[dict[str, object]]:
    """What each rule did with the plan, oldest first, as the plan's page shows it."""
    return [dict(row) for row in db.query(
        "SELECT rule, outcome, at, missing_json, jobs FROM plan_rule_runs WHERE plan_uid=? "
        "ORDER BY at", (plan_uid,))]


# -- the plan's page -----------------------------------------------------------------------------
def received_at(db: StateDatabase, instance_ids: Sequence[str]) -> dict[str, str]:
    """When each of these instances was received (one never received is absent)."""
    received: dict[str, str] = {}
    for chunk in _chunks(instance_ids):
        for row in db.query(
                f"SELECT instance_id, received_at FROM received WHERE instance_id IN "
                f"({_marks(chunk)})", chunk):
            received[row["instance_id"]] = row["received_at"]
    return received


def latest_decisions(db: StateDatabase, plan_uid: str, study_uid: str) -> list[dict[str, object]]:
    """The latest evaluation of each rule on the plan (plan-complete) and on its study (stable
    study), by rule name: the page tells why a rule did not fire."""
    return [dict(row) for row in db.query(
        "SELECT rule, trigger, level, matched, failed_condition, reason, at FROM evaluations "
        "WHERE id IN (SELECT MAX(id) FROM evaluations WHERE (level = 'plan' AND resource_id = ?) "
        "OR (level = 'study' AND study_uid = ? AND study_uid <> '') GROUP BY rule, level) "
        "ORDER BY rule", (plan_uid, study_uid))]


# -- manual send ---------------------------------------------------------------------------------
def sent_or_on_its_way(db: StateDatabase, plan_uid: str, study_uid: str, target: str) -> bool:
    """A job of this plan (or of its study, by a study rule) to the target is done or under way."""
    return bool(db.query(
        "SELECT 1 FROM jobs WHERE target = ? AND state IN ('done', 'pending', 'running') AND "
        "(resource_id = ? OR (study_uid <> '' AND study_uid = ? AND level <> 'plan')) LIMIT 1",
        (target, plan_uid, study_uid)))


# -- the worklist --------------------------------------------------------------------------------
# The worklist's sorts (the page's word -> the order), each served by the worklist index.
WORKLIST_SORTS = {
    "received": "first_seen_epoch",
    "patient": "patient_name COLLATE NOCASE",
    "label": "plan_label COLLATE NOCASE",
    "date": "plan_date",
    "source": "calling_aet",
}
# PostgreSQL has no NOCASE collation: the same order by the lowered text.
_POSTGRES_SORTS = {**WORKLIST_SORTS, "patient": "LOWER(patient_name)",
                   "label": "LOWER(plan_label)"}

# A plan's study-level and instance-level jobs count for it too: a stable-study rule sends the
# plan's files with its study.
_JOBS_OF_PLAN = ("(j.resource_id = b.plan_uid OR (j.study_uid <> '' AND j.study_uid = b.study_uid"
                 " AND j.level <> 'plan'))")


def _jobs_exist(condition: str) -> str:
    return f"EXISTS (SELECT 1 FROM jobs j WHERE {_JOBS_OF_PLAN} AND {condition})"


# A "held" plan is held by a rule that has done nothing else with it since.
_HELD_ONLY = ("NOT EXISTS (SELECT 1 FROM plan_rule_runs f WHERE f.plan_uid = r.plan_uid "
              "AND f.rule = r.rule AND f.outcome <> 'held')")

# Where a plan went (worklist.STATUS_FILTERS), as a condition on its row b.
STATUS_CONDITIONS = {
    "sent": _jobs_exist("j.state = 'done'"),
    "sending": _jobs_exist("j.state IN ('pending', 'running')"),
    "parked": _jobs_exist("j.state = 'dead'"),
    "held": "EXISTS (SELECT 1 FROM plan_rule_runs r WHERE r.plan_uid = b.plan_uid "
            f"AND r.outcome = 'held' AND {_HELD_ONLY})",
    "not-sent": "NOT " + _jobs_exist("1 = 1"),   # a boolean on both engines
}


def _contains(text: str) -> str:
    return "%" + _escape_like(text) + "%"


def _worklist_where(db: StateDatabase, query: WorklistQuery) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    values: list[Any] = []
    # Every word must be found somewhere: "john smith", "smith breast", "PAT-2".
    for word in [fold(word) for word in query.text.split()[:8]]:
        if not word.strip():
            continue
        if len(word) >= 3 and not set(word) & set("%_\\\"") and db.dialect != POSTGRESQL:
            # The trigram index shortlists (plans/tables.py, SQLite's FTS5; PostgreSQL has none
            # and reads the worklist index); the row's own text decides.
            clauses.append("b.rowid IN (SELECT rowid FROM plan_search WHERE text LIKE ?)")
            values.append(f"%{word}%")
        clauses.append("search_text LIKE ? ESCAPE '\\'")
        values.append(_contains(word))
    if query.complete is not None:
        clauses.append("complete = ?")
        values.append(int(query.complete))
    if query.source:
        clauses.append("calling_aet = ?")
        values.append(query.source)
    if query.received_from is not None:
        clauses.append("first_seen_epoch >= ?")
        values.append(query.received_from)
    if query.received_to is not None:
        clauses.append("first_seen_epoch < ?")
        values.append(query.received_to)
    if query.patient:
        clauses.append("patient_id = ?")
        values.append(query.patient)
    if query.study:
        clauses.append("study_uid = ?")
        values.append(query.study)
    if query.status:
        clauses.append(STATUS_CONDITIONS[query.status])
    return (f"WHERE {' AND '.join(clauses)}" if clauses else ""), values


@dataclass(frozen=True)
class WorklistIds:
    plan_uids: list[str]   # the page's plans, in the page's order
    total: int             # the plans that match, on every page


def worklist_ids(db: StateDatabase, query: WorklistQuery) -> WorklistIds:
    """The ids of one page of plans that match, from the worklist index alone (plans/tables.py)
    and never the table's rows; a filtered list is counted in the same pass over the index, the
    whole list by the index's size."""
    where, values = _worklist_where(db, query)
    direction = "DESC" if query.descending else "ASC"
    sorts = _POSTGRES_SORTS if db.dialect == POSTGRESQL else WORKLIST_SORTS
    nulls = _nulls_first(db, query.descending)
    order = f"ORDER BY {sorts[query.sort]} {direction}{nulls}, plan_uid LIMIT ? OFFSET ?"
    window = [query.per_page, (query.page - 1) * query.per_page]
    if where:
        found = db.query(f"SELECT plan_uid, COUNT(*) OVER () AS total FROM plan_bundles b "
                         f"{where} {order}", [*values, *window])
        # A page past the end has no row to carry the count: count on its own.
        total = int(found[0]["total"]) if found else int(db.query(
            f"SELECT COUNT(*) AS n FROM plan_bundles b {where}", values)[0]["n"])
    else:
        found = db.query(f"SELECT plan_uid FROM plan_bundles b {order}", window)
        total = int(db.query("SELECT COUNT(*) AS n FROM plan_bundles")[0]["n"])
    return WorklistIds([row["plan_uid"] for row in found], total)


def plan_sources(db: StateDatabase, most: int = 100) -> list[str]:
    """The distinct calling AEs, one index probe each (a DISTINCT would read every plan)."""
    sources: list[str] = []
    while len(sources) < most:
        row = db.query("SELECT MIN(calling_aet) AS aet FROM plan_bundles WHERE calling_aet > ?",
                       (sources[-1] if sources else "",))[0]
        if row["aet"] is None:
            break
        sources.append(row["aet"])
    return sources


@dataclass(frozen=True)
class PlanJob:
    """A job as the worklist tells where a plan went."""

    id: int
    level: str
    resource_id: str
    study_uid: str | None
    target: str
    state: str
    updated_at: str
    last_status: str | None


def jobs_of_plans(db: StateDatabase, plan_uids: Sequence[str],
                  study_uids: Sequence[str]) -> list[PlanJob]:
    """The jobs of these plans and the study- and instance-level jobs of these studies, oldest
    first."""
    marks_studies = _marks(study_uids) or "''"
    return [PlanJob(row["id"], row["level"], row["resource_id"], row["study_uid"], row["target"],
                    row["state"], row["updated_at"], row["last_status"])
            for row in db.query(
                "SELECT id, level, resource_id, study_uid, target, state, updated_at, last_status "
                f"FROM jobs WHERE resource_id IN ({_marks(plan_uids)}) OR (study_uid IN "
                f"({marks_studies}) AND level <> 'plan') ORDER BY id",
                [*plan_uids, *study_uids])]


def held_plans(db: StateDatabase, plan_uids: Sequence[str]) -> set[str]:
    """The plans among these that a rule holds (and has done nothing else with since)."""
    if not plan_uids:
        return set()
    rows = db.query(
        f"SELECT DISTINCT plan_uid FROM plan_rule_runs r WHERE outcome='held' AND plan_uid IN "
        f"({_marks(plan_uids)}) AND {_HELD_ONLY}", list(plan_uids))
    return {row["plan_uid"] for row in rows}


# -- the queue page ------------------------------------------------------------------------------
@dataclass(frozen=True)
class QueueJob:
    """A job as the queue page lists it."""

    id: int
    state: str
    target: str
    rule: str
    trigger: str
    level: str
    action: str
    resource_id: str
    patient_id: str | None
    attempts: int
    created_epoch: float
    updated_at: str
    next_attempt_at: float
    last_error: str | None
    last_status: str | None


def _jobs_where(states: Sequence[str], target: str) -> tuple[str, list[Any]]:
    where = f"state IN ({_marks(states)})" + (" AND target = ?" if target else "")
    return where, [*states, *([target] if target else [])]


def count_jobs(db: StateDatabase, states: Sequence[str], target: str = "") -> int:
    """The jobs in these states (to this target when one is given)."""
    where, values = _jobs_where(states, target)
    return int(db.query(f"SELECT COUNT(*) AS n FROM jobs WHERE {where}", values)[0]["n"])


def jobs_page(db: StateDatabase, states: Sequence[str], target: str, *, oldest_first: bool,
              limit: int, offset: int) -> list[QueueJob]:
    """A window of the jobs in these states: by id when `oldest_first`, else the latest
    updated first."""
    where, values = _jobs_where(states, target)
    order = "id ASC" if oldest_first else "updated_at DESC, id DESC"
    return [QueueJob(row["id"], row["state"], row["target"], row["rule"], row["trigger"],
                     row["level"], row["action"], row["resource_id"], row["patient_id"],
                     row["attempts"], row["created_epoch"], row["updated_at"],
                     row["next_attempt_at"], row["last_error"], row["last_status"])
            for row in db.query(
                "SELECT id, state, target, rule, trigger, level, action, resource_id, patient_id,"
                " attempts, created_epoch, updated_at, next_attempt_at, last_error, last_status"
                f" FROM jobs WHERE {where} ORDER BY {order} LIMIT ? OFFSET ?",
                [*values, limit, offset])]


def jobs_by_state(db: StateDatabase, states: Sequence[str] | None = None) -> dict[str, int]:
    """How many jobs are in each state (in each of `states` only, when given: read through the
    index by state, as cheap as those jobs are few however many finished ones the table keeps)."""
    if states is None:
        return {row["state"]: int(row["n"]) for row in db.query(
            "SELECT state, COUNT(*) AS n FROM jobs GROUP BY state")}
    return {row["state"]: int(row["n"]) for row in db.query(
        f"SELECT state, COUNT(*) AS n FROM jobs WHERE state IN ({_marks(states)}) GROUP BY state",
        tuple(states))}


def job_targets(db: StateDatabase, state: str | None = None, most: int = 200) -> list[str]:
    """The targets of the jobs (of those in `state` when given), by name.

    Every job's target: one index seek per target (the loose index scan both engines run from
    this recursive query) instead of reading the index of every job, which the queue page did
    at each refresh (240 ms at a million jobs)."""
    if state is None:
        rows = db.query(
            "WITH RECURSIVE found(target) AS (SELECT MIN(target) FROM jobs UNION ALL "
            "SELECT (SELECT MIN(j.target) FROM jobs j WHERE j.target > found.target) FROM found "
            "WHERE found.target IS NOT NULL) "
            "SELECT target FROM found WHERE target IS NOT NULL ORDER BY target LIMIT ?", (most,))
    else:
        rows = db.query("SELECT DISTINCT target FROM jobs WHERE state=? ORDER BY target LIMIT ?",
                        (state, most))
    return [row["target"] for row in rows]


def item_counts(db: StateDatabase, job_ids: Sequence[int]) -> dict[int, dict[str, int]]:
    """Per job, how many of its instances are in each item state (a job without items is
    absent)."""
    if not job_ids:
        return {}
    items: dict[int, dict[str, int]] = {}
    for row in db.query(f"SELECT job_id, state, COUNT(*) AS n FROM job_items WHERE job_id IN "
                        f"({_marks(job_ids)}) GROUP BY job_id, state", list(job_ids)):
        items.setdefault(row["job_id"], {})[row["state"]] = row["n"]
    return items


@dataclass(frozen=True)
class PlanNames:
    label: str
    name: str
    date: str


def plan_names(db: StateDatabase, plan_uids: Sequence[str]) -> dict[str, PlanNames]:
    """The label, name and date ("" for none) of each of these plans that has a bundle."""
    if not plan_uids:
        return {}
    return {row["plan_uid"]: PlanNames(row["plan_label"] or "", row["plan_name"] or "",
                                       row["plan_date"] or "")
            for row in db.query(
                f"SELECT plan_uid, plan_label, plan_name, plan_date FROM plan_bundles WHERE "
                f"plan_uid IN ({_marks(plan_uids)})", list(plan_uids))}


def patient_names(db: StateDatabase, patient_ids: Sequence[str]) -> dict[str, str]:
    """A name ("" for none) for each of these patients that has a plan."""
    if not patient_ids:
        return {}
    return {row["patient_id"]: row["name"] or "" for row in db.query(
        f"SELECT patient_id, MAX(patient_name) AS name FROM plan_bundles WHERE patient_id "
        f"IN ({_marks(patient_ids)}) GROUP BY patient_id", list(patient_ids))}
