"""The `hold:` rule action: the rule's other actions wait until a person approves them.

    actions:
      - hold: {approvers: [dr.curie, phys.bragg], expires: 3d}
      - forward: [LINAC1, ARCHIVE]

Written first, it holds every job the rule queues (per target: each can be approved or rejected on
its own). Without `approvers`, any user signed in to Orthanc may decide; `expires` defaults to 7d.
"""

from __future__ import annotations

from typing import Any

from orthanc_plugin.approvals.model import DEFAULT_EXPIRY_SECONDS, HoldAction
from orthanc_plugin.jobs.executors import PlannedJob
from orthanc_plugin.rules.durations import duration_seconds
from orthanc_plugin.rules.errors import RulesError
from orthanc_plugin.rules.model import Action
from orthanc_plugin.rules.schema_actions import ActionComposer, ActionContext, ActionParser
from orthanc_plugin.rules.wording import kind_of, one_of

KEYS = ("approvers", "expires")


def parse_hold(raw: Any, path: str, context: ActionContext) -> HoldAction:
    if raw is None or raw is True:
        return HoldAction()
    if not isinstance(raw, dict):
        raise RulesError(path, f"expected a mapping such as {{approvers: [name], expires: 7d}}, "
                               f"got {kind_of(raw)}")
    for key in raw:
        if key not in KEYS:
            raise RulesError(f"{path}.{key}", f"unknown option (expected one of: {one_of(KEYS)})")
    approvers = raw.get("approvers", [])
    if isinstance(approvers, str):
        approvers = [approvers]
    if not isinstance(approvers, list):
        raise RulesError(f"{path}.approvers", f"expected a list of user names, got {kind_of(approvers)}")
    names: list[str] = []
    for index, name in enumerate(approvers):
        if not isinstance(name, str) or not name.strip():
            raise RulesError(f"{path}.approvers[{index}]", f"expected a user name, got {kind_of(name)}")
        if name.strip() in names:
            raise RulesError(f"{path}.approvers[{index}]", f"duplicate approver '{name.strip()}'")
        names.append(name.strip())
    expires = raw.get("expires")
    return HoldAction(tuple(names), DEFAULT_EXPIRY_SECONDS if expires is None
                      else duration_seconds(expires, f"{path}.expires"))


def hold_first(actions: tuple[Action, ...], path: str) -> tuple[Action, ...]:
    """A hold holds all of the rule: written after an action, it would seem to let that one go."""
    for index, action in enumerate(actions):
        if isinstance(action, HoldAction):
            if index != 0:
                raise RulesError(f"{path}[{index}]", "hold must be the rule's first action "
                                                     "(it holds every action of the rule)")
            if len(actions) == 1:
                raise RulesError(f"{path}[{index}]", "hold needs an action after it to hold")
    return actions


def plan_hold(action: HoldAction) -> list[PlannedJob]:
    return []   # no job of its own: it holds the jobs the rule's other actions queue


# What this capability adds to the rules' vocabulary (capabilities.vocabulary()). hold_first runs
# before every other composer: it must see the actions as written, before a fold moves them.
ACTIONS: dict[str, ActionParser] = {"hold": parse_hold}
COMPOSE_FIRST: tuple[ActionComposer, ...] = (hold_first,)
