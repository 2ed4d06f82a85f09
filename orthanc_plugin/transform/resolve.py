"""Which copy a forward job sends: its rule's steps (the forward action it was queued for) and its
destination's coercion and transfer syntax, as the rules in force say now."""

from __future__ import annotations

from collections.abc import Callable

from orthanc_plugin.jobs.records import Job
from orthanc_plugin.rules import ForwardAction, RuleSet
from orthanc_plugin.transform.coerce import Coercion
from orthanc_plugin.transform.spec import CopySpec, combined

DESTINATIONS = "destinations"


class CopySpecs:
    def __init__(self, rules: Callable[[], RuleSet]) -> None:
        self.rules = rules

    def for_job(self, job: Job, target: str) -> CopySpec:
        ruleset = self.rules()
        policy = (ruleset.sections.get(DESTINATIONS) or {}).get(target)
        coercion = getattr(policy, "coercion", None)
        return combined(_rule_steps(ruleset, job.rule, job.target),
                        coercion if isinstance(coercion, Coercion) else None,
                        str(getattr(policy, "transfer_syntax", "") or ""))


def _rule_steps(ruleset: RuleSet, rule_name: str, target: str) -> tuple[object, ...]:
    """The steps of the rule's forward to this target. A job moved by failover names its new
    target: then the rule's one forward with steps, if there is exactly one."""
    forwards = [action for rule in ruleset.rules if rule.name == rule_name
                for action in rule.actions if isinstance(action, ForwardAction)]
    for action in forwards:
        if target in action.targets:
            return action.steps
    with_steps = [action for action in forwards if action.steps]
    return with_steps[0].steps if len(with_steps) == 1 else ()
