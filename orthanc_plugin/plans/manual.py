"""Manual send: the "select plans, select nodes, Send" workflow, through the durable queue."""

from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Any

from orthanc_plugin.api.router import ApiError

# The forwarding executor sends a manual plan, in the bundle's order.
from orthanc_plugin.forwarding.rule import JOB_ACTION
from orthanc_plugin.plans import store
from orthanc_plugin.plans.tracker import member_rows, plan_job_spec
from orthanc_plugin.rules.groups import SECTION as GROUPS
from orthanc_plugin.rules.groups import expand
from orthanc_plugin.rules.priority import Priority

if TYPE_CHECKING:
    from orthanc_plugin.context import CapabilityContext

MANUAL_TRIGGER = "manual"


def send_plans(
    ctx: CapabilityContext, plan_ids: Sequence[str], targets: Sequence[str],
    confirmed_incomplete: Collection[str] | None = None,
    confirmed_again: Collection[str] | None = None,
    priority: int = Priority.NORMAL,
) -> list[dict[str, Any]]:
    """One job per (plan, target); each request is its own "rule" so pressing Send again sends
    again, while a replay of the same request never sends twice."""
    if not plan_ids or not targets:
        raise ApiError(400, "body: expected {\"plans\": [plan ids], \"targets\": [modality names]}")
    groups = ctx.rules().sections.get(GROUPS) or {}
    targets = expand(targets, groups)   # a group sends to each of its destinations
    known = ctx.known_targets()
    unknown = [target for target in targets if target not in known]
    if unknown:
        raise ApiError(400, f"targets: unknown {', '.join(map(str, unknown))} "
                            f"(known: {', '.join(sorted(known)) or 'none'})")
    bundles: dict[str, store.PlanBundle] = {}
    for plan_id in plan_ids:
        found = store.bundle(ctx.db, plan_id)
        if found is None:
            raise ApiError(404, f"no plan {plan_id!r}")
        bundles[plan_id] = found
    if confirmed_incomplete is not None:
        # The page asks for an incomplete plan to be ticked on its own: one not ticked is refused.
        unconfirmed = [f"{bundle.plan_label or plan_id} ({bundle.patient_name or ''})"
                       for plan_id, bundle in bundles.items()
                       if not bundle.complete and plan_id not in confirmed_incomplete]
        if unconfirmed:
            raise ApiError(409, "incomplete plan(s) not confirmed for sending: "
                                + ", ".join(unconfirmed))
    if confirmed_again is not None:
        # The page asks for a plan that already went to a target to be ticked again, by
        # "<plan id>:<target>": one not ticked is refused, before anything is queued.
        again = [f"{bundle.plan_label or plan_id} to {target}"
                 for plan_id, bundle in bundles.items() for target in targets
                 if f"{plan_id}:{target}" not in confirmed_again
                 and store.sent_or_on_its_way(ctx.db, bundle.plan_uid, bundle.study_uid or "",
                                              target)]
        if again:
            raise ApiError(409, "already sent or on its way, not confirmed for sending again: "
                                + ", ".join(again))
    request = f"manual-send {uuid.uuid4().hex[:12]}"
    answer: list[dict[str, Any]] = []
    with ctx.db.transaction() as connection:
        for plan_id, bundle in bundles.items():
            ordered = [row.instance_id for row in member_rows(connection, bundle)]
            for target in targets:
                spec = plan_job_spec(request, MANUAL_TRIGGER, JOB_ACTION, target, bundle,
                                     priority)
                job_id, count = ctx.queue.enqueue(connection, spec, ordered)
                missing = bundle.missing
                ctx.recorder.event(
                    "plan-manual-send", status="queued" if job_id else "nothing-to-send",
                    rule=request, target=target, job_id=job_id, resource_id=plan_id,
                    patient_id=bundle.patient_id or "", study_uid=bundle.study_uid or "",
                    detail=f"plan {bundle.plan_label!r}: {count} instance(s)"
                    + (f"; incomplete, missing: {'; '.join(missing)}" if missing else ""),
                    connection=connection,
                )
                answer.append({"id": job_id, "plan": plan_id, "label": bundle.plan_label,
                               "target": target, "instances": count,
                               "complete": bundle.complete, "missing": missing})
    ctx.wake_workers()
    return answer

