"""The plan worklist the page pages through: search, filters, sort and one page of plans, each in
words (patient, plan, source, when, what is missing, where it went), never its members' UIDs.

`GET /rt-gateway/plans` stays the full list for API clients; the page asks this one, whose answer
does not grow with the database (issue: 1,000 plans were 24 MB of JSON with every CT slice UID)."""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from orthanc_plugin.api.router import ApiError
from orthanc_plugin.db import Database
from orthanc_plugin.plans.search import fold

PER_PAGE_DEFAULT = 50
PER_PAGE_MAX = 200
SORTS = {
    "received": "first_seen_epoch",
    "patient": "patient_name COLLATE NOCASE",
    "label": "plan_label COLLATE NOCASE",
    "date": "plan_date",
    "source": "calling_aet",
}
# Where a plan went, in one word per state (the page and the queue say the same).
STATUS_FILTERS = ("sent", "sending", "parked", "held", "not-sent")
_UID = re.compile(r"\b\d+(?:\.\d+){3,}\b")

# A plan's study-level and instance-level jobs count for it too: a stable-study rule sends the
# plan's files with its study.
_JOBS_OF_PLAN = ("(j.resource_id = b.plan_uid OR (j.study_uid <> '' AND j.study_uid = b.study_uid"
                 " AND j.level <> 'plan'))")


@dataclass(frozen=True)
class WorklistQuery:
    text: str = ""
    complete: bool | None = None
    source: str = ""
    received_from: float | None = None
    received_to: float | None = None
    status: str = ""
    patient: str = ""
    study: str = ""
    sort: str = "received"
    descending: bool = True
    page: int = 1
    per_page: int = PER_PAGE_DEFAULT


def parse_query(query: Mapping[str, str], int_param: Callable[..., int]) -> WorklistQuery:
    """The page's URL parameters, refused with the parameter's name when they make no sense."""
    sort = query.get("sort") or "received"
    if sort not in SORTS:
        raise ApiError(400, f"sort: expected one of {', '.join(SORTS)}")
    order = query.get("order") or ("desc" if sort == "received" else "asc")
    if order not in ("asc", "desc"):
        raise ApiError(400, "order: expected asc or desc")
    complete_text = query.get("complete") or ""
    if complete_text not in ("", "true", "false"):
        raise ApiError(400, "complete: expected true or false")
    status = query.get("status") or ""
    if status and status not in STATUS_FILTERS:
        raise ApiError(400, f"status: expected one of {', '.join(STATUS_FILTERS)}")
    return WorklistQuery(
        text=(query.get("q") or "").strip()[:200],
        complete=None if not complete_text else complete_text == "true",
        source=(query.get("source") or "").strip()[:64],
        received_from=_moment(query, "from"),
        received_to=_moment(query, "to"),
        status=status,
        patient=(query.get("patient") or "")[:64],
        study=(query.get("study") or "")[:64],
        sort=sort,
        descending=order == "desc",
        page=int_param("page", 1, minimum=1, maximum=1_000_000),
        per_page=max(1, int_param("per_page", PER_PAGE_DEFAULT, minimum=1, maximum=PER_PAGE_MAX)),
    )


def _moment(query: Mapping[str, str], name: str) -> float | None:
    """An ISO 8601 time with its offset (the page sends the user's local midnight as such)."""
    text = (query.get(name) or "").strip()
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ApiError(400, f"{name}: expected an ISO 8601 time, got {text[:40]!r}") from None
    if moment.tzinfo is None:
        raise ApiError(400, f"{name}: give the time zone offset (e.g. 2026-12-03T00:00:00+01:00)")
    return moment.timestamp()


def _like(text: str) -> str:
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _where(query: WorklistQuery) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    values: list[Any] = []
    # Every word must be found somewhere: "john smith", "smith breast", "PAT-2".
    for word in [fold(word) for word in query.text.split()[:8]]:
        if not word.strip():
            continue
        if len(word) >= 3 and not set(word) & set("%_\\\""):
            # The trigram index shortlists (plans/tables.py); the row's own text decides.
            clauses.append("b.rowid IN (SELECT rowid FROM plan_search WHERE text LIKE ?)")
            values.append(f"%{word}%")
        clauses.append("search_text LIKE ? ESCAPE '\\'")
        values.append(_like(word))
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
        clauses.append(_STATUS_SQL[query.status])
    return (f"WHERE {' AND '.join(clauses)}" if clauses else ""), values


def _exists(condition: str) -> str:
    return f"EXISTS (SELECT 1 FROM jobs j WHERE {_JOBS_OF_PLAN} AND {condition})"


_STATUS_SQL = {
    "sent": _exists("j.state = 'done'"),
    "sending": _exists("j.state IN ('pending', 'running')"),
    "parked": _exists("j.state = 'dead'"),
    "held": "EXISTS (SELECT 1 FROM plan_rule_runs r WHERE r.plan_uid = b.plan_uid "
            "AND r.outcome = 'held' AND NOT EXISTS (SELECT 1 FROM plan_rule_runs f WHERE "
            "f.plan_uid = r.plan_uid AND f.rule = r.rule AND f.outcome <> 'held'))",
    "not-sent": "NOT " + _exists("1"),
}


def worklist_page(db: Database, query: WorklistQuery,
                  summaries: Callable[[Sequence[str]], dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """One page of plans, the total that match, and the sources to filter by."""
    where, values = _where(query)
    direction = "DESC" if query.descending else "ASC"
    order = f"ORDER BY {SORTS[query.sort]} {direction}, plan_uid LIMIT ? OFFSET ?"
    window = [query.per_page, (query.page - 1) * query.per_page]
    # The page's ids from the worklist index (plans/tables.py), then only those rows whole. A
    # filtered list is counted in the same pass over the index; the whole list by the index's size.
    if where:
        found = db.query(f"SELECT plan_uid, COUNT(*) OVER () AS total FROM plan_bundles b "
                         f"{where} {order}", [*values, *window])
        total = found[0]["total"] if found else _count(db, where, values)
    else:
        found = db.query(f"SELECT plan_uid FROM plan_bundles b {order}", window)
        total = db.query("SELECT COUNT(*) AS n FROM plan_bundles")[0]["n"]
    page_ids = [row["plan_uid"] for row in found]
    by_id = {row["plan_uid"]: row for row in db.query(
        f"SELECT * FROM plan_bundles WHERE plan_uid IN ({','.join('?' * len(page_ids))})",
        page_ids)} if page_ids else {}
    rows = [by_id[plan_id] for plan_id in page_ids if plan_id in by_id]
    plan_ids = [row["plan_uid"] for row in rows]
    extra = summaries(plan_ids) if plan_ids else {}
    went = _destinations(db, rows)
    held = _held(db, plan_ids)
    plans = [_plan_row(row, extra.get(row["plan_uid"], {}), went.get(row["plan_uid"], []),
                       row["plan_uid"] in held) for row in rows]
    sources = _sources(db)
    return {"total": total, "page": query.page, "per_page": query.per_page,
            "pages": max(1, -(-total // query.per_page)), "plans": plans, "sources": sources}


def _count(db: Database, where: str, values: list[Any]) -> int:
    """A page past the end has no row to carry the count: count on its own."""
    return int(db.query(f"SELECT COUNT(*) AS n FROM plan_bundles b {where}", values)[0]["n"])


def _sources(db: Database, most: int = 100) -> list[str]:
    """The distinct calling AEs, one index probe each (a DISTINCT would read every plan)."""
    sources: list[str] = []
    while len(sources) < most:
        row = db.query("SELECT MIN(calling_aet) AS aet FROM plan_bundles WHERE calling_aet > ?",
                       (sources[-1] if sources else "",))[0]
        if row["aet"] is None:
            break
        sources.append(row["aet"])
    return sources


def _plan_row(row: sqlite3.Row, summary: dict[str, Any], destinations: list[dict[str, Any]],
              held: bool) -> dict[str, Any]:
    members = json.loads(row["members_json"])
    counts: dict[str, int] = {}
    series: set[str] = set()
    for member in members:
        counts[member["modality"]] = counts.get(member["modality"], 0) + 1
        if member["modality"] not in ("RTPLAN", "RTSTRUCT", "RTDOSE"):
            series.add(member.get("series_uid", ""))
    return {
        "id": row["plan_uid"],
        "patient_id": row["patient_id"],
        "patient_name": row["patient_name"],
        "birth_date": row["patient_birth_date"],
        "sex": row["patient_sex"],
        "label": row["plan_label"],
        "name": row["plan_name"],
        "date": row["plan_date"],
        "source": row["calling_aet"],
        "received_at": row["first_seen_epoch"],
        "complete": bool(row["complete"]),
        "missing": [humane_missing(text) for text in json.loads(row["missing_json"])],
        "counts": counts,
        "image_series": len(series),
        "intent": summary.get("intent"),
        "prescription_gy": summary.get("prescription_gy"),
        "fractions": summary.get("fractions"),
        "destinations": destinations,
        "held": held,
    }


def humane_missing(text: str) -> str:
    """"RTSTRUCT 1.2.840...": the UID says nothing to a therapist; what is missing does."""
    return _UID.sub("(referenced, not received)", text)


def _destinations(db: Database, rows: Sequence[sqlite3.Row]) -> dict[str, list[dict[str, Any]]]:
    """Per plan and target, the latest job's state and time: "sent to ARCHIVE at 14:02"."""
    if not rows:
        return {}
    plan_of_study: dict[str, list[str]] = {}
    for row in rows:
        if row["study_uid"]:
            plan_of_study.setdefault(row["study_uid"], []).append(row["plan_uid"])
    plan_ids = [row["plan_uid"] for row in rows]
    marks_plans = ",".join("?" * len(plan_ids))
    studies = sorted(plan_of_study)
    marks_studies = ",".join("?" * len(studies)) or "''"
    jobs = db.query(
        "SELECT id, level, resource_id, study_uid, target, state, updated_at, last_status "
        f"FROM jobs WHERE resource_id IN ({marks_plans}) OR (study_uid IN ({marks_studies}) "
        "AND level <> 'plan') ORDER BY id", [*plan_ids, *studies])
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for job in jobs:
        owners = ([job["resource_id"]] if job["level"] == "plan"
                  else plan_of_study.get(job["study_uid"], []))
        for plan_id in owners:
            if plan_id not in plan_ids:
                continue
            latest[(plan_id, job["target"])] = {
                "target": job["target"], "state": job["state"], "at": job["updated_at"],
                "waiting": job["last_status"] == "waiting"}
    answer: dict[str, list[dict[str, Any]]] = {}
    for (plan_id, _), entry in sorted(latest.items()):
        answer.setdefault(plan_id, []).append(entry)
    return answer


def _held(db: Database, plan_ids: Sequence[str]) -> set[str]:
    if not plan_ids:
        return set()
    marks = ",".join("?" * len(plan_ids))
    rows = db.query(
        f"SELECT DISTINCT plan_uid FROM plan_rule_runs r WHERE outcome='held' AND plan_uid IN "
        f"({marks}) AND NOT EXISTS (SELECT 1 FROM plan_rule_runs f WHERE f.plan_uid = r.plan_uid "
        "AND f.rule = r.rule AND f.outcome <> 'held')", list(plan_ids))
    return {row["plan_uid"] for row in rows}
