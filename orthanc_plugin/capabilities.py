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
import importlib.util
from typing import TYPE_CHECKING

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


def register_rule_actions() -> None:
    """Imports each capability's rule.py (it registers its action parsers and composers) before
    rules are loaded, in the list's order (the order composers run in)."""
    for name in CAPABILITIES:
        if importlib.util.find_spec(f"{name}.rule") is not None:
            importlib.import_module(f"{name}.rule")


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
