"""Whether one condition holds for one instance."""

from __future__ import annotations

from orthanc_plugin.rules.facts import InstanceFacts
from orthanc_plugin.rules.model import (
    AllOf,
    AnyOf,
    Condition,
    FactCondition,
    Not,
    PlanLabelCondition,
    TagCondition,
)

# Condition key -> the InstanceFacts attribute it reads.
FACT_ATTRIBUTES = {
    "calling_aet": "calling_aet",
    "called_aet": "called_aet",
    "remote_ip": "remote_ip",
    "modality": "modality",
    "sop_class": "sop_class_uid",
    "source": "source",
}


class Subject:
    """One instance's facts; each tag a rule names is read at most once, since a read may cost
    a request to Orthanc."""

    __slots__ = ("_tags", "facts")

    def __init__(self, facts: InstanceFacts) -> None:
        self.facts = facts
        self._tags: dict[str, str | None] = {}

    @property
    def instance_id(self) -> str:
        return self.facts.instance_id

    def fact(self, key: str) -> str:
        return str(getattr(self.facts, FACT_ATTRIBUTES[key]))

    def tag(self, keyword: str) -> str | None:
        if keyword not in self._tags:
            value = self.facts.tags.get(keyword)
            self._tags[keyword] = None if value is None else str(value)
        return self._tags[keyword]


def holds(condition: Condition, subject: Subject) -> bool:
    if isinstance(condition, FactCondition):
        return condition.spec.test(subject.fact(condition.key))
    if isinstance(condition, PlanLabelCondition):
        return any(condition.spec.test(label) for label in subject.facts.study_plan_labels)
    if isinstance(condition, TagCondition):
        value = subject.tag(condition.keyword)
        return value is not None and condition.spec.test(value)
    if isinstance(condition, AllOf):
        return all(holds(inner, subject) for inner in cheap_first(condition.conditions))
    if isinstance(condition, Not):
        return not holds(condition.condition, subject)
    if isinstance(condition, AnyOf):
        return any(holds(option, subject) for option in condition.options)
    raise TypeError(f"unknown condition {condition!r}")


def cheap_first(conditions: tuple[Condition, ...]) -> list[Condition]:
    """Tag conditions last: the others are already in memory, a tag may have to be fetched, and
    the result of an AND does not depend on its order."""
    return sorted(conditions, key=_reads_tags)


def _reads_tags(condition: Condition) -> bool:
    if isinstance(condition, TagCondition):
        return True
    if isinstance(condition, AllOf):
        return any(_reads_tags(inner) for inner in condition.conditions)
    if isinstance(condition, Not):
        return _reads_tags(condition.condition)
    if isinstance(condition, AnyOf):
        return any(_reads_tags(option) for option in condition.options)
    return False
