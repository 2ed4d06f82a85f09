"""The anonymize action: parsing, the fold of the following forwards, and the mapping table."""

from __future__ import annotations

from pathlib import Path

import pytest

from orthanc_plugin.capabilities import load_rules_text
from orthanc_plugin.db import META_SCHEMA, Database
from orthanc_plugin.deid import tables
from orthanc_plugin.deid.keys import Pseudonymizer
from orthanc_plugin.deid.model import DeidResult
from orthanc_plugin.deid.profile import Option, Profile
from orthanc_plugin.deid.rule import AnonymizeAction, plan_anonymize
from orthanc_plugin.jobs.executors import PlannedJob
from orthanc_plugin.rules import ForwardAction, RulesError


def actions_of(actions: str, targets: set[str] | None = None) -> tuple:
    text = f"""
rules:
  - name: research copy
    on: stable-study
    match: {{calling_aet: TPS}}
    actions:
{actions}
"""
    return load_rules_text(text, targets).rules[0].actions


def test_following_forwards_send_the_copy_and_earlier_ones_the_original() -> None:
    actions = actions_of(
        "      - forward: ARCHIVE\n"
        "      - anonymize: {profile: full, options: [retain-longitudinal-modified-dates,"
        " retain-patient-characteristics], keep_private_creators: [VARIAN], keep_original: false}\n"
        "      - forward: [RESEARCH]\n"
        "      - forward: {targets: [TRIAL]}\n",
        {"ARCHIVE", "RESEARCH", "TRIAL"},
    )
    assert actions[0] == ForwardAction(("ARCHIVE",))
    anonymize = actions[1]
    assert len(actions) == 2 and isinstance(anonymize, AnonymizeAction)
    assert anonymize.targets == ("RESEARCH", "TRIAL")
    assert anonymize.keep_original is False
    assert anonymize.settings.profile is Profile.FULL
    assert anonymize.settings.options == {Option.RETAIN_LONGITUDINAL_MODIFIED_DATES,
                                          Option.RETAIN_PATIENT_CHARACTERISTICS}
    assert anonymize.settings.keep_private_creators == ("VARIAN",)
    assert plan_anonymize(anonymize) == [PlannedJob("anonymize", "RESEARCH+TRIAL")]


def test_defaults_and_the_short_form() -> None:
    (plain,) = actions_of("      - anonymize:\n")
    assert plain.settings.profile is Profile.FULL and plain.keep_original and plain.targets == ()
    assert plan_anonymize(plain) == [PlannedJob("anonymize", "ORTHANC")]
    (partial,) = actions_of("      - anonymize: partial\n")
    assert partial.settings.profile is Profile.PARTIAL


@pytest.mark.parametrize(
    ("actions", "path", "reason"),
    [
        ("      - anonymize: {profile: fancy}\n", "rules[0].actions[0].anonymize.profile",
         "unknown profile"),
        ("      - anonymize: {options: [retain-everything]}\n",
         "rules[0].actions[0].anonymize.options[0]", "unknown option 'retain-everything'"),
        ("      - anonymize: {colour: red}\n", "rules[0].actions[0].anonymize.colour",
         "unknown option"),
        ("      - anonymize: {patient_id_pattern: ANON}\n",
         "rules[0].actions[0].anonymize.patient_id_pattern", "{hash}"),
        ("      - anonymize: {keep_original: maybe}\n",
         "rules[0].actions[0].anonymize.keep_original", "true or false"),
        ("      - anonymize: {profile: partial, options: [clean-descriptors]}\n",
         "rules[0].actions[0].anonymize.options", "partial profile"),
        ("      - anonymize:\n      - anonymize:\n", "rules[0].actions[1]", "only one anonymize"),
        ("      - anonymize:\n      - forward: A\n      - forward: A\n", "rules[0].actions[2]",
         "duplicate target 'A'"),
    ],
)
def test_errors_name_the_path(actions: str, path: str, reason: str) -> None:
    with pytest.raises(RulesError) as error:
        actions_of(actions)
    assert error.value.path == path
    assert reason in error.value.reason


def test_unknown_forward_target_after_anonymize_is_refused() -> None:
    with pytest.raises(RulesError, match="unknown target 'NOWHERE'"):
        actions_of("      - anonymize:\n      - forward: NOWHERE\n", {"RESEARCH"})


def test_mapping_is_kept_and_found_by_either_id(tmp_path: Path) -> None:
    db = Database(tmp_path / "g.sqlite", [META_SCHEMA, tables.SCHEMA])
    secret = tables.installation_secret(db)
    assert tables.installation_secret(db) == secret and len(secret) == 64
    keys = Pseudonymizer(secret)
    result = DeidResult("PAT-1", keys.patient_id("PAT-1", "ANON-{hash}"), None,
                        {"1.2.3": (keys.uid("1.2.3"), "StudyInstanceUID")})
    with db.transaction() as connection:
        tables.record_mapping(connection, result, keys.date_offset_days("PAT-1"))
        tables.record_mapping(connection, result, keys.date_offset_days("PAT-1"))
    by_original = tables.mapping_for(db, "PAT-1")
    by_pseudonym = tables.mapping_for(db, result.new_patient_id)
    assert by_original == by_pseudonym and by_original is not None
    assert by_original["uids"] == [{"original_uid": "1.2.3", "new_uid": keys.uid("1.2.3"),
                                    "keyword": "StudyInstanceUID"}]
    assert by_original["date_offset_days"] == keys.date_offset_days("PAT-1")
    assert tables.mapping_for(db, "PAT-2") is None
