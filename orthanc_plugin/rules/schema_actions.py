"""Reads a rule's `actions` with the words of a Vocabulary: a new action type is one parser in it,
declared by its capability's rule.py (capabilities.vocabulary() gathers them)."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from orthanc_plugin.rules.errors import RulesError
from orthanc_plugin.rules.model import Action, ForwardAction
from orthanc_plugin.rules.wording import kind_of, one_of


@dataclass(frozen=True)
class ActionContext:
    """What parsers may check against; None means "do not check" (e.g. offline validation)."""

    known_targets: Collection[str] | None = None
    # Named groups of destinations (rules/groups.py), expanded wherever a target is written.
    groups: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # The rules file's folder: relative paths written in rules (a hook's script, a site's name
    # synonyms) are read from there. None: text not from a file; such paths are not checked.
    base_dir: Path | None = None


# (the value written under the action's name, its path, context) -> the action, or RulesError.
# Each capability returns its own action type (ForwardAction, AnonymizeAction, ...).
ActionParser = Callable[[Any, str, ActionContext], Any]


def parse_forward(raw: Any, path: str, context: ActionContext) -> ForwardAction:
    """`forward: ARCHIVE`, `forward: [ORGANO, ARCHIVE]` or `forward: {targets: [...]}`."""
    if isinstance(raw, dict):
        unknown = [key for key in raw if key != "targets"]
        if unknown or "targets" not in raw:
            what = f"unknown key '{unknown[0]}'" if unknown else "missing 'targets'"
            raise RulesError(path, f"{what} (expected one of: targets)")
        path, raw = f"{path}.targets", raw["targets"]
        if not isinstance(raw, list):
            raise RulesError(path, f"expected a list of target names, got {kind_of(raw)}")
    if isinstance(raw, str):
        if raw in context.groups:
            return ForwardAction(context.groups[raw])
        return ForwardAction((_target(raw, path, context),))
    if not isinstance(raw, list):
        raise RulesError(path, f"expected a target name or a list of them, got {kind_of(raw)}")
    if not raw:
        raise RulesError(path, "expected at least one target")
    targets: list[str] = []
    written: list[str] = []   # named on their own: naming one twice is a mistake
    for index, item in enumerate(raw):
        here = f"{path}[{index}]"
        if not isinstance(item, str):
            raise RulesError(here, f"expected a target name, got {kind_of(item)}")
        members = context.groups.get(item)
        if members is not None:
            # A destination both in a group and written alone is sent to once.
            targets.extend(member for member in members if member not in targets)
            continue
        target = _target(item, here, context)
        if target in written:
            # Sending twice to the same modality is never wanted and would double the jobs.
            raise RulesError(here, f"duplicate target '{target}'")
        written.append(target)
        if target not in targets:
            targets.append(target)
    return ForwardAction(tuple(targets))


def _target(name: str, path: str, context: ActionContext) -> str:
    if not name.strip():
        raise RulesError(path, "expected a target name, got empty text")
    known = context.known_targets
    if known is not None and name not in known:
        listed = one_of(known) if known else "none"
        groups = f"; groups: {one_of(context.groups)}" if context.groups else ""
        raise RulesError(path, f"unknown target '{name}' (known: {listed}{groups})")
    return name


# (the parsed actions of one rule, their path) -> the actions as the rule will run them. A capability
# whose action changes what the later actions act on (anonymize: the following forwards send the
# de-identified copy) folds those actions into its own here.
ActionComposer = Callable[[tuple[Action, ...], str], tuple[Action, ...]]
# An extra top-level section of the rules file, e.g. `harvests:`, read by the capability that owns
# it: (the value, its path, context) -> what RuleSet.sections keeps under that key, or RulesError.
SectionParser = Callable[[Any, str, ActionContext], Any]


@dataclass(frozen=True)
class Vocabulary:
    """What a rules file may say: its actions (name -> parser), the composers run over each rule's
    parsed actions (in this order), and its extra top-level sections (name -> parser).

    A value handed to the loaders, never a registry: the rules package imports no capability, so
    the gateway's vocabulary is built outside it from the capabilities' declarations
    (capabilities.vocabulary()), and two vocabularies can be used side by side."""

    actions: Mapping[str, ActionParser]
    composers: tuple[ActionComposer, ...] = ()
    sections: Mapping[str, SectionParser] = field(default_factory=lambda: MappingProxyType({}))


# The rules package's own words: `forward` alone. Every capability's action, composer and section
# comes in through a Vocabulary built outside (capabilities.vocabulary()).
CORE_VOCABULARY = Vocabulary(MappingProxyType({"forward": parse_forward}))


def parse_actions(raw: Any, path: str, context: ActionContext,
                  vocabulary: Vocabulary = CORE_VOCABULARY) -> tuple[Action, ...]:
    if not isinstance(raw, list):
        raise RulesError(path, f"expected a list of actions, got {kind_of(raw)}")
    if not raw:
        raise RulesError(path, "expected at least one action")
    actions = tuple(_action(item, f"{path}[{index}]", context, vocabulary.actions)
                    for index, item in enumerate(raw))
    for compose in vocabulary.composers:
        actions = compose(actions, path)
    return actions


def _action(raw: Any, path: str, context: ActionContext,
            parsers: Mapping[str, ActionParser]) -> Action:
    if not isinstance(raw, dict) or len(raw) != 1:
        got = f"{len(raw)} keys" if isinstance(raw, dict) else kind_of(raw)
        raise RulesError(path, f"expected a mapping with one action such as forward, got {got}")
    ((name, value),) = raw.items()
    parser = parsers.get(name)
    if parser is None:
        raise RulesError(
            path, f"unknown action '{name}' (expected one of: {one_of(parsers)})"
        )
    return parser(value, f"{path}.{name}", context)
