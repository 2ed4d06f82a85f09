"""RT metrics of a plan bundle from the index, for GET /rt-gateway/plans/{id}."""

from __future__ import annotations

from typing import Any

from orthanc_plugin.index.store import IndexStore


def plan_metrics(store: IndexStore, plan: dict[str, Any]) -> dict[str, Any]:
    by_modality: dict[str, list[str]] = {}
    for member in plan.get("objects", []):
        by_modality.setdefault(member["modality"], []).append(member["sop_instance_uid"])

    def rows(sql: str, uids: list[str]) -> list[dict[str, Any]]:
        if not uids:
            return []
        marks = ",".join("?" * len(uids))
        return [dict(row) for row in store.db.query(sql.format(marks=marks), uids)]

    plans = rows("SELECT * FROM RTplans WHERE SOPInstanc IN ({marks})", [plan["id"]])
    metrics: dict[str, Any] = dict(plans[0]) if plans else {}
    metrics["beams"] = rows("SELECT * FROM RTbeams WHERE SOPInstanc IN ({marks}) ORDER BY BeamNumber",
                            [plan["id"]])
    return {
        "metrics": metrics,
        "rois": rows("SELECT * FROM RTrois WHERE SOPInstanc IN ({marks}) ORDER BY ROINumber",
                     by_modality.get("RTSTRUCT", [])),
        "doses": rows("SELECT * FROM RTdoses WHERE SOPInstanc IN ({marks})",
                      by_modality.get("RTDOSE", [])),
    }


def max_dose_by_plan(store: IndexStore, plans: list[dict[str, Any]]) -> dict[str, float | None]:
    """Plan id -> the highest DoseMaxGy of the bundle's RTDOSE objects (None: no dose indexed)."""
    doses_of = {plan["id"]: [member["sop_instance_uid"] for member in plan.get("objects", [])
                             if member["modality"] == "RTDOSE"] for plan in plans}
    uids = sorted({uid for members in doses_of.values() for uid in members})
    maxima: dict[str, float] = {}
    for start in range(0, len(uids), 500):   # SQLite caps the number of parameters
        chunk = uids[start:start + 500]
        marks = ",".join("?" * len(chunk))
        for row in store.db.query(
                f"SELECT SOPInstanc, DoseMaxGy FROM RTdoses WHERE SOPInstanc IN ({marks})", chunk):
            if row["DoseMaxGy"] is not None:
                maxima[row["SOPInstanc"]] = float(row["DoseMaxGy"])
    answer: dict[str, float | None] = {}
    for plan_id, members in doses_of.items():
        values = [maxima[uid] for uid in members if uid in maxima]
        answer[plan_id] = max(values) if values else None
    return answer


def plan_summaries(store: IndexStore, plan_ids: list[str]) -> dict[str, dict[str, Any]]:
    """Plan id -> intent, prescription, fractions, beams and total MU, for a worklist page."""
    answer: dict[str, dict[str, Any]] = {}
    for start in range(0, len(plan_ids), 500):   # SQLite caps the number of parameters
        chunk = plan_ids[start:start + 500]
        marks = ",".join("?" * len(chunk))
        for row in store.db.query(
                "SELECT SOPInstanc, PlanIntent, Fractions, PrescriptionGy, BeamCount, TotalMU "
                f"FROM RTplans WHERE SOPInstanc IN ({marks})", chunk):
            answer[row["SOPInstanc"]] = {
                "intent": row["PlanIntent"], "fractions": row["Fractions"],
                "prescription_gy": row["PrescriptionGy"], "beams": row["BeamCount"],
                "total_mu": row["TotalMU"]}
    return answer
