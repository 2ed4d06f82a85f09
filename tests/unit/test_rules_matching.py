"""Evaluating rules against instance facts: which instances match, and why not when none do."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from orthanc_plugin.rules import Evaluation, InstanceFacts, Rule, evaluate, load_rules_text

RT_PLAN_STORAGE = "1.2.840.10008.5.1.4.1.1.481.5"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


class RecordingTags(Mapping[str, str]):
    """Stands in for the lazy tag mapping: records each read and refuses to be listed."""

    def __init__(self, values: dict[str, str]) -> None:
        self._values = values
        self.asked: list[str] = []

    def __getitem__(self, keyword: str) -> str:
        self.asked.append(keyword)
        return self._values[keyword]

    def __iter__(self) -> Iterator[str]:
        raise AssertionError("the tags of an instance must never be listed")

    def __len__(self) -> int:
        raise AssertionError("the tags of an instance must never be counted")


def rule(match_yaml: str, *, on: str = "stable-study", extra: str = "") -> Rule:
    text = (
        "rules:\n  - name: r\n    on: "
        + on
        + "\n"
        + textwrap.indent(extra, "    ")
        + "    match:\n"
        + textwrap.indent(textwrap.dedent(match_yaml).strip() + "\n", "      ")
        + "    actions: [{forward: ARCHIVE}]\n"
    )
    return load_rules_text(text).rules[0]


def facts(instance_id: str = "i1", **values: Any) -> InstanceFacts:
    values.setdefault("calling_aet", "FOLLOW")
    values.setdefault("modality", "CT")
    return InstanceFacts(instance_id=instance_id, **values)


def ids(match_yaml: str, *instances: InstanceFacts, **kwargs: Any) -> tuple[str, ...]:
    return evaluate(rule(match_yaml, **kwargs), instances).instance_ids


def why(match_yaml: str, *instances: InstanceFacts) -> str:
    evaluation = evaluate(rule(match_yaml), instances)
    assert not evaluation.matched and evaluation.instance_ids == ()
    return f"{evaluation.failed_condition}: {evaluation.reason}"


def study() -> list[InstanceFacts]:
    """An adaptive session: CT, structures, an ADP plan and its dose, plus an MR."""
    labels = ("ADP_1", "SCHED1")
    return [
        facts("ct", modality="CT", study_plan_labels=labels),
        facts("mr", modality="MR", study_plan_labels=labels),
        facts("rs", modality="RTSTRUCT", study_plan_labels=labels),
        facts("rp", modality="RTPLAN", sop_class_uid=RT_PLAN_STORAGE, study_plan_labels=labels),
        facts("rd", modality="RTDOSE", study_plan_labels=labels),
    ]


# -- what matches ---------------------------------------------------------------------------------
def test_example_rule_forwards_the_selected_modalities_of_an_adp_study() -> None:
    instances = study()
    evaluation = evaluate(
        rule(
            """
            calling_aet: FOLLOW
            plan_label: {contains: ADP}
            modality: [CT, RTPLAN, RTSTRUCT, RTDOSE]
            """
        ),
        instances,
    )
    assert evaluation == Evaluation(
        "r", True, ("ct", "rs", "rp", "rd"), "all conditions hold", None
    )


def test_empty_match_selects_every_instance() -> None:
    assert ids("{}", *study()) == ("ct", "mr", "rs", "rp", "rd")


@pytest.mark.parametrize(
    ("match_yaml", "value", "expected"),
    [
        ("calling_aet: FOLLOW", "FOLLOW", True),
        ("calling_aet: FOLLOW", "follow", False),
        ("calling_aet: {equals: follow, ignore_case: true}", "FOLLOW", True),
        ("calling_aet: 'ETHOS*'", "ETHOS_01", True),
        ("calling_aet: 'ETHOS*'", "ethos_01", False),
        ("calling_aet: {glob: 'ethos*', ignore_case: true}", "ETHOS_01", True),
        ("calling_aet: 'CT?'", "CT1", True),
        ("calling_aet: 'CT?'", "CT12", False),
        ("calling_aet: '[AB]SCU'", "BSCU", True),
        ("calling_aet: '[AB]SCU'", "CSCU", False),
        ("calling_aet: {equals: 'ETHOS*'}", "ETHOS_01", False),
        ("calling_aet: {equals: 'ETHOS*'}", "ETHOS*", True),
        ("calling_aet: {contains: HOS}", "ETHOS_01", True),
        ("calling_aet: {contains: hos}", "ETHOS_01", False),
        ("calling_aet: {contains: hos, ignore_case: true}", "ETHOS_01", True),
        ("calling_aet: {regex: '^ETH.S_[0-9]+$'}", "ETHOS_01", True),
        ("calling_aet: {regex: 'OS_0'}", "ETHOS_01", True),  # search, not a full match
        ("calling_aet: {regex: '^eth', ignore_case: true}", "ETHOS_01", True),
        ("calling_aet: {regex: '^eth'}", "ETHOS_01", False),
        ("calling_aet: [A, 'ETH*', {contains: ZZ}]", "ETHOS", True),
        ("calling_aet: [A, 'ETX*', {contains: ZZ}]", "ETHOS", False),
    ],
)
def test_calling_aet_operators(match_yaml: str, value: str, expected: bool) -> None:
    assert bool(ids(match_yaml, facts(calling_aet=value))) is expected


@pytest.mark.parametrize(
    ("match_yaml", "address", "expected"),
    [
        ("remote_ip: {cidr: 10.1.0.0/16}", "10.1.200.3", True),
        ("remote_ip: {cidr: 10.1.0.0/16}", "10.2.0.1", False),
        ("remote_ip: {cidr: 10.1.0.0/16}", "::ffff:10.1.2.3", True),  # dual-stack listener
        ("remote_ip: {cidr: 'fd00::/8'}", "fd12::1", True),
        ("remote_ip: {cidr: 'fd00::/8'}", "10.1.2.3", False),
        ("remote_ip: {cidr: 10.1.0.0/16}", "", False),
        ("remote_ip: {cidr: 10.1.0.0/16}", "not-an-ip", False),
        ("remote_ip: [{cidr: 10.1.0.0/16}, 192.168.0.7]", "192.168.0.7", True),
        ("remote_ip: {glob: '192.168.*'}", "192.168.4.4", True),
    ],
)
def test_remote_ip(match_yaml: str, address: str, expected: bool) -> None:
    assert bool(ids(match_yaml, facts(remote_ip=address))) is expected


@pytest.mark.parametrize(
    ("match_yaml", "expected"),
    [
        ("called_aet: 'GATE*'", ("a",)),
        ("source: REST", ("b",)),
        ("sop_class: RTPlanStorage", ("b",)),
        ("sop_class: RT Plan Storage", ("b",)),
        ("sop_class: [CTImageStorage, RTPlanStorage]", ("a", "b")),
        ("sop_class: {contains: '.481.'}", ("b",)),
        ("modality: {regex: '^RT'}", ("b",)),
    ],
)
def test_other_facts(match_yaml: str, expected: tuple[str, ...]) -> None:
    a = facts("a", called_aet="GATEWAY_1", sop_class_uid=CT_IMAGE_STORAGE)
    b = facts(
        "b", called_aet="OTHER", source="REST", sop_class_uid=RT_PLAN_STORAGE, modality="RTPLAN"
    )
    assert ids(match_yaml, a, b) == expected


def test_plan_label_holds_for_every_instance_of_a_study_with_such_a_plan() -> None:
    assert ids("plan_label: {regex: '^ADP_[0-9]+$'}", *study()) == ("ct", "mr", "rs", "rp", "rd")
    assert ids("plan_label: ADP", *study()) == ()  # equals, not contains
    assert ids("plan_label: {contains: adp, ignore_case: true}", *study())


def test_tags_compare_as_text_and_a_missing_tag_fails() -> None:
    with_tags = facts("a", tags={"SeriesNumber": "3", "StudyDescription": "Prostate VMAT"})
    without = facts("b", tags={})
    assert ids("tags: {SeriesNumber: 3}", with_tags, without) == ("a",)
    assert ids("tags: {StudyDescription: {regex: '(?i)prostate'}}", with_tags, without) == ("a",)
    # A missing value fails the condition, so its negation holds.
    assert ids("not: {tags: {StudyDescription: {contains: Prostate}}}", with_tags, without) == (
        "b",
    )


def test_only_the_named_tags_are_read_and_each_once() -> None:
    tags = RecordingTags({"StudyDescription": "Prostate", "PatientID": "P1", "SeriesNumber": "2"})
    instance = facts(tags=tags)
    evaluation = evaluate(
        rule(
            """
            tags: {StudyDescription: {contains: Prostate}}
            any:
              - tags: {StudyDescription: Brain}
              - tags: {PatientID: P1}
            """
        ),
        [instance],
    )
    assert evaluation.matched
    assert sorted(tags.asked) == ["PatientID", "StudyDescription"]


def test_tags_are_not_read_for_instances_other_conditions_already_exclude() -> None:
    # The tag condition is written first, yet the in-memory modality check runs before it.
    ct_tags, mr_tags = RecordingTags({"PatientID": "P1"}), RecordingTags({"PatientID": "P1"})
    instances = [facts("ct", tags=ct_tags), facts("mr", modality="MR", tags=mr_tags)]
    assert ids("tags: {PatientID: P1}\nmodality: CT", *instances) == ("ct",)
    assert (ct_tags.asked, mr_tags.asked) == (["PatientID"], [])


def test_not_and_any() -> None:
    instances = study()
    assert ids("not: {modality: [MR, RTDOSE]}", *instances) == ("ct", "rs", "rp")
    assert ids("any: [{modality: MR}, {sop_class: RTPlanStorage}]", *instances) == ("mr", "rp")
    assert ids("not: {any: [{modality: MR}, {modality: CT}]}", *instances) == ("rs", "rp", "rd")
    # Conditions of one `any` alternative must hold together.
    assert ids("any: [{modality: CT, calling_aet: OTHER}, {modality: RTDOSE}]", *instances) == (
        "rd",
    )


def test_gateway_output_is_ignored_unless_the_rule_includes_it() -> None:
    own = facts("own", source="GATEWAY")
    received = facts("received")
    assert ids("{}", own, received) == ("received",)
    assert ids("{}", own, received, extra="include_gateway_output: true\n") == ("own", "received")
    evaluation = evaluate(rule("{}"), [own])
    assert not evaluation.matched
    assert evaluation.failed_condition == "include_gateway_output"
    assert evaluation.reason.startswith("only gateway output (1 instance(s) with source GATEWAY)")


def test_disabled_rule_never_matches() -> None:
    disabled = rule("{}", extra="enabled: false\n")
    assert evaluate(disabled, study()) == Evaluation("r", False, (), "rule is disabled", "enabled")


def test_no_instances() -> None:
    assert evaluate(rule("{}"), []) == Evaluation("r", False, (), "no instances", None)


def test_instance_trigger_evaluates_the_same_way() -> None:
    assert ids("modality: CT", facts("one"), on="instance") == ("one",)


# -- why not --------------------------------------------------------------------------------------
def test_why_not_plan_label() -> None:
    instances = [facts("ct", study_plan_labels=("SCHED1",))]
    assert why("plan_label: {contains: ADP}", *instances) == (
        "match.plan_label: no plan label of the study contains 'ADP' (labels: SCHED1)"
    )


def test_why_not_no_plan_at_all_or_no_label() -> None:
    assert why("plan_label: {contains: ADP}", facts("ct")) == (
        "match.plan_label: the study has no RTPLAN"
    )
    assert why("plan_label: {contains: ADP}", facts("ct"), facts("rp", modality="RTPLAN")) == (
        "match.plan_label: no RTPLAN of the study has a plan label"
    )


def test_why_not_calling_aet_single_and_several_values() -> None:
    assert why("calling_aet: FOLLOW", facts(calling_aet="OTHER")) == (
        "match.calling_aet: calling AE 'OTHER' does not match 'FOLLOW'"
    )
    many = [facts(str(n), calling_aet=f"AE{n}") for n in (7, 1, 3, 1, 5, 2, 6)]
    assert why("calling_aet: 'ETHOS*'", *many) == (
        "match.calling_aet: no calling AE matches glob 'ETHOS*' "
        "(seen: 'AE1', 'AE2', 'AE3', 'AE5', 'AE6' and 1 more)"
    )


@pytest.mark.parametrize(
    ("match_yaml", "expected"),
    [
        ("modality: [RTPLAN, RTDOSE]", "modality 'CT' matches none of: 'RTPLAN', 'RTDOSE'"),
        ("called_aet: {contains: GW}", "called AE 'SCP' does not contain 'GW'"),
        (
            "called_aet: {contains: gw, ignore_case: true}",
            "called AE 'SCP' does not contain 'gw' (ignoring case)",
        ),
        ("remote_ip: {cidr: 10.0.0.0/8}", "remote IP '192.168.1.1' is not in 10.0.0.0/8"),
        ("source: IMPORT_FOLDER", "source 'DICOM' does not match 'IMPORT_FOLDER'"),
        (
            "sop_class: RTPlanStorage",
            f"SOP class '{CT_IMAGE_STORAGE}' does not match '{RT_PLAN_STORAGE}'",
        ),
        ("modality: {regex: '^RT'}", "modality 'CT' does not match regex '^RT'"),
    ],
)
def test_why_not_wording_per_operator(match_yaml: str, expected: str) -> None:
    instance = facts(called_aet="SCP", remote_ip="192.168.1.1", sop_class_uid=CT_IMAGE_STORAGE)
    key = match_yaml.split(":")[0]
    assert why(match_yaml, instance) == f"match.{key}: {expected}"


def test_why_not_names_the_first_failing_condition_in_file_order() -> None:
    other = facts(calling_aet="OTHER", modality="MR")
    assert why("modality: CT\ncalling_aet: FOLLOW", other).startswith("match.modality:")
    assert why("calling_aet: FOLLOW\nmodality: CT", other).startswith("match.calling_aet:")


def test_why_not_when_conditions_hold_only_on_different_instances() -> None:
    instances = [facts("ct", calling_aet="OTHER"), facts("mr", modality="MR")]
    assert why("calling_aet: FOLLOW\nmodality: CT", *instances) == (
        "match: no single instance satisfies every condition"
    )


def test_why_not_tags() -> None:
    head = facts("a", tags={"StudyDescription": "Head"})
    bare = facts("b", tags={})
    assert why("tags: {StudyDescription: {regex: '(?i)prostate'}}", head, bare) == (
        "match.tags.StudyDescription: StudyDescription 'Head' does not match regex "
        "'(?i)prostate'; 1 instance(s) have no value for it"
    )
    assert why("tags: {PatientID: P1}", bare) == (
        "match.tags.PatientID: no instance has a value for PatientID"
    )


def test_why_not_nested_any_and_not() -> None:
    instance = facts(calling_aet="OTHER")
    assert why("any: [{calling_aet: FOLLOW}, {modality: MR, source: REST}]", instance) == (
        "match.any: no alternative holds (match.any[0].calling_aet: calling AE 'OTHER' does not "
        "match 'FOLLOW'; match.any[1].modality: modality 'CT' does not match 'MR')"
    )
    assert why("not: {modality: CT}", instance) == (
        "match.not: every instance satisfies the conditions under 'not'"
    )


def test_explain_each_reports_every_condition_holding_or_not() -> None:
    from orthanc_plugin.rules import InstanceFacts, explain_each, load_rules_text

    rule = load_rules_text(
        "rules:\n  - name: r\n    on: stable-study\n"
        "    match: {calling_aet: FOLLOW, plan_label: {contains: ADP}}\n"
        "    actions: [{forward: X}]\n"
    ).rules[0]
    facts = [InstanceFacts("a", calling_aet="FOLLOW", study_plan_labels=("SCHED1",))]
    report = explain_each(rule.match, facts)
    assert [(r["condition"], r["holds"]) for r in report] == [
        ("match.calling_aet", True), ("match.plan_label", False)]
    assert "SCHED1" in str(report[1]["reason"])
