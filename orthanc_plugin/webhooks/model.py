"""Webhooks' settings and retry schedule: pure values, read from RtGateway.Webhooks.

    "Webhooks": [{"Url": "https://ops.example.org/rtgw", "SecretFile": "webhook.secret",
                  "Events": ["delivered", "parked"], "Targets": ["LINAC"],
                  "IncludePatientData": false, "TimeoutSeconds": 10}]
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from orthanc_plugin.config import SECTION, ConfigError

KEY = "Webhooks"

# The event names a site can subscribe to, each with where the gateway records it today (tables.py
# turns each into an outbox row in the same transaction).
EVENTS: dict[str, str] = {
    "plan-complete": "a plan bundle (CT, RTSTRUCT, RTPLAN, RTDOSE) became complete",
    "delivered": "a transfer to a destination succeeded",
    "parked": "a job was parked (its retries exhausted, refused, poison or an approval expired)",
    "quarantined": "an instance was quarantined",
    "held-for-approval": "a rule's jobs are held until someone approves them",
    "harvest-done": "a harvest of a remote PACS finished",
}
# Events that name a destination: a subscription's Targets narrows only these.
TARGETED = frozenset({"delivered", "parked"})

# The retry schedule: 2 s, doubling, never more than 5 min apart; a receiver that is down for
# a day is tried every 5 min and gets everything, in order, once it answers.
FIRST_DELAY_SECONDS = 2.0
LONGEST_DELAY_SECONDS = 300.0
DEFAULT_TIMEOUT_SECONDS = 10.0
LONGEST_TIMEOUT_SECONDS = 120.0
# An HMAC key shorter than this can be guessed offline from one signed body.
SHORTEST_SECRET = 16
# Plain http only to this machine (a local relay, a test receiver): anywhere else the payload
# and its signature would cross the network readable (the HMAC proves who sent it, it hides
# nothing) and an on-path attacker could hold back events unnoticed.
LOOPBACK_NAMES = frozenset({"localhost", "ip6-localhost"})


@dataclass(frozen=True)
class Endpoint:
    url: str
    secret: bytes = b""
    events: frozenset[str] = frozenset()
    targets: frozenset[str] = frozenset()       # empty: every destination
    include_patient_data: bool = False
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS

    def subscriptions(self) -> list[tuple[str, str]]:
        """(event, target) rows of webhook_subscriptions; target '' matches any destination."""
        rows: list[tuple[str, str]] = []
        for event in sorted(self.events):
            if event in TARGETED and self.targets:
                rows.extend((event, target) for target in sorted(self.targets))
            else:
                rows.append((event, ""))
        return rows


@dataclass(frozen=True)
class OutboxEvent:
    """An event of webhook_outbox as a receiver is sent it (webhooks/payload.py); the patient
    and study are the job's when the event was written before its instance was described."""

    id: int
    event: str
    at: str
    status: str | None
    rule: str | None
    target: str | None
    job_id: int | None
    action: str | None
    resource_id: str | None
    patient_id: str | None
    study_uid: str | None
    detail: str | None
    instances: int | None
    plan_uid: str | None
    plan_label: str | None


def backoff_seconds(failed_attempts: int) -> float:
    """The wait before the next attempt after `failed_attempts` failures in a row (1 -> 2 s)."""
    if failed_attempts <= 0:
        return 0.0
    # The exponent is capped first: 2.0 ** 10_000 would overflow a float.
    return min(FIRST_DELAY_SECONDS * 2.0 ** min(failed_attempts - 1, 30), LONGEST_DELAY_SECONDS)


def is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def redacted(url: str) -> str:
    """The URL without its query and credentials, for pages and logs: some receivers put a
    token in the query string."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def read_settings(section: dict[str, Any], config_dir: Path,
                  read_file: Callable[[Path], bytes] = Path.read_bytes) -> list[Endpoint]:
    """The configured endpoints, or ConfigError naming the setting and the reason."""
    value = section.get(KEY)
    if value is None:
        return []
    if not isinstance(value, list):
        raise ConfigError(f"{SECTION}.{KEY}: expected a list of endpoints")
    endpoints: list[Endpoint] = []
    seen: set[str] = set()
    for index, entry in enumerate(value):
        path = f"{SECTION}.{KEY}[{index}]"
        endpoint = _endpoint(entry, path, config_dir, read_file)
        if endpoint.url in seen:
            raise ConfigError(f"{path}.Url: {redacted(endpoint.url)} is listed twice; put its "
                              "events in one entry")
        seen.add(endpoint.url)
        endpoints.append(endpoint)
    return endpoints


_KNOWN = {"Url", "Secret", "SecretFile", "Events", "Targets", "IncludePatientData",
          "TimeoutSeconds"}


def _endpoint(entry: Any, path: str, config_dir: Path,
              read_file: Callable[[Path], bytes]) -> Endpoint:
    if not isinstance(entry, dict):
        raise ConfigError(f"{path}: expected an object with Url, Secret or SecretFile, Events")
    unknown = sorted(set(entry) - _KNOWN)
    if unknown:  # a misspelt IncludePatientData must not silently mean the default
        raise ConfigError(f"{path}: unknown setting {unknown[0]!r} (known: {', '.join(sorted(_KNOWN))})")
    url = _url(entry.get("Url"), f"{path}.Url")
    return Endpoint(
        url=url,
        secret=_secret(entry, path, config_dir, read_file),
        events=_events(entry.get("Events"), f"{path}.Events"),
        targets=_targets(entry.get("Targets"), f"{path}.Targets"),
        include_patient_data=_flag(entry.get("IncludePatientData", False),
                                   f"{path}.IncludePatientData"),
        timeout_seconds=_timeout(entry.get("TimeoutSeconds", DEFAULT_TIMEOUT_SECONDS),
                                 f"{path}.TimeoutSeconds"),
    )


def _url(value: Any, path: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{path}: expected the receiver's URL")
    url = value.strip()
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ConfigError(f"{path}: expected an https:// URL with a host, got {redacted(url)!r}")
    if parts.username or parts.password:
        raise ConfigError(f"{path}: no user or password in the URL; the signature authenticates")
    try:
        parts.port  # noqa: B018 - raises on a port out of range
    except ValueError as error:
        raise ConfigError(f"{path}: {error}") from None
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        raise ConfigError(f"{path}: http:// is allowed only to this machine (localhost, "
                          f"127.0.0.1, ::1); use https:// for {parts.hostname}, or the events "
                          "cross the network readable")
    return url


def _secret(entry: dict[str, Any], path: str, config_dir: Path,
            read_file: Callable[[Path], bytes]) -> bytes:
    inline, file = entry.get("Secret"), entry.get("SecretFile")
    if (inline is None) == (file is None):
        raise ConfigError(f"{path}: set exactly one of Secret or SecretFile (the shared secret "
                          "the receiver checks the signature with)")
    if inline is not None:
        if not isinstance(inline, str):
            raise ConfigError(f"{path}.Secret: expected text")
        secret = inline.encode()
        where = f"{path}.Secret"
    else:
        if not isinstance(file, str) or not file.strip():
            raise ConfigError(f"{path}.SecretFile: expected a file path")
        location = Path(file)
        if not location.is_absolute():
            location = config_dir / location
        try:
            secret = read_file(location).strip()
        except OSError as error:
            raise ConfigError(f"{path}.SecretFile: cannot read {location}: "
                              f"{error.strerror or error}") from None
        where = f"{path}.SecretFile ({location})"
    if len(secret) < SHORTEST_SECRET:
        raise ConfigError(f"{where}: the secret must be at least {SHORTEST_SECRET} characters")
    return secret


def _events(value: Any, path: str) -> frozenset[str]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{path}: expected a non-empty list of event names "
                          f"({', '.join(EVENTS)}) or [\"*\"]")
    if value == ["*"]:
        return frozenset(EVENTS)
    for name in value:
        if name not in EVENTS:
            raise ConfigError(f"{path}: unknown event {name!r}; known: {', '.join(EVENTS)}")
    return frozenset(value)


def _targets(value: Any, path: str) -> frozenset[str]:
    if value is None:
        return frozenset()
    if not isinstance(value, list) or not value or not all(
            isinstance(v, str) and v.strip() for v in value):
        raise ConfigError(f"{path}: expected a non-empty list of destination names "
                          "(DicomModalities); leave it out for every destination")
    return frozenset(v.strip() for v in value)


def _flag(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{path}: expected true or false")
    return value


def _timeout(value: Any, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not (
            0 < value <= LONGEST_TIMEOUT_SECONDS):
        raise ConfigError(f"{path}: expected seconds, more than 0 and at most "
                          f"{LONGEST_TIMEOUT_SECONDS:g}")
    return float(value)
