"""The forward action's planner. Its parser stays in rules/schema_actions.py: `forward:` is the
core action every other action folds its followers into (anonymize, overlay)."""

from __future__ import annotations

from typing import Any

from orthanc_plugin.config import SECTION, ConfigError
from orthanc_plugin.jobs.executors import PlannedJob
from orthanc_plugin.rules import ForwardAction

JOB_ACTION = "forward"
VERIFY_MODES = ("c-find", "resend")


def plan_forward(action: ForwardAction) -> list[PlannedJob]:
    return [PlannedJob(JOB_ACTION, target) for target in action.targets]


def verify_settings(section: dict[str, Any]) -> dict[str, str]:
    """RtGateway.Forwarding.Verify: per modality name ("*" for the rest), how to learn what a
    receiver holds after a crash: "c-find" (the default) or "resend" for a node without C-FIND."""
    forwarding = section.get("Forwarding") or {}
    if not isinstance(forwarding, dict):
        raise ConfigError(f"{SECTION}.Forwarding: expected an object")
    raw = forwarding.get("Verify") or {}
    if not isinstance(raw, dict) or any(value not in VERIFY_MODES for value in raw.values()):
        raise ConfigError(
            f'{SECTION}.Forwarding.Verify: expected {{"<modality>": "c-find" | "resend"}}')
    return {str(name): str(mode) for name, mode in raw.items()}
