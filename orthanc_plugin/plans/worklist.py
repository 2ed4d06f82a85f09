"""The plan worklist the page pages through: search, filters, sort and one page of plans, each in
words (patient, plan, source, when, what is missing, where it went), never its members' UIDs.

`GET /rt-gateway/plans` stays the full list for API clients; the page asks this one, whose answer
does not grow with the database (issue: 1,000 plans were 24 MB of JSON with every CT slice UID)."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from orthanc_plugin.api.router import ApiError
from orthanc_plugin.db_engine import StateDatabase
from orthanc_plugin.plans import store

PER_PAGE_DEFAULT = 50
PER_PAGE_MAX = 200
SORTS = tuple(store.WORKLIST_SORTS)
# Where a plan went, in one word per state (the page and the queue say the same).
STATUS_FILTERS = tuple(store.STATUS_CONDITIONS)
_UID = re.compile(r"\b\d+(?:\.\d+){3,}\b")


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


def worklist_page(db: StateDatabase, query: WorklistQuery,
                  summaries: Callable[[Sequence[str]], dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """One page of plans, the total that match, and the sources to filter by."""
    # The page's ids from the worklist index, then only those rows whole.
    found = store.worklist_ids(db, query)
    total = found.total
    rows = store.bundles_by_uid(db, found.plan_uids)
    plan_ids = [row.plan_uid for row in rows]
    extra = summaries(plan_ids) if plan_ids else {}
    went = _destinations(db, rows)
    held = store.held_plans(db, plan_ids)
    plans = [_plan_row(row, extra.get(row.plan_uid, {}), went.get(row.plan_uid, []),
                       row.plan_uid in held) for row in rows]
    sources = store.plan_sources(db)
    return {"total": total, "page": query.page, "per_page": query.per_page,
            "pages": max(1, -(-total // query.per_page)), "plans": plans, "sources": sources}


def _plan_row(row: store.PlanBundle, summary: dict[str, Any],
              destinations: list[dict[str, Any]], held: bool) -> dict[str, Any]:
    members = row.members
    counts: dict[str, int] = {}
    series: set[str] = set()
    for member in members:
        counts[member["modality"]] = counts.get(member["modality"], 0) + 1
        if member["modality"] not in ("RTPLAN", "RTSTRUCT", "RTDOSE"):
            series.add(member.get("series_uid", ""))
    return {
        "id": row.plan_uid,
        "patient_id": row.patient_id,
        "patient_name": row.patient_name,
        "birth_date": row.patient_birth_date,
        "sex": row.patient_sex,
        "label": row.plan_label,
        "name": row.plan_name,
        "date": row.plan_date,
        "source": row.calling_aet,
        "received_at": row.first_seen_epoch,
        "complete": row.complete,
        "missing": [humane_missing(text) for text in row.missing],
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


def _destinations(db: StateDatabase,
                  rows: Sequence[store.PlanBundle]) -> dict[str, list[dict[str, Any]]]:
    """Per plan and target, the latest job's state and time: "sent to ARCHIVE at 14:02"."""
    if not rows:
        return {}
    plan_of_study: dict[str, list[str]] = {}
    for row in rows:
        if row.study_uid:
            plan_of_study.setdefault(row.study_uid, []).append(row.plan_uid)
    plan_ids = [row.plan_uid for row in rows]
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for job in store.jobs_of_plans(db, plan_ids, sorted(plan_of_study)):
        owners = ([job.resource_id] if job.level == "plan"
                  else plan_of_study.get(job.study_uid or "", []))
        for plan_id in owners:
            if plan_id not in plan_ids:
                continue
            latest[(plan_id, job.target)] = {
                "target": job.target, "state": job.state, "at": job.updated_at,
                "waiting": job.last_status == "waiting"}
    answer: dict[str, list[dict[str, Any]]] = {}
    for (plan_id, _), entry in sorted(latest.items()):
        answer.setdefault(plan_id, []).append(entry)
    return answer

