"""Forwarding: ordered C-STORE through Orthanc's own SCU, per-instance truth, in-flight verification."""

from __future__ import annotations

from typing import TYPE_CHECKING

from orthanc_plugin.forwarding.action import Forwarder
from orthanc_plugin.forwarding.routes import add_routes
from orthanc_plugin.forwarding.rule import JOB_ACTION, plan_forward, verify_settings
from orthanc_plugin.forwarding.verify import InFlightVerifier
from orthanc_plugin.rules import ForwardAction

if TYPE_CHECKING:
    from orthanc_plugin.context import CapabilityContext


def install(ctx: CapabilityContext) -> None:
    verify = verify_settings(ctx.config.section)
    default = verify.get("*", "c-find")
    forwarder = Forwarder(
        ctx.host, ctx.queue, ctx.recorder, ctx.file_sizes,
        ctx.config.max_instances_per_association,
        InFlightVerifier(ctx.host, ctx.instance_keys,
                         lambda target: verify.get(target, default)),
    )
    forwarder.after_settle = ctx.refresh_queue_gauges
    forwarder.stopping = ctx.stopping
    ctx.registry.add_planner(ForwardAction, plan_forward)
    ctx.registry.add_executor(JOB_ACTION, forwarder)
    add_routes(ctx.router, ctx.db)


__all__ = ["install"]
