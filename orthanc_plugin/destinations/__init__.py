"""Destination policies: caps (associations at a time, instances or MB per minute), time windows
and failover per destination, held across every worker; and the routing state the page shows."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from orthanc_plugin.destinations.admission import DestinationAdmission
from orthanc_plugin.destinations.failover import Failover
from orthanc_plugin.destinations.model import DestinationPolicy
from orthanc_plugin.destinations.routes import add_routes, destination_states
from orthanc_plugin.destinations.rule import SECTION
from orthanc_plugin.periodic import PeriodicLoop

if TYPE_CHECKING:
    from orthanc_plugin.context import CapabilityContext


# How often waiting jobs are looked at for failover: small beside any failover_after.
FAILOVER_TICK_SECONDS = 2.0


def install(ctx: CapabilityContext) -> None:
    def policies() -> Mapping[str, DestinationPolicy]:
        value = ctx.rules().sections.get(SECTION)
        return value if isinstance(value, dict) else {}

    ctx.hooks.claim_admission.append(DestinationAdmission(ctx.queue, policies))
    # A changed policy (a window opened, a cap raised) applies to the jobs it held at once.
    ctx.hooks.on_rules_loaded.append(lambda _: ctx.queue.look_again())
    failover = Failover(ctx.queue, ctx.recorder, policies, ctx.wake_workers)
    loop = PeriodicLoop("failover", FAILOVER_TICK_SECONDS, failover.tick, ctx.host.log_error)
    ctx.hooks.on_start.append(loop.start)
    ctx.hooks.on_stop.append(loop.stop)
    add_routes(ctx.router, ctx.db, ctx.queue, ctx.known_targets, policies)
    ctx.hooks.stats.append(lambda: {"destinations": destination_states(
        ctx.db, ctx.queue, ctx.known_targets, policies)})


__all__ = ["install"]
