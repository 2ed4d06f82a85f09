"""The rules: which received DICOM the gateway acts on, and how. Pure Python, no `orthanc`."""

from orthanc_plugin.rules.errors import RulesError
from orthanc_plugin.rules.facts import InstanceFacts
from orthanc_plugin.rules.matching import Evaluation, evaluate
from orthanc_plugin.rules.model import (
    Action,
    AllOf,
    AnyOf,
    Condition,
    FactCondition,
    ForwardAction,
    Not,
    PlanLabelCondition,
    Rule,
    RuleSet,
    TagCondition,
    Trigger,
)
from orthanc_plugin.rules.schema import load_rules_file, load_rules_text
from orthanc_plugin.rules.schema_actions import (
    CORE_VOCABULARY,
    ActionComposer,
    ActionContext,
    ActionParser,
    SectionParser,
    Vocabulary,
)
from orthanc_plugin.rules.values import AnyValue, Cidr, Contains, Equals, Glob, Regex, ValueSpec
from orthanc_plugin.rules.why_not import explain_each

__all__ = [
    "CORE_VOCABULARY",
    "Action",
    "ActionComposer",
    "ActionContext",
    "ActionParser",
    "AllOf",
    "AnyOf",
    "AnyValue",
    "Cidr",
    "Condition",
    "Contains",
    "Equals",
    "Evaluation",
    "FactCondition",
    "ForwardAction",
    "Glob",
    "InstanceFacts",
    "Not",
    "PlanLabelCondition",
    "Regex",
    "Rule",
    "RuleSet",
    "RulesError",
    "SectionParser",
    "TagCondition",
    "Trigger",
    "ValueSpec",
    "Vocabulary",
    "evaluate",
    "explain_each",
    "load_rules_file",
    "load_rules_text",
]
