"""Webhooks: on the events a site names (plan complete, delivered, parked, quarantined, held for
approval, harvest done), a signed JSON POST to its receivers, retried with backoff, in order,
durable across restarts and never on the delivery path (tables.py: an outbox filled by triggers
in the event's own transaction; sender.py: one thread per receiver on the lead worker)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from orthanc_plugin.webhooks.model import read_settings
from orthanc_plugin.webhooks.routes import add_routes
from orthanc_plugin.webhooks.sender import EndpointSender, WebhookSenders
from orthanc_plugin.webhooks.store import WebhookStore
from orthanc_plugin.webhooks.transport import post

if TYPE_CHECKING:
    from orthanc_plugin.context import CapabilityContext


def install(ctx: CapabilityContext) -> None:
    endpoints = read_settings(ctx.config.section, ctx.config_dir)
    store = WebhookStore(ctx.db)
    # Always, even with no endpoint: a site that removes its webhooks stops the triggers.
    store.subscribe(endpoints)
    add_routes(ctx.router, store, endpoints)
    if not endpoints:
        return
    origin = store.origin()
    senders = WebhookSenders(
        [EndpointSender(endpoint, store, origin, post, ctx.host.log_warning)
         for endpoint in endpoints], store, ctx.host.log_warning)
    ctx.hooks.on_start.append(senders.start)
    ctx.hooks.on_stop.append(senders.stop)

    def gauges() -> dict[str, float]:
        pending, failing = store.pending_counts()
        return {"rtgw_webhook_deliveries_pending": float(pending),
                "rtgw_webhook_deliveries_failing": float(failing)}
    ctx.hooks.metrics.append(gauges)


__all__ = ["install"]
