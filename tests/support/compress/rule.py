"""The `compress` rule action: the following forwards send the compressed copy.

    - compress: rle-lossless
    - forward: [ARCHIVE]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from orthanc_plugin.jobs.executors import PlannedJob
from orthanc_plugin.rules.derivations import FoldForwardsInto
from orthanc_plugin.rules.errors import RulesError
from orthanc_plugin.rules.schema_actions import ActionComposer, ActionContext, ActionParser
from orthanc_plugin.rules.wording import kind_of, one_of

JOB_ACTION = "compress"
LOCAL_TARGET = "ORTHANC"   # compressed and kept, sent nowhere
SYNTAXES = {"rle-lossless": "1.2.840.10008.1.2.5"}


@dataclass(frozen=True)
class CompressAction:
    rule_key: ClassVar[str] = JOB_ACTION
    output_words: ClassVar[str] = "the compressed copy"

    transfer_syntax: str
    targets: tuple[str, ...] = ()   # the following forwards, folded in (rules/derivations.py)

    @property
    def job_target(self) -> str:
        return "+".join(self.targets) or LOCAL_TARGET


def parse_compress(raw: Any, path: str, context: ActionContext) -> CompressAction:
    if raw not in SYNTAXES:
        raise RulesError(path, f"unknown compression {kind_of(raw)} "
                               f"(expected one of: {one_of(SYNTAXES)})")
    return CompressAction(SYNTAXES[raw])


def plan_compress(action: CompressAction) -> list[PlannedJob]:
    return [PlannedJob(JOB_ACTION, action.job_target)]


# What it adds to the rules' vocabulary: its action, and the forwards after it send its copy.
ACTIONS: dict[str, ActionParser] = {JOB_ACTION: parse_compress}
COMPOSERS: tuple[ActionComposer, ...] = (FoldForwardsInto(CompressAction),)
