"""The anonymize action: parsing, the fold of the following forwards, and the mapping table."""

from __future__ import annotations

import pytest

from orthanc_plugin.audit.tables import SCHEMA as AUDIT_SCHEMA
from orthanc_plugin.capabilities import load_rules_text
from orthanc_plugin.deid import tables
from orthanc_plugin.deid.keys import Pseudonymizer
from orthanc_plugin.deid.model import DeidResult
from orthanc_plugin.deid.profile import Option, Profile
from orthanc_plugin.deid.rule import AnonymizeAction, plan_anonymize
from orthanc_plugin.jobs.executors import PlannedJob
from orthanc_plugin.rules import ForwardAction, RulesError
from tests.conftest import MakeDatabase


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


def test_mapping_is_kept_and_found_by_either_id(make_database: MakeDatabase) -> None:
    db = make_database([tables.SCHEMA])
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


def test_a_copy_made_again_replaces_its_row_whole(make_database: MakeDatabase) -> None:
    """A replay's copy: its new IDs and report, and the original's deletion forgotten (the
    original is back and deleted again later), as SQLite's INSERT OR REPLACE did."""
    db = make_database([AUDIT_SCHEMA, tables.SCHEMA])
    first = tables.CopyRecord("orig-1", "RESEARCH", "copy-1", "2.25.1", "ANON-1", 7, "{}",
                              ("PatientName: removed",))
    with db.transaction() as connection:
        tables.record_copies(connection, [first])
    tables.mark_original_deleted(db, "orig-1")
    assert tables.has_copy(db, "orig-1") and not tables.has_copy(db, "orig-2")
    again = tables.CopyRecord("orig-1", "RESEARCH", "copy-2", "2.25.2", "ANON-1", 9, "{}", ())
    with db.transaction() as connection:
        tables.record_copies(connection, [again])
    (row,) = db.query("SELECT * FROM deid_copies")
    assert (row["copy_instance_id"], row["new_sop_instance_uid"], row["job_id"],
            row["original_deleted_at"], row["report"]) == ("copy-2", "2.25.2", 9, None, "[]")


def test_uids_without_a_keyword_come_first_and_original_keys_are_the_intakes(
        make_database: MakeDatabase) -> None:
    db = make_database([AUDIT_SCHEMA, tables.SCHEMA])
    result = DeidResult("PAT-1", "ANON-1", None, {"1.2.3": ("2.25.3", "StudyInstanceUID")})
    with db.transaction() as connection:
        tables.record_mapping(connection, result, 0)
        connection.execute("INSERT INTO deid_uids(original_uid, new_uid, keyword,"
                           " original_patient_id, first_seen) SELECT '9.9', '2.25.9', NULL,"
                           " 'PAT-1', first_seen FROM deid_uids")
        connection.execute("INSERT INTO received(instance_id, received_at, state, patient_id,"
                           " study_uid, series_uid, sop_instance_uid) VALUES"
                           " ('i1', 'now', 'ready', 'PAT-1', '1.2.3', '1.2.3.4', '1.2.3.4.5'),"
                           " ('i2', 'now', 'new', 'PAT-1', NULL, NULL, NULL)")
    mapping = tables.mapping_for(db, "ANON-1")
    assert mapping is not None
    assert [uid["keyword"] for uid in mapping["uids"]] == [None, "StudyInstanceUID"]
    assert tables.original_keys(db, ["i1", "i2", "i3"]) == {
        "i1": ("PAT-1", "1.2.3", "1.2.3.4", "1.2.3.4.5")}
