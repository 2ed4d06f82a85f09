"""Approval before sending: a rule's `hold:` action keeps the jobs it queues held until a signed-in
user approves them (per target) or rejects them with a comment; nobody deciding in time parks them
with the reason. Every decision is audited with the user and the time; on Orthanc 1.12+ the study
carries the label `rtgw-awaiting-approval` meanwhile."""

from __future__ import annotations

from typing import TYPE_CHECKING

from orthanc_plugin.approvals.action import Approvals
from orthanc_plugin.approvals.model import HoldAction
from orthanc_plugin.approvals.routes import add_routes
from orthanc_plugin.approvals.rule import plan_hold
from orthanc_plugin.approvals.store import ApprovalStore
from orthanc_plugin.periodic import PeriodicLoop

if TYPE_CHECKING:
    from orthanc_plugin.context import CapabilityContext

# Expiry is checked this often: a hold of days is not short by a couple of seconds.
TICK_SECONDS = 2.0


def install(ctx: CapabilityContext) -> None:
    store = ApprovalStore(ctx.db)
    approvals = Approvals(ctx.host, store, ctx.recorder, ctx.labels, ctx.wake_workers)
    ctx.registry.add_planner(HoldAction, plan_hold)
    ctx.registry.gates.append(approvals.gate)
    loop = PeriodicLoop("approvals", TICK_SECONDS, approvals.tick, ctx.host.log_error)
    ctx.hooks.on_start.append(loop.start)
    ctx.hooks.on_stop.append(loop.stop)
    ctx.hooks.metrics.append(lambda: {f"rtgw_approvals_{state}": float(count)
                                      for state, count in store.counts().items()})
    add_routes(ctx.router, approvals, store)


__all__ = ["install"]
