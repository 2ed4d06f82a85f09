"""The plan-complete trigger and its options in the rules file."""

from __future__ import annotations

import pytest

from orthanc_plugin.rules import RulesError, Trigger, load_rules_text


def rules(extra: str, on: str = "plan-complete") -> str:
    return f"rules:\n  - {{name: a, on: {on}, match: {{}}, actions: [{{forward: A}}]{extra}}}\n"


@pytest.mark.parametrize(("written", "seconds"), [("10m", 600.0), ("90s", 90.0), ("2h", 7200.0),
                                                   ("45", 45.0), ("1.5m", 90.0)])
def test_complete_within_durations(written: str, seconds: float) -> None:
    (rule,) = load_rules_text(rules(f", complete_within: '{written}', then: forward-incomplete")).rules
    assert rule.on is Trigger.PLAN_COMPLETE
    assert rule.complete_within_seconds == seconds
    assert rule.then == "forward-incomplete"


def test_defaults_wait_forever_and_hold() -> None:
    (rule,) = load_rules_text(rules("")).rules
    assert rule.complete_within_seconds is None and rule.then == "hold"


@pytest.mark.parametrize(("extra", "on", "message"), [
    (", complete_within: soon", "plan-complete",
     "rules[0].complete_within: expected a duration such as 90s, 10m, 2h or 30d, got 'soon'"),
    (", complete_within: 10m, then: drop", "plan-complete",
     "rules[0].then: unknown value 'drop' (expected one of: forward-incomplete, hold)"),
    (", then: hold", "plan-complete",
     "rules[0].then: needs 'complete_within' (how long to wait first)"),
    (", complete_within: 10m", "stable-study",
     "rules[0].complete_within: only for 'on: plan-complete' rules"),
])
def test_errors_name_the_place(extra: str, on: str, message: str) -> None:
    with pytest.raises(RulesError) as caught:
        load_rules_text(rules(extra, on))
    assert str(caught.value) == message
