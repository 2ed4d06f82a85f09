"""The list of gateway capabilities. Each one is a package with the same shape:

    model.py    pure logic and values (no `orthanc`, no SQL)
    rule.py     its rule action: dataclass, parser (registered in ACTION_PARSERS), planner
    action.py   the executor that runs its jobs from the durable queue
    tables.py   its SQLite schema (SCHEMA), applied when the gateway opens its database
    routes.py   its REST routes under /rt-gateway/

and a module-level `install(ctx)` (in its `__init__.py`) that takes one CapabilityContext
(context.py) and registers planners, executors, routes (`add_routes(router, ...)`) and hooks.
Executors that work instance by instance share one contract (jobs/executor_base.py) and write
only their step.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from orthanc_plugin.context import CapabilityContext

# Packages whose rule.py registers an action (or top-level section) parser; imported before the
# rules are loaded.
RULE_MODULES: list[str] = ["orthanc_plugin.contours.rule", "orthanc_plugin.deid.rule",
                          "orthanc_plugin.export.rule", "orthanc_plugin.harvest.rule",
                          "orthanc_plugin.cleanup.rule", "orthanc_plugin.destinations.rule",
                          "orthanc_plugin.approvals.rule", "orthanc_plugin.transform.rule"]

# Packages with an install(ctx) function, called once the gateway's core is built.
CAPABILITIES: list[str] = [
    "orthanc_plugin.forwarding", "orthanc_plugin.web", "orthanc_plugin.contours",
    "orthanc_plugin.harvest", "orthanc_plugin.deid", "orthanc_plugin.importer",
    "orthanc_plugin.export", "orthanc_plugin.plans", "orthanc_plugin.index",
    "orthanc_plugin.cleanup", "orthanc_plugin.destinations", "orthanc_plugin.approvals",
    "orthanc_plugin.webhooks", "orthanc_plugin.transform",
]


def register_rule_actions() -> None:
    for name in RULE_MODULES:
        importlib.import_module(name)


def extra_schemas() -> list[str]:
    schemas = []
    for name in CAPABILITIES:
        try:
            tables = importlib.import_module(f"{name}.tables")
        except ModuleNotFoundError:
            continue
        schemas.append(tables.SCHEMA)
    return schemas


def install_all(context: CapabilityContext) -> None:
    for name in CAPABILITIES:
        importlib.import_module(name).install(context)
