"""The rules file's `destinations:` section: each destination's caps and time windows.

    destinations:
      ARCHIVE:
        max_associations: 1            # at most one association at a time, across all workers
        max_instances_per_minute: 600
        max_mb_per_minute: 500         # soft: one claim may pass it by its own size
      RESEARCH:
        windows: ["Mo-Fr 19:00-06:00", "Sa-Su"]
        time_zone: Europe/Brussels     # the site's zone; the machine's when left out
      LINAC1:
        failover: LINAC2               # its jobs go to LINAC2 once they have failed to reach
        failover_after: 10m            # LINAC1 for 10 minutes, or parked; each job moves whole
      CD_ROBOT:
        transfer_syntax: implicit-little   # transform/syntax.py names; as-received by default
        coerce: {set: {InstitutionName: "Clinique Sud"}}  # transform/coerce.py

Read with the rules (reloadable); outside its windows a destination's jobs wait, shown as
waiting for the window, not as failing.
"""

from __future__ import annotations

from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from orthanc_plugin.destinations.model import (
    DestinationPolicy,
    WindowError,
    failover_cycle,
    parse_window,
)
from orthanc_plugin.rules.durations import duration_seconds
from orthanc_plugin.rules.errors import RulesError
from orthanc_plugin.rules.numbers import positive_number
from orthanc_plugin.rules.schema_actions import ActionContext, SectionParser
from orthanc_plugin.rules.wording import kind_of, one_of
from orthanc_plugin.transform.coerce import CoercionError, parse_coercion
from orthanc_plugin.transform.syntax import AS_RECEIVED, syntax_named
from orthanc_plugin.transform.syntax import NAMES as SYNTAX_NAMES

SECTION = "destinations"
KEYS = ("max_associations", "max_instances_per_minute", "max_mb_per_minute", "windows",
        "time_zone", "failover", "failover_after", "transfer_syntax", "coerce")


def parse_destinations(raw: Any, path: str,
                       context: ActionContext) -> dict[str, DestinationPolicy]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise RulesError(path, f"expected a mapping of destination names, got {kind_of(raw)}")
    policies = {}
    for name, settings in raw.items():
        here = f"{path}.{name}"
        known = context.known_targets
        if known is not None and name not in known:
            raise RulesError(here, f"unknown destination '{name}' "
                                   f"(known: {one_of(known) if known else 'none'})")
        policy = parse_destination(str(name), settings, here)
        if policy.failover:
            at = f"{here}.failover"
            if policy.failover == name:
                raise RulesError(at, "a destination cannot fail over to itself")
            if known is not None and policy.failover not in known:
                raise RulesError(at, f"unknown destination '{policy.failover}' "
                                     f"(known: {one_of(known) if known else 'none'})")
        policies[str(name)] = policy
    cycle = failover_cycle(policies)
    if cycle:
        raise RulesError(f"{path}.{cycle[0]}.failover",
                         f"failovers go round in a circle ({' -> '.join(cycle)})")
    return policies


def parse_destination(name: str, raw: Any, path: str) -> DestinationPolicy:
    if not isinstance(raw, dict):
        raise RulesError(path, f"expected a mapping such as {{max_associations: 1}}, "
                               f"got {kind_of(raw)}")
    for key in raw:
        if key not in KEYS:
            raise RulesError(f"{path}.{key}", f"unknown option (expected one of: {one_of(KEYS)})")
    windows_raw = raw.get("windows", [])
    if isinstance(windows_raw, str):
        windows_raw = [windows_raw]
    if not isinstance(windows_raw, list):
        raise RulesError(f"{path}.windows", f"expected a list of windows, got {kind_of(windows_raw)}")
    windows = []
    for index, text in enumerate(windows_raw):
        try:
            windows.append(parse_window(text))
        except WindowError as error:
            raise RulesError(f"{path}.windows[{index}]", str(error)) from None
    zone_name = raw.get("time_zone")
    zone = None
    if zone_name is not None:
        try:
            zone = ZoneInfo(str(zone_name))
        except (ZoneInfoNotFoundError, ValueError):
            raise RulesError(f"{path}.time_zone", f"unknown time zone {kind_of(zone_name)} "
                                                  "(expected a name such as Europe/Brussels)") from None
    mb = positive_number(raw, "max_mb_per_minute", path)
    failover = raw.get("failover", "")
    if not isinstance(failover, str):
        raise RulesError(f"{path}.failover", f"expected a destination name, got {kind_of(failover)}")
    if "failover_after" in raw and not failover:
        raise RulesError(f"{path}.failover_after", "failover_after needs a failover destination")
    after = duration_seconds(raw.get("failover_after", "10m"), f"{path}.failover_after")
    syntax_name = raw.get("transfer_syntax", AS_RECEIVED)
    if syntax_name not in SYNTAX_NAMES:
        raise RulesError(f"{path}.transfer_syntax", f"unknown transfer syntax {kind_of(syntax_name)} "
                                                    f"(expected one of: {one_of(SYNTAX_NAMES)})")
    syntax = syntax_named(syntax_name)
    coercion = None
    if "coerce" in raw:
        try:
            coercion = parse_coercion(raw["coerce"], f"{path}.coerce")
        except CoercionError as error:
            where, _, why = str(error).partition(": ")
            raise RulesError(where, why) from None
    return DestinationPolicy(
        name=name,
        max_associations=_whole(raw, "max_associations", path),
        max_instances_per_minute=_whole(raw, "max_instances_per_minute", path),
        max_mb_per_minute=mb,
        windows=tuple(windows), time_zone=zone, zone_name=str(zone_name or ""),
        failover=failover.strip(), failover_after_seconds=after,
        transfer_syntax=syntax_name, coercion=coercion,
        transfer_syntax_title=syntax.title if syntax else "",
    )


def _whole(raw: dict[str, Any], key: str, path: str) -> int | None:
    value = positive_number(raw, key, path, whole=True)
    return None if value is None else int(value)


# What this capability adds to the rules' vocabulary (capabilities.vocabulary()).
SECTIONS: dict[str, SectionParser] = {SECTION: parse_destinations}
