"""GET /rt-gateway/destinations: each destination's routing state, as the page shows it: its
policy, window open or closed, what it carries now, its queue by priority and why that waits."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from orthanc_plugin.api.gateway_routes import ECHO_PREFIX
from orthanc_plugin.api.router import Request, Response, Router, json_response
from orthanc_plugin.db_engine import DbConnection, StateDatabase
from orthanc_plugin.destinations import admission
from orthanc_plugin.destinations.model import DestinationPolicy, window_state
from orthanc_plugin.jobs.queue import JobQueue
from orthanc_plugin.rules.priority import priority_word


def add_routes(router: Router, db: StateDatabase, queue: JobQueue, known: Callable[[], set[str]],
               policies: Callable[[], Mapping[str, DestinationPolicy]]) -> None:
    def get_destinations(_: Request) -> Response:
        return json_response(destination_states(db, queue, known, policies))

    router.add("GET", "destinations", get_destinations)


def destination_states(db: StateDatabase, queue: JobQueue, known: Callable[[], set[str]],
                       policies: Callable[[], Mapping[str, DestinationPolicy]]
                       ) -> list[dict[str, Any]]:
    """Each destination's routing state (also a section of GET stats)."""
    return [_state(db, queue, name, policies().get(name) or DestinationPolicy(name))
            for name in sorted(known())]


def _state(db: StateDatabase, queue: JobQueue, name: str, policy: DestinationPolicy) -> dict[str, Any]:
    window = window_state(policy.windows, policy.local(admission.CLOCK()))
    connection = db.connection()
    claims, claimed = queue.in_claims(connection, name)
    sent, sent_bytes, _ = _sent_last_minute(queue, connection, name)
    last_echo = db.get_meta(ECHO_PREFIX + name)
    return {
        "name": name, "policy": policy.summary(),
        "max_associations": policy.max_associations,
        "max_instances_per_minute": policy.max_instances_per_minute,
        "max_mb_per_minute": policy.max_mb_per_minute,
        "windows": [w.text for w in policy.windows],
        "failover": policy.failover or None,
        "failover_after_seconds": policy.failover_after_seconds if policy.failover else None,
        "window_open": window.open,
        "window_changes_at": window.changes_at.isoformat() if window.changes_at else None,
        "associations": claims, "instances_in_claims": claimed,
        "sent_last_minute": sent, "mb_last_minute": round(sent_bytes / 1e6, 1),
        "waiting_by_priority": {priority_word(p): n for p, n in
                                sorted(queue.waiting_by_priority(name).items(), reverse=True)},
        "held": queue.held_reason(name),
        "awaiting_approval": queue.awaiting_approval(name),
        "last_echo": json.loads(last_echo) if last_echo else None,
    }


def _sent_last_minute(queue: JobQueue, connection: DbConnection,
                      name: str) -> tuple[int, int, float | None]:
    return queue.sent_within(connection, name, admission.RATE_WINDOW_SECONDS)
