"""Clean-up of Orthanc's storage: studies the gateway has finished with leave, by age or when the
storage passes a threshold, oldest first, never while anything still needs them; and the
`delete_after: forwarded` action for pure relays."""

from __future__ import annotations

from typing import TYPE_CHECKING

from orthanc_plugin.cleanup.action import DeleteAfterForwarded, StorageCleanup
from orthanc_plugin.cleanup.model import CleanupPolicy
from orthanc_plugin.cleanup.routes import add_routes
from orthanc_plugin.cleanup.rule import JOB_ACTION, SECTION, DeleteAfterAction, plan_delete_after
from orthanc_plugin.cleanup.store import CleanupStore
from orthanc_plugin.periodic import PeriodicLoop

if TYPE_CHECKING:
    from orthanc_plugin.context import CapabilityContext

# The loop only looks whether a round is due (the policy's check_every); rounds are rarer.
TICK_SECONDS = 2.0


def install(ctx: CapabilityContext) -> None:
    store = CleanupStore(ctx.db, (JOB_ACTION,))

    def policy() -> CleanupPolicy | None:
        value = ctx.rules().sections.get(SECTION)
        return value if isinstance(value, CleanupPolicy) else None

    cleanup = StorageCleanup(ctx.host, store, ctx.recorder, ctx.config.storage_directory,
                             ctx.host.log_warning, policy)
    loop = PeriodicLoop("cleanup", TICK_SECONDS, cleanup.tick, ctx.host.log_error)
    ctx.hooks.on_start.append(loop.start)
    ctx.hooks.on_stop.append(loop.stop)
    ctx.registry.add_planner(DeleteAfterAction, plan_delete_after)
    ctx.registry.add_executor(JOB_ACTION, DeleteAfterForwarded(ctx.host, ctx.queue, store,
                                                               ctx.recorder))
    add_routes(ctx.router, cleanup)


__all__ = ["install"]
