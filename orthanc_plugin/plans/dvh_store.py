"""DVHs of complete bundles, computed on first request from the files in Orthanc, then kept."""

from __future__ import annotations

import hashlib
import json
from io import BytesIO
from typing import TYPE_CHECKING, Any

from pydicom import dcmread

from orthanc_plugin.audit.clock import now_iso
from orthanc_plugin.db_engine import StateDatabase
from orthanc_plugin.plans.dvh import (
    DEFAULT_END_CAPS,
    DEFAULT_INNER_CONTOURS,
    DEFAULT_INTERPOLATION,
)
from orthanc_plugin.plans.dvh_source import DvhInputError, bundle_dvhs
from orthanc_plugin.ports import HostError

# Part of the cache key: a DVH cached by an earlier method is computed again.
METHOD_VERSION = 5  # 5: structures' display colours; 4: inner contours named in the method;
# small structures' slab volume

if TYPE_CHECKING:
    from orthanc_plugin.context import CapabilityContext


def plan_dvh(ctx: CapabilityContext, plan: dict[str, Any]) -> dict[str, Any] | None:
    """The DVH as soon as structure set, dose and plan are stored (a DVH needs no image); the
    cached one while the members stay the same. The answer says whether images are missing."""
    members = {m["modality"]: m for m in plan["objects"] if m["modality"] != "CT"}
    if "RTSTRUCT" not in members or "RTDOSE" not in members or not plan.get("plan_instance_id"):
        return None
    end_caps = str(ctx.section("Plans").get("DvhEndCaps", DEFAULT_END_CAPS))
    interpolation = str(ctx.section("Plans").get("DvhInterpolation", DEFAULT_INTERPOLATION))
    inner = str(ctx.section("Plans").get("DvhInnerContours", DEFAULT_INNER_CONTOURS))
    key = hashlib.sha256(json.dumps([plan["objects"], end_caps, interpolation, inner,
                                     METHOD_VERSION], sort_keys=True).encode()).hexdigest()
    cached = cached_dvh(ctx.db, plan["id"], key)
    if cached is not None:
        return cached

    def read(instance_id: str, pixels: bool = False) -> Any:
        data = ctx.host.get_bytes(f"/instances/{instance_id}/file")
        return dcmread(BytesIO(data), stop_before_pixels=not pixels, force=True)

    try:
        # Whole RT objects read on a page's request: they wait while a modality sends.
        with ctx.gate.background():
            doses = [read(m["instance_id"], pixels=True) for m in plan["objects"]
                     if m["modality"] == "RTDOSE"]
            structures = read(members["RTSTRUCT"]["instance_id"])
            plan_object = read(plan["plan_instance_id"])
        result = bundle_dvhs(structures, doses, plan_object, end_caps=end_caps,
                             interpolation=interpolation, inner_contours=inner)
    except MemoryError:
        raise
    except (HostError, DvhInputError) as error:
        return {"error": f"no DVH: {type(error).__name__}: {error}"}
    except Exception as error:  # a malformed object is this plan's problem, never the route's
        return {"error": f"no DVH: malformed RT object ({type(error).__name__}: {error})"}
    result["dose_sop_instance_uid"] = members["RTDOSE"]["sop_instance_uid"]
    result["complete"] = bool(plan["complete"])
    result["missing"] = list(plan.get("missing") or [])
    try:
        # NaN and Infinity are not JSON: a page's JSON.parse would refuse the whole answer.
        text = json.dumps(result, allow_nan=False)
    except ValueError as error:
        return {"error": f"no DVH: a value that is not a number ({error})"}
    save_dvh(ctx.db, plan["id"], key, text)
    return result


def cached_dvh(db: StateDatabase, plan_uid: str, key: str) -> dict[str, Any] | None:
    """The plan's DVH kept for these members and this method (`key`), None for none."""
    cached = db.query("SELECT members_sha256, dvh_json FROM plan_dvh WHERE plan_uid=?",
                      (plan_uid,))
    if cached and cached[0]["members_sha256"] == key:
        return dict(json.loads(cached[0]["dvh_json"]))
    return None


def save_dvh(db: StateDatabase, plan_uid: str, key: str, text: str) -> None:
    """Keeps the plan's DVH (JSON text) for these members and method, in place of any other."""
    with db.transaction() as connection:
        connection.execute(
            "INSERT INTO plan_dvh(plan_uid, members_sha256, dvh_json, computed_at)"
            " VALUES(?,?,?,?) ON CONFLICT(plan_uid) DO UPDATE SET"
            " members_sha256=excluded.members_sha256, dvh_json=excluded.dvh_json,"
            " computed_at=excluded.computed_at", (plan_uid, key, text, now_iso()))
