"""RT metrics of a plan bundle from the index, for GET /rt-gateway/plans/{id}."""

from __future__ import annotations

from typing import Any

from orthanc_plugin.index.store import IndexStore


def plan_metrics(store: IndexStore, plan: dict[str, Any]) -> dict[str, Any]:
    by_modality: dict[str, list[str]] = {}
    for member in plan.get("objects", []):
        by_modality.setdefault(member["modality"], []).append(member["sop_instance_uid"])
    metrics: dict[str, Any] = store.plan_row(plan["id"]) or {}
    metrics["beams"] = store.beam_rows(plan["id"])
    return {
        "metrics": metrics,
        "rois": store.roi_rows(by_modality.get("RTSTRUCT", [])),
        "doses": store.dose_rows(by_modality.get("RTDOSE", [])),
    }


def max_dose_by_plan(store: IndexStore, plans: list[dict[str, Any]]) -> dict[str, float | None]:
    """Plan id -> the highest DoseMaxGy of the bundle's RTDOSE objects (None: no dose indexed)."""
    doses_of = {plan["id"]: [member["sop_instance_uid"] for member in plan.get("objects", [])
                             if member["modality"] == "RTDOSE"] for plan in plans}
    maxima = store.dose_maxima(sorted({uid for members in doses_of.values() for uid in members}))
    answer: dict[str, float | None] = {}
    for plan_id, members in doses_of.items():
        values = [maxima[uid] for uid in members if uid in maxima]
        answer[plan_id] = max(values) if values else None
    return answer


def plan_summaries(store: IndexStore, plan_ids: list[str]) -> dict[str, dict[str, Any]]:
    """Plan id -> intent, prescription, fractions, beams and total MU, for a worklist page."""
    return {plan_id: {"intent": summary.intent, "fractions": summary.fractions,
                      "prescription_gy": summary.prescription_gy, "beams": summary.beams,
                      "total_mu": summary.total_mu}
            for plan_id, summary in store.plan_summaries(plan_ids).items()}
