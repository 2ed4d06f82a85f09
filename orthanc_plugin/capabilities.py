"""The list of gateway capabilities. Each one is a package with the same shape:

    model.py    pure logic and values (no `orthanc`, no SQL)
    rule.py     its rule action: dataclass, parser, planner, and what it adds to the rules'
                vocabulary, declared at module level (see vocabulary() below)
    action.py   the executor that runs its jobs from the durable queue
    tables.py   its SQLite schema (SCHEMA), applied when the gateway opens its database
    routes.py   its REST routes under /rt-gateway/

and a module-level `install(ctx)` (in its `__init__.py`) that takes one CapabilityContext
(context.py) and registers planners, executors, routes (`add_routes(router, ...)`) and hooks
through the context's named fields; nothing is registered by importing a module.
Executors that work instance by instance share one contract (jobs/executor_base.py) and write
only their step.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from collections.abc import Collection
from pathlib import Path
from types import MappingProxyType, ModuleType
from typing import TYPE_CHECKING

from orthanc_plugin.rules import CORE_VOCABULARY, RuleSet, Vocabulary
from orthanc_plugin.rules import load_rules_file as load_rules_file_with
from orthanc_plugin.rules import load_rules_text as load_rules_text_with
from orthanc_plugin.rules.schema_actions import ActionComposer, ActionParser, SectionParser

if TYPE_CHECKING:
    from orthanc_plugin.context import CapabilityContext
    from orthanc_plugin.db import Migration

# Packages with an install(ctx) function, called once the gateway's core is built: adding a
# capability is one line here (its rule.py, tables.py and install are found by name).
CAPABILITIES: list[str] = [
    "orthanc_plugin.forwarding", "orthanc_plugin.web", "orthanc_plugin.contours",
    "orthanc_plugin.harvest", "orthanc_plugin.deid", "orthanc_plugin.importer",
    "orthanc_plugin.export", "orthanc_plugin.plans", "orthanc_plugin.index",
    "orthanc_plugin.cleanup", "orthanc_plugin.destinations", "orthanc_plugin.approvals",
    "orthanc_plugin.webhooks", "orthanc_plugin.transform",
]


def vocabulary() -> Vocabulary:
    """The rules' vocabulary of the capabilities listed now: the core's (`forward`) and what each
    capability's rule.py declares at module level, each name optional:

        ACTIONS: dict[str, ActionParser]         its rule actions, by name
        COMPOSERS: tuple[ActionComposer, ...]    run over each rule's actions, in the list's order
        COMPOSE_FIRST: tuple[ActionComposer, ...]  run before all the others (approvals' hold)
        SECTIONS: dict[str, SectionParser]       its top-level sections of the rules file

    Built from the declarations on each call, never kept: importing a rule module changes nothing,
    and a test that lists one more capability gets its words with it."""
    actions: dict[str, ActionParser] = dict(CORE_VOCABULARY.actions)
    sections: dict[str, SectionParser] = dict(CORE_VOCABULARY.sections)
    first: list[ActionComposer] = []
    composers: list[ActionComposer] = list(CORE_VOCABULARY.composers)
    for name in CAPABILITIES:
        module = _rule_module(name)
        if module is None:
            continue
        for kind, known, declared in (("action", actions, getattr(module, "ACTIONS", {})),
                                      ("section", sections, getattr(module, "SECTIONS", {}))):
            for key in declared:
                if key in known:
                    # Two capabilities cannot both own a word: one would silently shadow the other.
                    raise ValueError(f"{name}.rule: {kind} '{key}' is declared twice")
            known.update(declared)
        first += getattr(module, "COMPOSE_FIRST", ())
        composers += getattr(module, "COMPOSERS", ())
    return Vocabulary(MappingProxyType(actions), (*first, *composers),
                      MappingProxyType(sections))


def _rule_module(name: str) -> ModuleType | None:
    if importlib.util.find_spec(f"{name}.rule") is None:
        return None
    return importlib.import_module(f"{name}.rule")


def load_rules_file(path: str | os.PathLike[str],
                    known_targets: Collection[str] | None = None) -> RuleSet:
    """rules.load_rules_file with the capabilities' vocabulary: what the gateway loads."""
    return load_rules_file_with(path, known_targets, vocabulary())


def load_rules_text(text: str, known_targets: Collection[str] | None = None,
                    base_dir: Path | None = None) -> RuleSet:
    """rules.load_rules_text with the capabilities' vocabulary: what the gateway loads."""
    return load_rules_text_with(text, known_targets, base_dir, vocabulary())


def extra_schemas() -> list[str]:
    schemas = []
    for name in CAPABILITIES:
        try:
            tables = importlib.import_module(f"{name}.tables")
        except ModuleNotFoundError:
            continue
        schemas.append(tables.SCHEMA)
    return schemas


def migrations() -> list[Migration]:
    """The capabilities' schema migrations (their tables.py MIGRATIONS), numbered with the core's
    in one sequence (db.check_migrations)."""
    found: list[Migration] = []
    for name in CAPABILITIES:
        try:
            tables = importlib.import_module(f"{name}.tables")
        except ModuleNotFoundError:
            continue
        found += getattr(tables, "MIGRATIONS", ())
    return found


def install_all(context: CapabilityContext) -> None:
    for name in CAPABILITIES:
        importlib.import_module(name).install(context)
