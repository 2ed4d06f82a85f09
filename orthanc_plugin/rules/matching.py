"""Evaluates one rule against the instances of one trigger (an instance, or a stable study)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from orthanc_plugin.rules.checks import Subject, cheap_first, holds
from orthanc_plugin.rules.facts import GATEWAY_SOURCE, InstanceFacts
from orthanc_plugin.rules.model import Rule
from orthanc_plugin.rules.why_not import explain

ALL_HOLD = "all conditions hold"


@dataclass(frozen=True)
class Evaluation:
    rule: str
    matched: bool
    instance_ids: tuple[str, ...]  # instances that satisfy every condition: what actions apply to
    reason: str  # why not (or "all conditions hold")
    failed_condition: str | None  # e.g. "match.plan_label"


def evaluate(rule: Rule, facts: Sequence[InstanceFacts]) -> Evaluation:
    if not rule.enabled:
        return Evaluation(rule.name, False, (), "rule is disabled", "enabled")
    if not facts:
        return Evaluation(rule.name, False, (), "no instances", None)
    # Loop protection: what the gateway itself stored (e.g. an anonymized copy) would otherwise
    # match the rule that produced it.
    subjects = [
        Subject(item)
        for item in facts
        if rule.include_gateway_output or item.source != GATEWAY_SOURCE
    ]
    if not subjects:
        return Evaluation(
            rule=rule.name,
            matched=False,
            instance_ids=(),
            reason=f"only gateway output ({len(facts)} instance(s) with source {GATEWAY_SOURCE}),"
            " which the rule ignores unless include_gateway_output is true",
            failed_condition="include_gateway_output",
        )
    conditions = cheap_first(rule.match.conditions)
    matched = tuple(
        subject.instance_id
        for subject in subjects
        if all(holds(condition, subject) for condition in conditions)
    )
    if matched:
        return Evaluation(rule.name, True, matched, ALL_HOLD, None)
    failed, reason = explain(rule.match, subjects)
    return Evaluation(rule.name, False, (), reason, failed)
