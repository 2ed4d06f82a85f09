"""Example capability (the README's "Adding an action"): compress to RLE Lossless, then forward.

Not part of the gateway: the contract test tests/unit/test_adding_an_action.py adds it with one
line (`CAPABILITIES`) to show that a new derivation is one package of the usual shape. Shaped as
every capability: rule.py (the action, its parser, its planner), action.py (the executor's step
and what follows it), install() here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tests.support.compress.action import CompressExecutor
from tests.support.compress.rule import JOB_ACTION, CompressAction, plan_compress

if TYPE_CHECKING:
    from orthanc_plugin.context import CapabilityContext


def install(ctx: CapabilityContext) -> None:
    ctx.registry.add_planner(CompressAction, plan_compress)
    ctx.registry.add_executor(JOB_ACTION, CompressExecutor(ctx.jobs))
