"""Loads and validates the rules file; every error names the exact place, e.g. `rules[2].on`."""

from __future__ import annotations

import copy
import hashlib
import os
from collections.abc import Collection
from pathlib import Path
from typing import Any

from orthanc_plugin.rules.durations import duration_seconds
from orthanc_plugin.rules.errors import RulesError
from orthanc_plugin.rules.groups import SECTION as GROUPS
from orthanc_plugin.rules.groups import parse_groups
from orthanc_plugin.rules.model import Rule, RuleSet, Trigger
from orthanc_plugin.rules.priority import parse_priority
from orthanc_plugin.rules.schema_actions import (
    CORE_VOCABULARY,
    ActionContext,
    SectionParser,
    Vocabulary,
    parse_actions,
)
from orthanc_plugin.rules.schema_match import parse_match
from orthanc_plugin.rules.wording import kind_of, one_of
from orthanc_plugin.rules.yaml_text import FILE_PATH, parse_yaml

__all__ = ["RulesError", "SectionParser", "Vocabulary", "load_rules_file", "load_rules_text"]

RULE_KEYS = ("name", "description", "enabled", "on", "match", "actions", "include_gateway_output",
             "complete_within", "then", "priority")
# What a plan-complete rule does with a bundle still incomplete after complete_within.
THEN_CHOICES = ("forward-incomplete", "hold")
_TRIGGERS = tuple(trigger.value for trigger in Trigger)
_MISSING_HINTS = {
    "on": f" (expected one of: {one_of(_TRIGGERS)})",
    # Forwarding everything must be a visible decision, not a forgotten key.
    "match": " (write 'match: {}' to match every instance)",
    "actions": " (expected a list such as [{forward: [ARCHIVE]}])",
}


def load_rules_file(
    path: str | os.PathLike[str], known_targets: Collection[str] | None = None,
    vocabulary: Vocabulary = CORE_VOCABULARY,
) -> RuleSet:
    """`vocabulary`: the actions and sections the file may use; the gateway's is
    capabilities.vocabulary() (capabilities.load_rules_file passes it), this package's own only
    knows `forward`."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise RulesError(FILE_PATH, f"cannot read {path}: {error.strerror or error}") from error
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise RulesError(FILE_PATH, f"{path} is not UTF-8 text: {error}") from error
    return _rule_set(text, hashlib.sha256(data).hexdigest(), known_targets, Path(path).parent,
                     vocabulary)


def load_rules_text(text: str, known_targets: Collection[str] | None = None,
                    base_dir: Path | None = None,
                    vocabulary: Vocabulary = CORE_VOCABULARY) -> RuleSet:
    """`known_targets=None` skips the target check (no Orthanc to ask, e.g. a CI lint);
    `base_dir`: where relative paths in the rules are read from (the rules file's folder);
    `vocabulary`: as for load_rules_file."""
    return _rule_set(text, hashlib.sha256(text.encode("utf-8")).hexdigest(), known_targets,
                     base_dir, vocabulary)


def _rule_set(text: str, sha256: str, known_targets: Collection[str] | None,
              base_dir: Path | None, vocabulary: Vocabulary) -> RuleSet:
    section_parsers = vocabulary.sections
    document = parse_yaml(text)
    if document is None:
        raise RulesError(FILE_PATH, "the file is empty (expected a mapping with a 'rules' list)")
    if not isinstance(document, dict):
        raise RulesError(
            FILE_PATH, f"expected a mapping with a 'rules' list, got {kind_of(document)}"
        )
    for key in document:
        if key not in ("rules", GROUPS) and key not in section_parsers:
            expected = one_of(["rules", GROUPS, *section_parsers])
            raise RulesError(FILE_PATH, f"unknown key '{key}' (expected one of: {expected})")
    if "rules" not in document:
        raise RulesError(FILE_PATH, "missing 'rules' (expected a list of rules)")
    raw_rules = document["rules"]
    if not isinstance(raw_rules, list):
        raise RulesError("rules", f"expected a list of rules, got {kind_of(raw_rules)}")
    # Groups first: every target written in the rules and sections may name one.
    groups = parse_groups(document.get(GROUPS), known_targets)
    context = ActionContext(known_targets, groups, base_dir)
    rules: list[Rule] = []
    first_index: dict[str, int] = {}
    for index, raw in enumerate(raw_rules):
        rule = _rule(raw, f"rules[{index}]", context, vocabulary)
        if rule.name in first_index:
            raise RulesError(
                f"rules[{index}].name",
                f"duplicate rule name '{rule.name}' (also rules[{first_index[rule.name]}])",
            )
        first_index[rule.name] = index
        rules.append(rule)
    sections = {key: section_parsers[key](document[key], key, context)
                for key in document if key in section_parsers}
    if GROUPS in document:
        sections[GROUPS] = groups
    return RuleSet(tuple(rules), sha256, sections)


def _rule(raw: Any, path: str, context: ActionContext, vocabulary: Vocabulary) -> Rule:
    if not isinstance(raw, dict):
        raise RulesError(path, f"expected a rule mapping, got {kind_of(raw)}")
    for key in raw:
        if key not in RULE_KEYS:
            raise RulesError(path, f"unknown key '{key}' (expected one of: {one_of(RULE_KEYS)})")
    for key in ("name", "on", "match", "actions"):
        if key not in raw:
            raise RulesError(path, f"missing '{key}'{_MISSING_HINTS.get(key, '')}")
    name = raw["name"]
    if not isinstance(name, str) or not name.strip():
        raise RulesError(f"{path}.name", f"expected a non-empty name, got {kind_of(name)}")
    description = raw.get("description") or ""
    if not isinstance(description, str):
        raise RulesError(f"{path}.description", f"expected text, got {kind_of(description)}")
    on = _trigger(raw["on"], f"{path}.on")
    complete_within, then = _plan_options(raw, path, on)
    return Rule(
        name=name,
        enabled=_flag(raw, "enabled", path, default=True),
        on=on,
        match=parse_match(raw["match"], prefix=f"{path}."),
        actions=parse_actions(raw["actions"], f"{path}.actions", context, vocabulary),
        include_gateway_output=_flag(raw, "include_gateway_output", path, default=False),
        description=description,
        complete_within_seconds=complete_within,
        then=then,
        priority=parse_priority(raw.get("priority", "normal"), f"{path}.priority"),
        source=copy.deepcopy(raw),
    )


def _plan_options(raw: dict[str, Any], path: str, on: Trigger) -> tuple[float | None, str]:
    """`complete_within: 10m` and `then: forward-incomplete | hold`, for plan-complete rules only."""
    for key in ("complete_within", "then"):
        if key in raw and on is not Trigger.PLAN_COMPLETE:
            raise RulesError(f"{path}.{key}", f"only for 'on: {Trigger.PLAN_COMPLETE.value}' rules")
    if "then" in raw and "complete_within" not in raw:
        raise RulesError(f"{path}.then", "needs 'complete_within' (how long to wait first)")
    seconds: float | None = None
    if "complete_within" in raw:
        seconds = duration_seconds(raw["complete_within"], f"{path}.complete_within",
                                   allow_zero=True)
    then = raw.get("then", "hold")
    if then not in THEN_CHOICES:
        raise RulesError(f"{path}.then",
                         f"unknown value {kind_of(then)} (expected one of: {one_of(THEN_CHOICES)})")
    return seconds, str(then)


def _flag(raw: dict[str, Any], key: str, path: str, default: bool) -> bool:
    value = raw.get(key, default)
    if not isinstance(value, bool):
        raise RulesError(f"{path}.{key}", f"expected true or false, got {kind_of(value)}")
    return value


def _trigger(raw: Any, path: str) -> Trigger:
    if raw not in _TRIGGERS:
        expected = one_of(_TRIGGERS)
        raise RulesError(path, f"unknown trigger {kind_of(raw)} (expected one of: {expected})")
    return Trigger(raw)
