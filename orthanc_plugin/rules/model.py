"""What a loaded rules file is: rules, their condition trees and their actions. Data only."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeAlias

from orthanc_plugin.rules.values import ValueSpec


class Trigger(StrEnum):
    INSTANCE = "instance"
    STABLE_STUDY = "stable-study"
    PLAN_COMPLETE = "plan-complete"   # a plan bundle became complete (orthanc_plugin.plans)


# -- actions -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ForwardAction:
    """C-STORE the matched instances to each target (names of Orthanc DicomModalities)."""

    targets: tuple[str, ...]
    # What the copy sent is made of, in order (normalize, coerce, hook: orthanc_plugin/transform),
    # folded in from the actions written before this forward. Opaque here: rules import no
    # capability. Empty: the instance as stored.
    steps: tuple[object, ...] = ()


# Any rule action: forward here, and each capability's own frozen dataclass (anonymize, export,
# overlay, hold, normalize...), registered with its parser in schema_actions.py. The union cannot
# be spelled here (rules import no capability): consumers pick the types they handle with
# isinstance.
Action: TypeAlias = object


# -- conditions --------------------------------------------------------------------------------
# Every condition keeps `path`, where it was written relative to the rule (e.g.
# "match.any[1].calling_aet"), because the why-not report and the audit name it.


@dataclass(frozen=True)
class FactCondition:
    """calling_aet, called_aet, remote_ip, modality, sop_class or source: one fact per instance."""

    path: str
    key: str
    spec: ValueSpec


@dataclass(frozen=True)
class PlanLabelCondition:
    """Holds for an instance when any RTPlanLabel of its study satisfies the spec."""

    path: str
    spec: ValueSpec


@dataclass(frozen=True)
class TagCondition:
    """A DICOM attribute, by keyword, compared as text; a missing value fails."""

    path: str
    keyword: str
    spec: ValueSpec


@dataclass(frozen=True)
class AllOf:
    """A `match` mapping: every condition must hold for the same instance."""

    path: str
    conditions: tuple[Condition, ...]


@dataclass(frozen=True)
class Not:
    path: str
    condition: AllOf


@dataclass(frozen=True)
class AnyOf:
    path: str
    options: tuple[AllOf, ...]


Condition: TypeAlias = FactCondition | PlanLabelCondition | TagCondition | AllOf | Not | AnyOf


# -- rules -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Rule:
    name: str
    enabled: bool
    on: Trigger
    match: AllOf
    actions: tuple[Action, ...]
    include_gateway_output: bool = False
    description: str = ""
    # plan-complete only: after this long an incomplete bundle is forwarded or held (`then`).
    complete_within_seconds: float | None = None
    then: str = "hold"   # forward-incomplete | hold
    # Which waiting job a destination takes first (rules/priority.py): normal unless written.
    priority: int = 10
    # The rule as written, for GET /rules; left out of equality and hashing because a dict has
    # neither a stable identity nor a hash, and the parsed fields already say what the rule does.
    source: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def to_json(self) -> dict[str, Any]:
        """The rule as written, with the defaults it relied on made explicit."""
        written = copy.deepcopy(self.source)
        written.update(
            name=self.name,
            description=self.description,
            enabled=self.enabled,
            on=self.on.value,
            include_gateway_output=self.include_gateway_output,
        )
        return written


@dataclass(frozen=True)
class RuleSet:
    rules: tuple[Rule, ...]
    sha256: str  # of the file's bytes: audit rows name the exact rules that decided
    # Extra top-level sections as their parsers returned them (the loader's Vocabulary.sections),
    # e.g. "harvests"; opaque here so the rules package imports no capability.
    sections: dict[str, Any] = field(default_factory=dict, hash=False)

    def for_trigger(self, trigger: Trigger) -> list[Rule]:
        return [rule for rule in self.rules if rule.enabled and rule.on == trigger]

    def to_json(self) -> list[dict[str, Any]]:
        return [rule.to_json() for rule in self.rules]
