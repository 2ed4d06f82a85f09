"""One composer for every derivation (rules/derivations.py): the forwards after it send its output,
at most one per rule, nothing but forwards after it, a target once. Shown with a derivation the
gateway does not have, as a new capability would add it."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

import pytest

from orthanc_plugin.rules.derivations import FoldForwardsInto
from orthanc_plugin.rules.errors import RulesError
from orthanc_plugin.rules.model import ForwardAction


@dataclass(frozen=True)
class CompressAction:
    rule_key: ClassVar[str] = "compress"
    output_words: ClassVar[str] = "the compressed copy"

    syntax: str
    targets: tuple[str, ...] = ()


@dataclass(frozen=True)
class OtherAction:
    what: str


FOLD = FoldForwardsInto(CompressAction)


def test_forwards_after_a_derivation_become_its_targets_and_those_before_stay() -> None:
    before = ForwardAction(("ARCHIVE",))
    actions = (before, CompressAction("jpeg-ls"), ForwardAction(("VIEWER",)),
               ForwardAction(("RESEARCH", "TEACHING")))
    assert FOLD(actions, "rules[0].actions") == (
        before, CompressAction("jpeg-ls", ("VIEWER", "RESEARCH", "TEACHING")))
    assert FOLD((OtherAction("x"), before), "p") == (OtherAction("x"), before)


@pytest.mark.parametrize("actions, where, message", [
    ((CompressAction("a"), CompressAction("b")), "p[1]", "only one compress per rule"),
    ((CompressAction("a"), OtherAction("x")), "p[1]",
     "only forward may follow compress (it sends the compressed copy)"),
    ((CompressAction("a"), ForwardAction(("A",)), ForwardAction(("B", "A"))), "p[2]",
     "duplicate target 'A'"),
])
def test_what_cannot_follow_a_derivation_is_refused_with_its_place(
        actions: tuple[object, ...], where: str, message: str) -> None:
    with pytest.raises(RulesError, match=re.escape(message)) as refused:
        FOLD(actions, "p")
    assert refused.value.path == where


def test_a_derivation_registers_its_composer_once() -> None:
    assert FoldForwardsInto(CompressAction) == FOLD
    assert FoldForwardsInto(CompressAction) != FoldForwardsInto(OtherAction)
