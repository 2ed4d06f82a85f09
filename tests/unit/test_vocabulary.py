"""The rules' vocabulary is a value built from the capability list and handed to the loaders, never
a registry filled at import (issue 24 item 5): two vocabularies used side by side in one process
give different answers, importing a capability's rule module changes nothing, and the composers
run in their declared places. Would fail if a process-wide registry came back."""

from __future__ import annotations

import importlib

import pytest

from orthanc_plugin import capabilities
from orthanc_plugin.approvals.rule import hold_first
from orthanc_plugin.contours.rule import OverlayAction
from orthanc_plugin.deid.rule import AnonymizeAction
from orthanc_plugin.reception import ReceptionGate, ReceptionSettings
from orthanc_plugin.rules import CORE_VOCABULARY, RulesError, load_rules_text
from orthanc_plugin.rules.derivations import FoldForwardsInto
from orthanc_plugin.transform.rule import fold_into_forwards

EXPORT = ("rules:\n  - name: r\n    on: instance\n    match: {}\n"
          "    actions: [{export: /tmp/out}]\n")
COMPRESS = ("rules:\n  - name: r\n    on: instance\n    match: {}\n"
            "    actions: [{compress: rle-lossless}, {forward: ARCHIVE}]\n")


def test_two_vocabularies_side_by_side_give_different_answers() -> None:
    gateway = capabilities.vocabulary()
    for _ in range(2):   # the gateway's use in between leaves the core's as it was
        with pytest.raises(RulesError, match=r"unknown action 'export' \(expected one of: "
                                             r"forward\)"):
            load_rules_text(EXPORT)
        (rule,) = load_rules_text(EXPORT, vocabulary=gateway).rules
        assert type(rule.actions[0]).__name__ == "ExportAction"
    with pytest.raises(RulesError, match=r"unknown key 'harvests'"):
        load_rules_text("rules: []\nharvests: []\n")
    assert "harvests" in load_rules_text("rules: []\nharvests: []\n",
                                         vocabulary=gateway).sections


def test_importing_a_rule_module_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    before = capabilities.vocabulary()
    rule = importlib.import_module("tests.support.compress.rule")
    assert capabilities.vocabulary() == before
    assert "compress" not in before.actions and dict(CORE_VOCABULARY.actions).keys() == {"forward"}
    with pytest.raises(RulesError, match="unknown action 'compress'"):
        capabilities.load_rules_text(COMPRESS)
    # Listed as a capability, it is in the vocabulary built from the list, and only there.
    monkeypatch.setattr(capabilities, "CAPABILITIES",
                        [*capabilities.CAPABILITIES, "tests.support.compress"])
    (action,) = capabilities.load_rules_text(COMPRESS).rules[0].actions
    assert action == rule.CompressAction("1.2.840.10008.1.2.5", ("ARCHIVE",))
    with pytest.raises(RulesError, match="unknown action 'compress'"):
        load_rules_text(COMPRESS, vocabulary=before)


def test_the_vocabulary_cannot_be_changed_in_place() -> None:
    words = capabilities.vocabulary()
    with pytest.raises(TypeError):
        words.actions["export"] = CORE_VOCABULARY.actions["forward"]  # type: ignore[index]
    with pytest.raises(TypeError):
        CORE_VOCABULARY.actions["export"] = CORE_VOCABULARY.actions["forward"]  # type: ignore[index]


def test_composers_run_in_their_declared_places() -> None:
    # hold first (it must see the actions as written), then in the capability list's order.
    assert capabilities.vocabulary().composers == (
        hold_first, FoldForwardsInto(OverlayAction), FoldForwardsInto(AnonymizeAction),
        fold_into_forwards)


def test_a_word_declared_twice_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(capabilities, "CAPABILITIES",
                        [*capabilities.CAPABILITIES, "orthanc_plugin.export"])
    with pytest.raises(ValueError, match="action 'export' is declared twice"):
        capabilities.vocabulary()


def test_two_reception_gates_mark_their_own_threads() -> None:
    # One gate per worker process, handed down: marking one marks nothing in another.
    first, second = ReceptionGate(), ReceptionGate(ReceptionSettings(enabled=False))
    with first.background():
        assert first._is_background() and not second._is_background()
