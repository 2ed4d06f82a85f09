"""REST: GET /rt-gateway/plans, GET /rt-gateway/plans/{id}, POST /rt-gateway/plans/send."""

from __future__ import annotations

import csv
import io
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from orthanc_plugin.api.router import ApiError, Request, Response, csv_response, json_response
from orthanc_plugin.csv_cells import safe_mapping
from orthanc_plugin.plans import store
from orthanc_plugin.plans.dvh_store import plan_dvh
from orthanc_plugin.plans.manual import send_plans
from orthanc_plugin.plans.queue_view import PER_PAGE_MAX, queue_page
from orthanc_plugin.plans.worklist import parse_query, worklist_page
from orthanc_plugin.rules.errors import RulesError
from orthanc_plugin.rules.priority import parse_priority

if TYPE_CHECKING:
    from orthanc_plugin.context import CapabilityContext

CSV_COLUMNS = ("id", "patient_id", "patient_name", "label", "name", "date", "complete",
               "missing", "calling_aet", "objects", "max_dose_gy")


def plan_json(bundle: store.PlanBundle) -> dict[str, Any]:
    return {
        "id": bundle.plan_uid,
        "plan_instance_id": bundle.plan_instance_id,
        "patient_id": bundle.patient_id,
        "patient_name": bundle.patient_name,
        "birth_date": bundle.patient_birth_date,
        "sex": bundle.patient_sex,
        "study_uid": bundle.study_uid,
        "label": bundle.plan_label,
        "name": bundle.plan_name,
        "date": bundle.plan_date,
        "complete": bundle.complete,
        "missing": bundle.missing,
        "calling_aet": bundle.calling_aet,
        "objects": bundle.members,
        "updated_at": bundle.updated_at,
        "received_at": bundle.first_seen_epoch,
    }


def _filtered(ctx: CapabilityContext, query: dict[str, str] | Any) -> list[store.PlanBundle]:
    since, complete = query.get("since"), query.get("complete")
    return store.filtered_bundles(
        ctx.db, label=query.get("label") or "", patient_id=query.get("patient") or "",
        study_uid=query.get("study") or "",
        plan_date_from=since.replace("-", "") if since else None,
        complete=complete == "true" if complete in ("true", "false") else None)


def _id_list(body: dict[str, Any], name: str, what: str) -> set[str] | None:
    """An optional list of strings in a request body: None when absent, 400 when malformed."""
    value = body.get(name)
    if value is None:
        return None
    if not (isinstance(value, list) and all(isinstance(item, str) for item in value)):
        raise ApiError(400, f"{name}: expected a list of {what}")
    return set(value)


def _files(ctx: CapabilityContext, members: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The plan's files per kind of object: how many, in how many series, received when."""
    received = store.received_at(ctx.db, [member["instance_id"] for member in members])
    kinds: dict[str, dict[str, Any]] = {}
    for member in members:
        entry = kinds.setdefault(member["modality"], {"modality": member["modality"], "count": 0,
                                                      "series": set(), "received": []})
        entry["count"] += 1
        entry["series"].add(member.get("series_uid", ""))
        if member["instance_id"] in received:
            entry["received"].append(received[member["instance_id"]])
    return [{"modality": entry["modality"], "count": entry["count"],
             "series": len(entry["series"]),
             "first_received": min(entry["received"], default=None),
             "last_received": max(entry["received"], default=None)} for entry in kinds.values()]


def _csv(plans: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for plan in plans:
        writer.writerow(safe_mapping({**plan, "missing": "; ".join(plan["missing"]),
                                      "objects": len(plan["objects"])}))
    return buffer.getvalue()


def add_routes(ctx: CapabilityContext) -> None:
    def list_plans(request: Request) -> Response:
        request.choice_param("complete", ("true", "false"))
        plans = [plan_json(row) for row in _filtered(ctx, request.query)]
        plans = _with_max_dose(ctx, plans, request.float_param("max_dose_gt"))
        if request.choice_param("format", ("json", "csv")) == "csv":
            return csv_response(_csv(plans))
        return json_response(plans)

    def get_plan(request: Request) -> Response:
        found = store.bundle(ctx.db, request.params["id"])
        if found is None:
            raise ApiError(404, f"no plan {request.params['id']!r}")
        plan = plan_json(found)
        plan["rule_runs"] = store.rule_runs(ctx.db, plan["id"])
        plan["files"] = _files(ctx, plan["objects"])
        plan["decisions"] = store.latest_decisions(ctx.db, plan["id"], plan["study_uid"] or "")
        if request.choice_param("dvh", ("true", "false"), "true") == "true":
            plan["dvh"] = plan_dvh(ctx, plan)
        for provider in DETAIL_PROVIDERS.get(ctx, ()):
            plan.update(provider(plan))
        if request.choice_param("format", ("json", "csv")) == "csv":
            return csv_response(_csv([plan]))
        return json_response(plan)

    def send(request: Request) -> Response:
        body = request.json()
        if not isinstance(body, dict):
            raise ApiError(400, "body: expected an object with plans and targets")
        plans, targets = body.get("plans"), body.get("targets")
        if not (isinstance(plans, list) and all(isinstance(p, str) for p in plans)
                and isinstance(targets, list) and all(isinstance(t, str) for t in targets)):
            raise ApiError(400, "body: expected {\"plans\": [plan ids], \"targets\": [names]}")
        confirmed = _id_list(body, "confirm_incomplete", "plan ids")
        again = _id_list(body, "confirm_again", "\"<plan id>:<target>\" strings")
        try:
            priority = parse_priority(body.get("priority", "normal"), "body.priority")
        except RulesError as error:
            raise ApiError(400, str(error)) from None
        return json_response({"jobs": send_plans(ctx, plans, targets, confirmed, again,
                                                 priority)})

    def worklist(request: Request) -> Response:
        query = parse_query(request.query, request.int_param)
        return json_response(worklist_page(ctx.db, query, lambda ids: _summaries(ctx, ids)))

    def queue(request: Request) -> Response:
        view = request.query.get("view") or "active"
        target = (request.query.get("target") or "")[:64]
        page = request.int_param("page", 1, minimum=1, maximum=1_000_000)
        per_page = max(1, request.int_param("per_page", 50, minimum=1, maximum=PER_PAGE_MAX))
        return json_response(queue_page(ctx.db, view, target, page, per_page,
                                        request.query.get("counts") or "all"))

    ctx.router.add("GET", "worklist", worklist)
    ctx.router.add("GET", "queue", queue)
    ctx.router.add("GET", "plans", list_plans)
    ctx.router.add("POST", "plans/send", send)
    ctx.router.add("GET", "plans/(?P<id>[^/]+)", get_plan)


def _with_max_dose(
    ctx: CapabilityContext, plans: list[dict[str, Any]], threshold: float | None
) -> list[dict[str, Any]]:
    """Adds max_dose_gy (the highest RTDOSE maximum, from the RT index) and applies max_dose_gt."""
    providers = MAX_DOSE_PROVIDERS.get(ctx, [])
    if not providers:
        if threshold is not None:
            raise ApiError(400, "max_dose_gt: needs the RT index (RtGateway.Index.Enabled)")
        return plans
    maxima = providers[0](plans)
    for plan in plans:
        plan["max_dose_gy"] = maxima.get(plan["id"])
    if threshold is None:
        return plans
    return [plan for plan in plans if plan["max_dose_gy"] is not None and plan["max_dose_gy"] > threshold]


# Other capabilities (the RT index) add fields to GET plans/{id}: plan -> extra fields.
DetailProvider = Callable[[dict[str, Any]], dict[str, Any]]
DETAIL_PROVIDERS: weakref.WeakKeyDictionary[CapabilityContext, list[DetailProvider]] = (
    weakref.WeakKeyDictionary())


def add_detail_provider(ctx: CapabilityContext, provider: DetailProvider) -> None:
    DETAIL_PROVIDERS.setdefault(ctx, []).append(provider)


# The RT index gives the max dose of listed plans: plans -> {plan id: Gy or None}.
MaxDoseProvider = Callable[[list[dict[str, Any]]], dict[str, float | None]]
MAX_DOSE_PROVIDERS: weakref.WeakKeyDictionary[CapabilityContext, list[MaxDoseProvider]] = (
    weakref.WeakKeyDictionary())


def add_max_dose_provider(ctx: CapabilityContext, provider: MaxDoseProvider) -> None:
    MAX_DOSE_PROVIDERS.setdefault(ctx, []).append(provider)


# The RT index summarises plans for the worklist: plan ids -> {id: intent, Rx, fractions, ...}.
SummaryProvider = Callable[[Sequence[str]], dict[str, dict[str, Any]]]
SUMMARY_PROVIDERS: weakref.WeakKeyDictionary[CapabilityContext, list[SummaryProvider]] = (
    weakref.WeakKeyDictionary())


def add_summary_provider(ctx: CapabilityContext, provider: SummaryProvider) -> None:
    SUMMARY_PROVIDERS.setdefault(ctx, []).append(provider)


def _summaries(ctx: CapabilityContext, plan_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    providers = SUMMARY_PROVIDERS.get(ctx, [])
    return providers[0](plan_ids) if providers else {}
