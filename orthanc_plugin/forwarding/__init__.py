"""Forwarding: ordered C-STORE through Orthanc's own SCU, per-instance truth, in-flight verification."""

from __future__ import annotations

from typing import TYPE_CHECKING

from orthanc_plugin.forwarding.action import Forwarder
from orthanc_plugin.forwarding.routes import add_routes
from orthanc_plugin.forwarding.rule import JOB_ACTION, plan_forward, verify_settings
from orthanc_plugin.forwarding.verify import InFlightVerifier
from orthanc_plugin.rules import ForwardAction

if TYPE_CHECKING:
    from orthanc_plugin.app import Gateway


def install(gateway: Gateway) -> None:
    verify = verify_settings(gateway.config.section)
    default = verify.get("*", "c-find")
    forwarder = Forwarder(
        gateway.host, gateway.queue, gateway.recorder, gateway.file_sizes,
        gateway.config.max_instances_per_association,
        InFlightVerifier(gateway.host, gateway.instance_keys,
                         lambda target: verify.get(target, default)),
    )
    forwarder.after_settle = gateway.refresh_queue_gauges
    forwarder.stopping = gateway.stopping
    gateway.registry.add_planner(ForwardAction, plan_forward)
    gateway.registry.add_executor(JOB_ACTION, forwarder)
    add_routes(gateway.router, gateway.db)


__all__ = ["install"]
