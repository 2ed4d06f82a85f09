"""Actions that derive an output (a de-identified copy, a compressed copy...) and the forwards after
them: one composer, written once, that every derivation declares the same way in its rule.py:

    COMPOSERS = (FoldForwardsInto(AnonymizeAction),)

    - anonymize: {profile: full}
    - forward: [RESEARCH]          # sends the derived output, never the original

The forwards written after a derivation are folded into it at parse time: they become its
`targets`, the intake never queues the originals for them, and the derivation's executor queues
its output for them once it is stored (jobs/follow_ups.py). Anything else after a derivation is
refused: it would act on the original, which a reader of the rule would not expect.

Pure: the rules package imports no capability; a capability hands its action class in, and
capabilities.vocabulary() gathers the composers (rules/schema_actions.py, Vocabulary).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar, Protocol

from orthanc_plugin.rules.errors import RulesError
from orthanc_plugin.rules.model import Action, ForwardAction


class Derivation(Protocol):
    """A rule action whose output the following forwards send (a frozen dataclass)."""

    # The action's name in the rules file, and what its output is called in an error message.
    rule_key: ClassVar[str]
    output_words: ClassVar[str]

    @property
    def targets(self) -> tuple[str, ...]: ...


@dataclass(frozen=True)
class FoldForwardsInto:
    """The composer (Vocabulary.composers) of one derivation class: at most one per rule, and only
    forwards after it, each folded into its targets (a target written twice is refused)."""

    derivation: type[Any]

    def __call__(self, actions: tuple[Action, ...], path: str) -> tuple[Action, ...]:
        kind = self.derivation
        folded: list[Any] = []
        derived: Any = None
        position = 0
        for index, action in enumerate(actions):
            if isinstance(action, kind):
                if derived is not None:
                    raise RulesError(f"{path}[{index}]", f"only one {kind.rule_key} per rule")
                derived, position = action, len(folded)
                folded.append(action)
            elif derived is None:
                folded.append(action)
            elif isinstance(action, ForwardAction):
                duplicate = set(action.targets) & set(derived.targets)
                if duplicate:
                    raise RulesError(f"{path}[{index}]",
                                     f"duplicate target '{sorted(duplicate)[0]}'")
                derived = replace(derived, targets=derived.targets + action.targets)
                folded[position] = derived
            else:
                raise RulesError(
                    f"{path}[{index}]", f"only forward may follow {kind.rule_key} (it sends "
                    f"{kind.output_words}); put other actions before it")
        return tuple(folded)
