"""What the copy a destination receives is made of: a rule's steps, then the destination's own.

A step is one change to the dataset (names normalized, tags coerced, a site hook); the transfer
syntax is applied last, to what the steps produced. Values only; copy.py makes the copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from orthanc_plugin.transform.coerce import Coercion
from orthanc_plugin.transform.syntax import AS_RECEIVED


@dataclass(frozen=True)
class NormalizeStep:
    """ROI names and plan labels through the TG-263 table and the site's synonyms."""

    site_synonyms: Path | None = None
    roi_names: bool = True
    plan_label: bool = True


@dataclass(frozen=True)
class CoerceStep:
    coercion: Coercion


@dataclass(frozen=True)
class HookStep:
    """A site script run in its own process (hooks.py) on each instance."""

    script: Path
    seconds: float = 10.0
    memory_mb: int = 512
    network: bool = False
    changes_uid: bool = False


Step = NormalizeStep | CoerceStep | HookStep


@dataclass(frozen=True)
class CopySpec:
    steps: tuple[Step, ...] = ()
    transfer_syntax: str = AS_RECEIVED

    def __bool__(self) -> bool:
        return bool(self.steps) or self.transfer_syntax != AS_RECEIVED


def combined(rule_steps: tuple[object, ...], destination_coercion: Coercion | None,
             transfer_syntax: str) -> CopySpec:
    """The rule's steps first (they decide what the copy says), then the destination's coercion
    (what that receiver needs whatever the rule), then its transfer syntax."""
    steps = [step for step in rule_steps if isinstance(step, (NormalizeStep, CoerceStep, HookStep))]
    if destination_coercion:
        steps.append(CoerceStep(destination_coercion))
    return CopySpec(tuple(steps), transfer_syntax or AS_RECEIVED)
