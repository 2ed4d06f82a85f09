"""Loading and validating the rules file: what loads, and the exact message of what does not."""

from __future__ import annotations

import hashlib
import textwrap
from pathlib import Path
from typing import Any

import pytest

from orthanc_plugin import capabilities
from orthanc_plugin.capabilities import load_rules_file, load_rules_text
from orthanc_plugin.rules import (
    CORE_VOCABULARY,
    AllOf,
    AnyOf,
    AnyValue,
    Cidr,
    Contains,
    Equals,
    FactCondition,
    ForwardAction,
    Glob,
    Not,
    PlanLabelCondition,
    Regex,
    RulesError,
    TagCondition,
    Trigger,
    Vocabulary,
)
from orthanc_plugin.rules import load_rules_text as load_with
from orthanc_plugin.rules.schema_actions import ActionContext

RT_PLAN_STORAGE = "1.2.840.10008.5.1.4.1.1.481.5"
TARGETS = ("ORGANO", "ARCHIVE")

EXAMPLE = """\
# lua-free-rules.yaml
rules:
  - name: Ethos adaptive plans
    description: Adaptive sessions go to the archive and to Organo
    enabled: true
    on: stable-study          # instance | stable-study
    match:                    # all conditions must hold; a list means any of its values
      calling_aet: FOLLOW
      plan_label: {contains: ADP}
      modality: [CT, RTPLAN, RTSTRUCT, RTDOSE]
      tags: {StudyDescription: {regex: "(?i)prostate"}}
    actions:
      - forward: [ORGANO, ARCHIVE]
  - name: Everything from the CT to the archive
    enabled: false
    on: instance
    match: {calling_aet: "CT*", remote_ip: {cidr: 10.1.0.0/16}}
    actions:
      - forward: ARCHIVE
"""


def one_rule(body: str, on: str = "instance", known: Any = None) -> Any:
    """Load a file whose only rule has the given (YAML) match and actions body."""
    text = (
        "rules:\n  - name: r\n    on: " + on + "\n" + textwrap.indent(textwrap.dedent(body), "    ")
    )
    return load_rules_text(text, known)


def match_of(match_yaml: str) -> AllOf:
    body = "match:\n" + textwrap.indent(textwrap.dedent(match_yaml).strip() + "\n", "  ")
    return one_rule(body + "actions: [{forward: ARCHIVE}]\n").rules[0].match


def spec_of(match_yaml: str) -> Any:
    (condition,) = match_of(match_yaml).conditions
    return condition.spec


def error_of(text: str, known: Any = None) -> RulesError:
    with pytest.raises(RulesError) as caught:
        load_rules_text(textwrap.dedent(text), known)
    return caught.value


def match_error(match_yaml: str) -> str:
    body = "match:\n" + textwrap.indent(textwrap.dedent(match_yaml).strip() + "\n", "  ")
    with pytest.raises(RulesError) as caught:
        one_rule(body + "actions: [{forward: ARCHIVE}]\n")
    return str(caught.value)


# -- what loads ---------------------------------------------------------------------------------
def test_example_file_loads_into_the_model() -> None:
    ruleset = load_rules_text(EXAMPLE, TARGETS)

    assert ruleset.sha256 == hashlib.sha256(EXAMPLE.encode()).hexdigest()
    ethos, ct = ruleset.rules
    assert (ethos.name, ethos.enabled, ethos.on) == (
        "Ethos adaptive plans",
        True,
        Trigger.STABLE_STUDY,
    )
    assert ethos.description == "Adaptive sessions go to the archive and to Organo"
    assert ethos.include_gateway_output is False
    assert ethos.actions == (ForwardAction(("ORGANO", "ARCHIVE")),)
    calling, plan, modality, tag = ethos.match.conditions
    assert calling == FactCondition("match.calling_aet", "calling_aet", Equals("FOLLOW"))
    assert plan == PlanLabelCondition("match.plan_label", Contains("ADP"))
    assert modality.spec == AnyValue(
        tuple(Equals(m) for m in ("CT", "RTPLAN", "RTSTRUCT", "RTDOSE"))
    )
    assert isinstance(tag, TagCondition)
    assert (tag.path, tag.keyword) == ("match.tags.StudyDescription", "StudyDescription")
    assert isinstance(tag.spec, Regex) and tag.spec.test("PROSTATE boost")
    assert (ct.enabled, ct.on, ct.actions) == (
        False,
        Trigger.INSTANCE,
        (ForwardAction(("ARCHIVE",)),),
    )
    assert ct.match.conditions[0].spec == Glob("CT*")
    assert isinstance(ct.match.conditions[1].spec, Cidr)


def test_for_trigger_returns_enabled_rules_of_that_trigger() -> None:
    ruleset = load_rules_text(EXAMPLE)
    assert [rule.name for rule in ruleset.for_trigger(Trigger.STABLE_STUDY)] == [
        "Ethos adaptive plans"
    ]
    assert ruleset.for_trigger(Trigger.INSTANCE) == []  # the instance rule is disabled


def test_to_json_is_the_rule_as_written_with_defaults_explicit() -> None:
    ruleset = load_rules_text(EXAMPLE)
    first, second = ruleset.to_json()
    assert first["match"]["plan_label"] == {"contains": "ADP"}
    assert first["actions"] == [{"forward": ["ORGANO", "ARCHIVE"]}]
    assert first["include_gateway_output"] is False
    assert second["description"] == ""
    assert second["on"] == "instance"
    first["match"]["calling_aet"] = "changed"  # a copy: callers cannot alter the loaded rules
    assert ruleset.to_json()[0]["match"]["calling_aet"] == "FOLLOW"


def test_load_rules_file_hashes_the_file_bytes(tmp_path: Path) -> None:
    path = tmp_path / "lua-free-rules.yaml"
    path.write_text(EXAMPLE, encoding="utf-8")
    ruleset = load_rules_file(path, TARGETS)
    assert ruleset.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert len(ruleset.rules) == 2


def test_load_rules_file_reports_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(RulesError) as caught:
        load_rules_file(tmp_path / "absent.yaml")
    assert caught.value.path == "<file>"
    assert "cannot read" in caught.value.reason and "absent.yaml" in caught.value.reason


def test_empty_rule_list_and_empty_match_are_allowed() -> None:
    assert load_rules_text("rules: []\n").rules == ()
    assert match_of("{}").conditions == ()


def test_on_key_and_values_keep_their_written_text() -> None:
    # YAML 1.1 would read `on` as true, 0012345 as octal 5349 and 2024-01-01 as a date.
    spec = spec_of("tags: {PatientID: 0012345}")
    assert spec == Equals("0012345")
    assert spec_of("tags: {StudyDate: 2024-01-01}") == Equals("2024-01-01")
    assert spec_of("tags: {SeriesNumber: 3}") == Equals("3")
    assert spec_of("modality: [NO, CT]") == AnyValue((Equals("NO"), Equals("CT")))


def test_defaults_and_flags() -> None:
    rule = one_rule("include_gateway_output: true\nmatch: {}\nactions: [{forward: A}]\n").rules[0]
    assert (rule.enabled, rule.include_gateway_output, rule.description) == (True, True, "")


# -- value specs ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("match_yaml", "expected"),
    [
        ("modality: CT", Equals("CT")),
        ("modality: {equals: CT}", Equals("CT")),
        ("modality: {equals: ct, ignore_case: true}", Equals("ct", ignore_case=True)),
        ("plan_label: {contains: ADP}", Contains("ADP")),
        ("plan_label: {contains: adp, ignore_case: true}", Contains("adp", ignore_case=True)),
        ("plan_label: {glob: 'ADP*'}", Glob("ADP*")),
        ("calling_aet: 'ETHOS*'", Glob("ETHOS*")),
        ("calling_aet: 'CT?'", Glob("CT?")),
        ("called_aet: '[AB]GATE'", Glob("[AB]GATE")),
        ("calling_aet: {equals: 'ETHOS*'}", Equals("ETHOS*")),
        ("modality: 'C*'", Equals("C*")),  # only AE titles read a bare wildcard as a glob
        ("modality: [CT]", Equals("CT")),
        ("source: REST", Equals("REST")),
        ("sop_class: RTPlanStorage", Equals(RT_PLAN_STORAGE)),
        ("sop_class: RT Plan Storage", Equals(RT_PLAN_STORAGE)),
        ("sop_class: " + RT_PLAN_STORAGE, Equals(RT_PLAN_STORAGE)),
        ("sop_class: 1.2.246.352.70.1.70", Equals("1.2.246.352.70.1.70")),  # private: kept
        ("sop_class: {contains: '481'}", Contains("481")),
    ],
)
def test_value_specs(match_yaml: str, expected: Any) -> None:
    assert spec_of(match_yaml) == expected


def test_list_mixes_scalars_and_operators() -> None:
    spec = spec_of("calling_aet: [FOLLOW, 'ETHOS*', {contains: TPS, ignore_case: true}]")
    assert spec == AnyValue((Equals("FOLLOW"), Glob("ETHOS*"), Contains("TPS", ignore_case=True)))


def test_regex_is_compiled_at_load_with_ignore_case() -> None:
    spec = spec_of("plan_label: {regex: '^adp[0-9]+$', ignore_case: true}")
    assert isinstance(spec, Regex)
    assert spec.test("ADP12") and not spec.test("xADP12")


def test_cidr_is_parsed_for_remote_ip() -> None:
    spec = spec_of("remote_ip: [{cidr: 10.1.2.3/16}, 192.168.0.7]")
    assert isinstance(spec, AnyValue)
    assert str(spec.options[0].network) == "10.1.0.0/16"
    assert spec.options[1] == Equals("192.168.0.7")


def test_nested_not_and_any() -> None:
    match = match_of(
        """
        not: {modality: RTDOSE}
        any:
          - calling_aet: FOLLOW
          - {called_aet: GATE, tags: {PatientID: {contains: X}}}
        """
    )
    negated, alternatives = match.conditions
    assert negated == Not(
        "match.not",
        AllOf("match.not", (FactCondition("match.not.modality", "modality", Equals("RTDOSE")),)),
    )
    assert isinstance(alternatives, AnyOf)
    assert [option.path for option in alternatives.options] == ["match.any[0]", "match.any[1]"]
    assert [c.path for c in alternatives.options[1].conditions] == [
        "match.any[1].called_aet",
        "match.any[1].tags.PatientID",
    ]


# -- actions --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "forward",
    ["ARCHIVE", "[ARCHIVE]", "{targets: [ARCHIVE]}"],
)
def test_forward_forms(forward: str) -> None:
    rule = one_rule(f"match: {{}}\nactions:\n  - forward: {forward}\n", known=TARGETS).rules[0]
    assert rule.actions == (ForwardAction(("ARCHIVE",)),)


def test_unknown_targets_are_not_checked_without_known_targets() -> None:
    rule = one_rule("match: {}\nactions: [{forward: [ANYWHERE]}]\n").rules[0]
    assert rule.actions == (ForwardAction(("ANYWHERE",)),)


def test_actions_are_parsed_through_the_vocabulary_given() -> None:
    seen: list[tuple[Any, str, ActionContext]] = []

    def parse_export(raw: Any, path: str, context: ActionContext) -> Any:
        seen.append((raw, path, context))
        return ("export", raw)

    words = Vocabulary({**CORE_VOCABULARY.actions, "export": parse_export})
    rule = load_with("rules:\n  - name: r\n    on: instance\n    match: {}\n"
                     "    actions: [{export: /tmp/out}]\n", TARGETS, vocabulary=words).rules[0]
    assert rule.actions == (("export", "/tmp/out"),)
    assert seen[0][1] == "rules[0].actions[0].export"
    assert seen[0][2].known_targets == TARGETS


# -- errors: each names its exact path ------------------------------------------------------------
VALID_RULE = "  - {name: %s, on: instance, match: {}, actions: [{forward: ARCHIVE}]}\n"


def test_error_has_path_reason_and_str() -> None:
    third = (
        "  - name: c\n"
        "    on: stable-study\n"
        "    match: {plan_label: {contain: ADP}}\n"
        "    actions: [{forward: ARCHIVE}]\n"
    )
    error = error_of("rules:\n" + VALID_RULE % "a" + VALID_RULE % "b" + third)
    assert isinstance(error, ValueError)
    assert error.path == "rules[2].match.plan_label"
    assert (
        error.reason
        == "unknown operator 'contain' (expected one of: contains, equals, glob, regex)"
    )
    assert str(error) == f"{error.path}: {error.reason}"


def test_unknown_target_names_the_list_item() -> None:
    error = error_of(
        "rules:\n  - {name: a, on: instance, match: {}, actions: [{forward: [ORGANO, ARCHVE]}]}\n",
        known=TARGETS,
    )
    assert (
        str(error)
        == "rules[0].actions[0].forward[1]: unknown target 'ARCHVE' (known: ARCHIVE, ORGANO)"
    )


def test_unknown_target_with_no_known_targets() -> None:
    error = error_of("rules:\n" + VALID_RULE % "a", known=[])
    assert str(error) == "rules[0].actions[0].forward: unknown target 'ARCHIVE' (known: none)"


def test_unknown_dicom_keyword() -> None:
    error = error_of(
        "rules:\n"
        + VALID_RULE % "a"
        + "  - {name: b, on: instance, match: {tags: {StudyDescrption: x}},"
        + " actions: [{forward: A}]}\n"
    )
    assert error.path == "rules[1].match.tags.StudyDescrption"
    assert error.reason.startswith("unknown DICOM keyword")
    assert "did you mean StudyDescription?" in error.reason


def test_unknown_trigger() -> None:
    error = error_of("rules:\n  - {name: a, on: stable, match: {}, actions: [{forward: A}]}\n")
    assert (
        str(error)
        == "rules[0].on: unknown trigger 'stable' (expected one of: instance, plan-complete, stable-study)"
    )


def test_yaml_syntax_error_names_the_line() -> None:
    error = error_of("rules:\n  - name: a\n    on: instance\n   match: {}\n")
    assert error.path == "<file>"
    assert error.reason.startswith("YAML error at line 4, column 4:")


def test_yaml_duplicate_key_is_refused_with_its_line() -> None:
    error = error_of(
        "rules:\n  - name: a\n    on: instance\n    match: {}\n    actions: [{forward: A}]\n"
        "    on: stable-study\n"
    )
    assert str(error) == "<file>: YAML error at line 6, column 5: duplicate key 'on'"


def test_yaml_merge_keys_may_be_overridden() -> None:
    ruleset = load_rules_text(
        "rules:\n  - &base {name: a, on: instance, match: {}, actions: [{forward: A}]}\n"
        "  - <<: *base\n    name: b\n"
    )
    assert [rule.name for rule in ruleset.rules] == ["a", "b"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "<file>: the file is empty (expected a mapping with a 'rules' list)"),
        ("- a\n", "<file>: expected a mapping with a 'rules' list, got a list"),
        ("{}\n", "<file>: missing 'rules' (expected a list of rules)"),
        ("rule: []\n",
         "<file>: unknown key 'rule' (expected one of: cleanup, destinations, groups, harvests, rules)"),
        ("rules: {}\n", "rules: expected a list of rules, got a mapping"),
        ("rules:\n", "rules: expected a list of rules, got nothing"),
        ("rules: [a]\n", "rules[0]: expected a rule mapping, got 'a'"),
        (
            "rules:\n" + VALID_RULE % "same" + VALID_RULE % "other" + VALID_RULE % "same",
            "rules[2].name: duplicate rule name 'same' (also rules[0])",
        ),
        (
            "rules:\n  - {name: a, on: instance, match: {}, actions: []}\n",
            "rules[0].actions: expected at least one action",
        ),
        (
            "rules:\n  - {name: a, on: instance, match: {}}\n",
            "rules[0]: missing 'actions' (expected a list such as [{forward: [ARCHIVE]}])",
        ),
        (
            "rules:\n  - {name: a, on: instance, actions: [{forward: A}]}\n",
            "rules[0]: missing 'match' (write 'match: {}' to match every instance)",
        ),
        (
            "rules:\n  - {name: a, match: {}, actions: [{forward: A}]}\n",
            "rules[0]: missing 'on' (expected one of: instance, plan-complete, stable-study)",
        ),
        (
            "rules:\n  - {on: instance, match: {}, actions: [{forward: A}]}\n",
            "rules[0]: missing 'name'",
        ),
        (
            "rules:\n  - {name: ' ', on: instance, match: {}, actions: [{forward: A}]}\n",
            "rules[0].name: expected a non-empty name, got ' '",
        ),
        (
            "rules:\n  - {name: a, enable: true, on: instance, match: {},"
            " actions: [{forward: A}]}\n",
            "rules[0]: unknown key 'enable' (expected one of: actions, complete_within, "
            "description, enabled, include_gateway_output, match, name, on, priority, then)",
        ),
        (
            "rules:\n  - {name: a, enabled: yes, on: instance, match: {},"
            " actions: [{forward: A}]}\n",
            "rules[0].enabled: expected true or false, got 'yes'",
        ),
        (
            "rules:\n  - {name: a, on: instance, include_gateway_output: 1, match: {},"
            " actions: [{forward: A}]}\n",
            "rules[0].include_gateway_output: expected true or false, got '1'",
        ),
        (
            "rules:\n  - {name: a, on: [instance], match: {}, actions: [{forward: A}]}\n",
            "rules[0].on: unknown trigger a list (expected one of: instance, plan-complete, stable-study)",
        ),
        (
            "rules:\n  - {name: a, on: instance, match: [], actions: [{forward: A}]}\n",
            "rules[0].match: expected a mapping of conditions, got a list",
        ),
        (
            "rules:\n  - {name: a, on: instance, match: {}, actions: {forward: A}}\n",
            "rules[0].actions: expected a list of actions, got a mapping",
        ),
        (
            "rules:\n  - {name: a, on: instance, match: {}, actions: [{foward: A}]}\n",
            # Every capability's parser, as the gateway's vocabulary holds them.
            "rules[0].actions[0]: unknown action 'foward' (expected one of: "
            f"{', '.join(sorted(capabilities.vocabulary().actions))})",
        ),
        (
            "rules:\n  - {name: a, on: instance, match: {}, actions: [forward]}\n",
            "rules[0].actions[0]: expected a mapping with one action such as forward,"
            " got 'forward'",
        ),
        (
            "rules:\n  - {name: a, on: instance, match: {}, actions: [{forward: A, export: B}]}\n",
            "rules[0].actions[0]: expected a mapping with one action such as forward, got 2 keys",
        ),
        (
            "rules:\n  - {name: a, on: instance, match: {}, actions: [{forward: [A, B, A]}]}\n",
            "rules[0].actions[0].forward[2]: duplicate target 'A'",
        ),
        (
            "rules:\n  - {name: a, on: instance, match: {}, actions: [{forward: []}]}\n",
            "rules[0].actions[0].forward: expected at least one target",
        ),
        (
            "rules:\n  - {name: a, on: instance, match: {}, actions: [{forward: ''}]}\n",
            "rules[0].actions[0].forward: expected a target name, got empty text",
        ),
        (
            "rules:\n  - {name: a, on: instance, match: {}, actions: [{forward: [A, [B]]}]}\n",
            "rules[0].actions[0].forward[1]: expected a target name, got a list",
        ),
        (
            "rules:\n  - {name: a, on: instance, match: {}, actions: [{forward: {target: [A]}}]}\n",
            "rules[0].actions[0].forward: unknown key 'target' (expected one of: targets)",
        ),
        (
            "rules:\n  - {name: a, on: instance, match: {}, actions: [{forward: {targets: A}}]}\n",
            "rules[0].actions[0].forward.targets: expected a list of target names, got 'A'",
        ),
        (
            "rules:\n  - {name: a, on: instance, match: {},"
            " actions: [{forward: {targets: [A, A]}}]}\n",
            "rules[0].actions[0].forward.targets[1]: duplicate target 'A'",
        ),
    ],
)
def test_document_errors(text: str, expected: str) -> None:
    assert str(error_of(text)) == expected


@pytest.mark.parametrize(
    ("match_yaml", "expected"),
    [
        (
            "calling_ae: FOLLOW",
            "rules[0].match: unknown condition 'calling_ae' (expected one of: any, called_aet, "
            "calling_aet, modality, not, plan_label, remote_ip, sop_class, source, tags)",
        ),
        (
            "plan_label: {regex: '(ADP'}",
            "rules[0].match.plan_label.regex: invalid regular expression '(ADP': "
            "missing ): (ADP (RE2)",
        ),
        (
            "modality: [CT, {regex: '[z-a]'}]",
            "rules[0].match.modality[1].regex: invalid regular expression '[z-a]': "
            "invalid character class range: z-a (RE2)",
        ),
        (
            "modality: {contains: C, regex: C}",
            "rules[0].match.modality: expected exactly one operator "
            "(one of: contains, equals, glob, regex), got contains, regex",
        ),
        (
            "modality: {ignore_case: true}",
            "rules[0].match.modality: expected exactly one operator "
            "(one of: contains, equals, glob, regex)",
        ),
        (
            "remote_ip: {cdir: 10.0.0.0/8}",
            "rules[0].match.remote_ip: unknown operator 'cdir' "
            "(expected one of: cidr, contains, equals, glob, regex)",
        ),
        (
            "modality: {cidr: 10.0.0.0/8}",
            "rules[0].match.modality: unknown operator 'cidr' "
            "(expected one of: contains, equals, glob, regex)",
        ),
        (
            "remote_ip: {cidr: 10.0.0.0/33}",
            "rules[0].match.remote_ip.cidr: invalid network: "
            "'10.0.0.0/33' does not appear to be an IPv4 or IPv6 network",
        ),
        (
            "remote_ip: {cidr: 10.0.0.0/8, ignore_case: true}",
            "rules[0].match.remote_ip.ignore_case: does not apply to cidr",
        ),
        (
            "modality: {equals: CT, ignore_case: yes}",
            "rules[0].match.modality.ignore_case: expected true or false, got 'yes'",
        ),
        (
            "plan_label: {contains: ''}",
            "rules[0].match.plan_label.contains: expected non-empty text",
        ),
        ("modality: []", "rules[0].match.modality: expected at least one value"),
        (
            "modality: [CT, [MR]]",
            "rules[0].match.modality[1]: expected a value or an operator mapping,"
            " got a list in a list",
        ),
        (
            "modality:",
            "rules[0].match.modality: expected text, got nothing",
        ),
        (
            "modality: true",
            "rules[0].match.modality: expected text, got true (quote it to mean the text 'true')",
        ),
        (
            "plan_label: {contains: [A]}",
            "rules[0].match.plan_label.contains: expected text, got a list",
        ),
        (
            "source: DICM",
            "rules[0].match.source: unknown source 'DICM' "
            "(expected one of: DICOM, GATEWAY, IMPORT_FOLDER, REST)",
        ),
        (
            "sop_class: [CTImageStorage, {equals: RTPlanStorag}]",
            "rules[0].match.sop_class[1].equals: unknown SOP class 'RTPlanStorag' (expected a UID, "
            "a keyword such as RTPlanStorage or a name such as 'RT Plan Storage') "
            "(did you mean RTPlanStorage?)",
        ),
        (
            "tags: {ReferencedStudySequence: x}",
            "rules[0].match.tags.ReferencedStudySequence: is a sequence: "
            "it has no text value to compare",
        ),
        (
            "tags: {patientid: x}",
            "rules[0].match.tags.patientid: unknown DICOM keyword (did you mean PatientID?)",
        ),
        ("tags: {}", "rules[0].match.tags: expected at least one DICOM keyword"),
        (
            "tags: [PatientID]",
            "rules[0].match.tags: expected a mapping of DICOM keyword to value, got a list",
        ),
        (
            "tags: {PatientID: {regex: '['}}",
            "rules[0].match.tags.PatientID.regex: invalid "
            "regular expression '[': missing ]: [ (RE2)",
        ),
        ("not: {}", "rules[0].match.not: expected at least one condition"),
        (
            "not: {modalty: CT}",
            "rules[0].match.not: unknown condition 'modalty' (expected one of: "
            "any, called_aet, calling_aet, modality, not, plan_label, remote_ip, sop_class,"
            " source, "
            "tags)",
        ),
        ("any: []", "rules[0].match.any: expected at least one condition mapping"),
        (
            "any: {modality: CT}",
            "rules[0].match.any: expected a list of condition mappings, got a mapping",
        ),
        ("any: [{modality: CT}, {}]", "rules[0].match.any[1]: expected at least one condition"),
        (
            "any: [{not: {tags: {StudyDescrption: x}}}]",
            "rules[0].match.any[0].not.tags.StudyDescrption: unknown DICOM keyword "
            "(did you mean StudyDescription?)",
        ),
    ],
)
def test_match_errors(match_yaml: str, expected: str) -> None:
    assert match_error(match_yaml) == expected
