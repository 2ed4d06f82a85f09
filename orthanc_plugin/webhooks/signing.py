"""The signature a receiver checks: HMAC-SHA256 of "<unix seconds>.<body>" with the shared secret.

The timestamp is inside what is signed, so a captured request replayed later carries a stale
timestamp that cannot be changed without the secret; the receiver rejects it (older than
REPLAY_WINDOW_SECONDS) and deduplicates retries by the event id."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

TIMESTAMP_HEADER = "X-RTGW-Timestamp"
SIGNATURE_HEADER = "X-RTGW-Signature"
EVENT_ID_HEADER = "X-RTGW-Event-Id"
EVENT_HEADER = "X-RTGW-Event"
REPLAY_WINDOW_SECONDS = 300


def signature(secret: bytes, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def signed_headers(secret: bytes, timestamp: int, body: bytes, event_id: str,
                   event: str) -> dict[str, str]:
    """The headers of one attempt: signed afresh each time, so a retry has a fresh timestamp."""
    return {
        "Content-Type": "application/json",
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: signature(secret, timestamp, body),
        EVENT_ID_HEADER: event_id,
        EVENT_HEADER: event,
        "User-Agent": "orthanc-rt-gateway-webhooks",
    }


def verify(secret: bytes, headers: Mapping[str, str], body: bytes, now: float,
           window: float = REPLAY_WINDOW_SECONDS) -> str:
    """What a receiver does (the README's recipe, and the tests' receiver): '' when the request
    is authentic and fresh, else why not. Header names are matched without regard to case."""
    lower = {name.lower(): value for name, value in headers.items()}
    stamp = lower.get(TIMESTAMP_HEADER.lower(), "")
    given = lower.get(SIGNATURE_HEADER.lower(), "")
    if not stamp.isdigit():
        return "no timestamp"
    if abs(now - int(stamp)) > window:
        return "timestamp outside the replay window"
    if not hmac.compare_digest(given, signature(secret, int(stamp), body)):
        return "bad signature"
    return ""
