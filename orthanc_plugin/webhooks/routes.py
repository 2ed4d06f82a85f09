"""GET /rt-gateway/webhooks: per receiver, what was delivered, what waits, and why it fails.

URLs are shown without their query string (some receivers take a token there) and secrets never."""

from __future__ import annotations

from collections.abc import Sequence

from orthanc_plugin.api.router import Request, Response, Router, json_response
from orthanc_plugin.webhooks.model import EVENTS, Endpoint, redacted
from orthanc_plugin.webhooks.store import WebhookStore


def add_routes(router: Router, store: WebhookStore, endpoints: Sequence[Endpoint]) -> None:
    def get_state(request: Request) -> Response:
        counts = store.summary()
        empty = {"delivered": 0, "pending": 0, "failing": 0, "last_delivered_at": None}
        listed = []
        for endpoint in endpoints:
            listed.append({"url": redacted(endpoint.url), "configured": True,
                           "events": sorted(endpoint.events), "targets": sorted(endpoint.targets),
                           "include_patient_data": endpoint.include_patient_data,
                           **counts.pop(endpoint.url, empty)})
        # Receivers taken out of the configuration with events still waiting for them.
        for url, state in sorted(counts.items()):
            listed.append({"url": redacted(url), "configured": False, **state})
        return json_response({"webhooks": listed, "events": EVENTS})

    router.add("GET", "webhooks", get_state)
