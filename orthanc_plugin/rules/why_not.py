"""Why a rule matched no instance: the first condition, in the order written, that none satisfies.

The answer goes to the audit log and to POST /rules/test, so it quotes what was observed.
"""

from __future__ import annotations

from collections.abc import Sequence

from orthanc_plugin.rules.checks import Subject, holds
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
from orthanc_plugin.rules.values import ValueSpec
from orthanc_plugin.rules.wording import listing

NO_SINGLE_INSTANCE = "no single instance satisfies every condition"

_LABELS = {
    "calling_aet": "calling AE",
    "called_aet": "called AE",
    "remote_ip": "remote IP",
    "modality": "modality",
    "sop_class": "SOP class",
    "source": "source",
}


def explain(match: AllOf, subjects: Sequence[Subject]) -> tuple[str, str]:
    """(path of the failing condition, reason) for conditions no instance satisfies together."""
    for condition in match.conditions:
        if not any(holds(condition, subject) for subject in subjects):
            return condition.path, _reason(condition, subjects)
    return match.path, NO_SINGLE_INSTANCE


def _reason(condition: Condition, subjects: Sequence[Subject]) -> str:
    if isinstance(condition, FactCondition):
        values = [subject.fact(condition.key) for subject in subjects]
        return _values_fail(_LABELS[condition.key], condition.spec, values)
    if isinstance(condition, PlanLabelCondition):
        return _plan_labels_fail(condition, subjects)
    if isinstance(condition, TagCondition):
        return _tag_fails(condition, subjects)
    if isinstance(condition, Not):
        return "every instance satisfies the conditions under 'not'"
    if isinstance(condition, AnyOf):
        parts = [": ".join(explain(option, subjects)) for option in condition.options]
        return "no alternative holds (" + "; ".join(parts) + ")"
    if isinstance(condition, AllOf):
        return ": ".join(explain(condition, subjects))
    raise TypeError(f"unknown condition {condition!r}")


def _values_fail(label: str, spec: ValueSpec, values: list[str]) -> str:
    if len(set(values)) == 1:
        return f"{label} '{values[0]}' {spec.phrase(holds=False)}"
    return f"no {label} {spec.phrase(holds=True)} (seen: {listing(values, quote=True)})"


def _plan_labels_fail(condition: PlanLabelCondition, subjects: Sequence[Subject]) -> str:
    labels = [label for subject in subjects for label in subject.facts.study_plan_labels]
    if labels:
        phrase = condition.spec.phrase(holds=True)
        return f"no plan label of the study {phrase} (labels: {listing(labels, quote=False)})"
    if any(subject.facts.modality == "RTPLAN" for subject in subjects):
        return "no RTPLAN of the study has a plan label"
    return "the study has no RTPLAN"


def _tag_fails(condition: TagCondition, subjects: Sequence[Subject]) -> str:
    keyword = condition.keyword
    values = [value for subject in subjects if (value := subject.tag(keyword)) is not None]
    if not values:
        return f"no instance has a value for {keyword}"
    reason = _values_fail(keyword, condition.spec, values)
    missing = len(subjects) - len(values)
    return reason + (f"; {missing} instance(s) have no value for it" if missing else "")


def explain_each(match: AllOf, facts: Sequence[InstanceFacts]) -> list[dict[str, object]]:
    """Every top-level condition of a rule with whether it holds, for how many instances, and
    why not: what a person testing a rule against a study wants to see, condition by condition."""
    subjects = [Subject(item) for item in facts]
    report: list[dict[str, object]] = []
    for condition in match.conditions:
        count = sum(1 for subject in subjects if holds(condition, subject))
        report.append({
            "condition": condition.path,
            "holds": count > 0,
            "instances": count,
            "reason": (f"holds for {count} of {len(subjects)} instance(s)" if count
                       else _reason(condition, subjects)),
        })
    return report
