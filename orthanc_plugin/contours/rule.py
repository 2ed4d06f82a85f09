"""The `overlay` rule action: options, parser (declared in ACTIONS) and planner.

    - overlay: {ignore: [skull, "*body*"], planes: [axial, coronal],
                per_roi: false, burn_in_outline: false, series_description: Contours,
                series_number: 901, wait_for_images: 10m}
    - forward: [VIEWER]          # sends the overlay series, never the originals

An overlay is a derivation like anonymize (rules/derivations.py): the forwards written after it
send what it made. Its own `forward:` key says the same and stays accepted; both together are
one list of targets (a target named twice is refused). To send the originals as well, write
their forward before the overlay.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar

from orthanc_plugin.contours.overlay import OverlayOptions
from orthanc_plugin.contours.planes import Plane
from orthanc_plugin.jobs.executors import PlannedJob
from orthanc_plugin.rules.derivations import FoldForwardsInto
from orthanc_plugin.rules.errors import RulesError
from orthanc_plugin.rules.schema_actions import (
    ActionComposer,
    ActionContext,
    ActionParser,
    parse_forward,
)
from orthanc_plugin.rules.schema_values import name_list
from orthanc_plugin.rules.wording import kind_of, one_of

JOB_ACTION = "overlay"
GLOB = "a name or glob"
# The job target of an overlay that is only stored in the gateway's Orthanc, not forwarded.
LOCAL_TARGET = "ORTHANC"
DEFAULT_WAIT_SECONDS = 600.0
MAX_WAIT_SECONDS = 7 * 24 * 3600.0
KEYS = ("ignore", "keep", "planes", "per_roi", "burn_in_outline", "series_description",
        "series_number", "forward", "wait_for_images")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h)?\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, None: 1}


@dataclass(frozen=True)
class OverlayAction:
    """Build the contour overlay series of the matched RTSTRUCTs, store it, forward it."""

    rule_key: ClassVar[str] = JOB_ACTION
    output_words: ClassVar[str] = "the overlay series"

    options: OverlayOptions
    targets: tuple[str, ...] = ()
    wait_for_images_seconds: float = DEFAULT_WAIT_SECONDS

    @property
    def job_target(self) -> str:
        return "+".join(self.targets) or LOCAL_TARGET


def parse_overlay(raw: Any, path: str, context: ActionContext) -> OverlayAction:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise RulesError(path, f"expected a mapping of options (or nothing), got {kind_of(raw)}")
    for key in raw:
        if key not in KEYS:
            raise RulesError(f"{path}.{key}", f"unknown option (expected one of: {one_of(KEYS)})")
    planes = tuple(
        _plane(item, f"{path}.planes[{n}]")
        for n, item in enumerate(name_list(raw.get("planes", ["axial"]), f"{path}.planes", GLOB))
    )
    if not planes:
        raise RulesError(f"{path}.planes", "expected at least one plane")
    if len(set(planes)) != len(planes):
        raise RulesError(f"{path}.planes", "a plane is listed twice")
    series_number = _series_number(raw.get("series_number"), f"{path}.series_number")
    description = raw.get("series_description", "")
    if not isinstance(description, str) or len(description) > 50:
        raise RulesError(f"{path}.series_description", "expected text of at most 50 characters")
    targets: tuple[str, ...] = ()
    if "forward" in raw:
        targets = parse_forward(raw["forward"], f"{path}.forward", context).targets
    ignore = name_list(raw.get("ignore", []), f"{path}.ignore", GLOB)
    keep = name_list(raw.get("keep", []), f"{path}.keep", GLOB)
    options = OverlayOptions(
        ignore=ignore,
        keep=keep,
        planes=planes,
        per_roi=_flag(raw, "per_roi", path),
        burn_in_outline=_flag(raw, "burn_in_outline", path),
        series_description=description,
        series_number=series_number,
    )
    wait = _duration(raw.get("wait_for_images", DEFAULT_WAIT_SECONDS), f"{path}.wait_for_images")
    return OverlayAction(options, targets, wait)


def plan_overlay(action: OverlayAction) -> list[PlannedJob]:
    return [PlannedJob(JOB_ACTION, action.job_target)]


def _series_number(raw: Any, path: str) -> int | None:
    # The rules' YAML keeps numbers as the text written; an int arrives only from JSON or code.
    if raw is None:
        return None
    text = str(raw).strip() if not isinstance(raw, bool) else ""
    if not text.isdigit() or int(text) > 2**31 - 100:
        raise RulesError(path, f"expected a whole number, got {kind_of(raw)}")
    return int(text)




def _plane(name: str, path: str) -> Plane:
    try:
        return Plane(name.strip().lower())
    except ValueError:
        raise RulesError(path, f"unknown plane '{name}' (expected one of: "
                               f"{one_of(p.value for p in Plane)})") from None


def _flag(raw: dict[str, Any], key: str, path: str) -> bool:
    value = raw.get(key, False)
    if not isinstance(value, bool):
        raise RulesError(f"{path}.{key}", f"expected true or false, got {kind_of(value)}")
    return value


def _duration(raw: Any, path: str) -> float:
    """Seconds from 90, "90s", "10m" or "1h"."""
    if isinstance(raw, bool):
        raise RulesError(path, "expected a duration such as 10m, got true/false")
    if isinstance(raw, int | float):
        seconds = float(raw)
    else:
        match = _DURATION.match(str(raw))
        if match is None:
            raise RulesError(path, f"expected a duration such as 90s, 10m or 1h, got {raw!r}")
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if not 0 <= seconds <= MAX_WAIT_SECONDS:
        raise RulesError(path, f"expected a duration between 0 and 7 days, got {raw!r}")
    return seconds


# What this capability adds to the rules' vocabulary (capabilities.vocabulary()).
ACTIONS: dict[str, ActionParser] = {JOB_ACTION: parse_overlay}
# The forwards after an overlay send its series, as after any derivation.
COMPOSERS: tuple[ActionComposer, ...] = (FoldForwardsInto(OverlayAction),)
