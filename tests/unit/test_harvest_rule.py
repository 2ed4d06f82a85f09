"""The `harvests:` section of the rules file: what loads, and where each error points."""

from __future__ import annotations

import pytest

from orthanc_plugin import capabilities
from orthanc_plugin.harvest.model import SelectionKind
from orthanc_plugin.rules import RulesError

load_rules_text = capabilities.load_rules_text

SOURCES = ("PACS", "ARCHIVE")


def load(harvests: str, known: tuple[str, ...] | None = SOURCES):
    return load_rules_text("rules: []\nharvests:\n" + harvests, known)


def error_of(harvests: str, known: tuple[str, ...] | None = SOURCES) -> str:
    with pytest.raises(RulesError) as caught:
        load(harvests, known)
    return str(caught.value)


def test_named_harvests_load_in_the_posted_shape() -> None:
    ruleset = load(
        "  - name: thorax\n"
        "    source: PACS\n"
        "    patients: {PatientID: 'THLHP*', StudyDate: 20200101-}\n"
        "    modalities: [ct, RTSTRUCT]\n"
        "    max_requests_per_minute: 600\n"
        "    concurrency: 2\n"
        "  - name: two\n"
        "    source: ARCHIVE\n"
        "    patients: [P1, P2]\n")
    thorax, two = ruleset.sections["harvests"]
    assert thorax.name == "thorax" and thorax.source == "PACS"
    assert thorax.selection.kind is SelectionKind.QUERY
    assert thorax.study_filters == (("StudyDate", "20200101-"),)
    assert thorax.modalities == ("CT", "RTSTRUCT")
    assert two.selection.patient_ids == ("P1", "P2")
    assert ruleset.rules == ()


def test_a_file_without_harvests_has_none() -> None:
    assert load_rules_text("rules: []\n").sections == {}
    assert load_rules_text("rules: []\nharvests:\n").sections == {"harvests": ()}


@pytest.mark.parametrize(
    ("harvests", "expected"),
    [
        ("  - source: PACS\n    patients: [P1]\n",
         "harvests[0]: missing 'name' (a harvest in the rules file is known by its name)"),
        ("  - name: ''\n    source: PACS\n    patients: [P1]\n",
         "harvests[0].name: expected a non-empty name, got ''"),
        ("  - name: [a]\n    source: PACS\n    patients: [P1]\n",
         "harvests[0].name: expected a non-empty name, got a list"),
        ("  - name: a\n    source: PACS\n    patients: {StudyDate: 2020/01/01}\n",
         "harvests[0].patients.StudyDate: expected YYYYMMDD, YYYYMMDD-, -YYYYMMDD or YYYYMMDD-YYYYMMDD"),
        ("  - name: a\n    source: PACS\n    patients: [P1, '']\n",
         "harvests[0].patients[1]: expected a PatientID (text)"),
        ("  - name: a\n    source: NOWHERE\n    patients: [P1]\n",
         "harvests[0].source: unknown modality 'NOWHERE' (known: ARCHIVE, PACS)"),
        ("  - name: a\n    source: PACS\n    patients: [P1]\n    concurency: 2\n",
         "harvests[0].concurency: unknown field"),
        ("  - name: a\n    source: PACS\n    patients: [P1]\n    concurrency: 99\n",
         "harvests[0].concurrency: expected a whole number from 1 to 16, got 99"),
        ("  - name: a\n    source: PACS\n    patients: [P1]\n"
         "  - name: a\n    source: PACS\n    patients: [P2]\n",
         "harvests[1].name: duplicate harvest name 'a' (also harvests[0])"),
        ("  - just text\n", "harvests[0]: expected a harvest mapping, got 'just text'"),
        ("  name: a\n", "harvests: expected a list of harvest definitions, got a mapping"),
    ],
)
def test_errors_name_the_place_in_the_file(harvests: str, expected: str) -> None:
    assert error_of(harvests).startswith(expected)


def test_a_broken_harvest_refuses_the_whole_file_even_with_good_rules() -> None:
    text = ("rules:\n  - name: r\n    on: instance\n    match: {}\n    actions: [{forward: PACS}]\n"
            "harvests:\n  - name: a\n    source: PACS\n    patients: {regex: '('}\n")
    with pytest.raises(RulesError) as caught:
        load_rules_text(text, SOURCES)
    assert caught.value.path == "harvests[0].patients.regex"


def test_without_known_targets_the_source_is_not_checked() -> None:
    (definition,) = load("  - name: a\n    source: ANYWHERE\n    patients: [P1]\n", None).sections["harvests"]
    assert definition.source == "ANYWHERE"


def test_numbers_are_read_as_numbers_and_patient_ids_stay_text() -> None:
    (definition,) = load("  - name: a\n    source: PACS\n    patients: [0012345]\n    concurrency: 3\n"
                         "    retry_delay_seconds: 1.5\n    max_attempts: 4\n").sections["harvests"]
    assert definition.selection.patient_ids == ("0012345",)
    assert (definition.concurrency, definition.retry_delay_seconds, definition.max_attempts) == (3, 1.5, 4)
    assert error_of("  - name: a\n    source: PACS\n    patients: [P1]\n    concurrency: two\n") == (
        "harvests[0].concurrency: expected a whole number from 1 to 16, got 'two'")
