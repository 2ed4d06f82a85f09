"""The copy's recipe as the rules file writes it: coercions checked at load, steps folded into the
forward after them, destination settings, and what a coercion does to a dataset."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import Dataset

from orthanc_plugin.capabilities import load_rules_text
from orthanc_plugin.config import ConfigError, dicomweb_servers
from orthanc_plugin.forwarding.stow import parse_response, reason_text
from orthanc_plugin.jobs.records import Job
from orthanc_plugin.jobs.states import JobState
from orthanc_plugin.rules import ForwardAction, RulesError, RuleSet
from orthanc_plugin.transform.coerce import CoercionError, parse_coercion
from orthanc_plugin.transform.resolve import CopySpecs
from orthanc_plugin.transform.spec import CoerceStep, HookStep, NormalizeStep

TARGETS = {"TPS", "ARCHIVE", "CD_ROBOT"}


def job(rule: str, target: str) -> Job:
    """A waiting forward job of the rule to the target, as the queue's claim hands it out."""
    return Job(id=1, idempotency_key="k", rule=rule, action="forward", trigger="instance",
               level="instance", resource_id="i-1", patient_id="", study_uid="",
               calling_aet="", remote_ip="", target=target, state=JobState.PENDING, attempts=0,
               next_attempt_at=0.0, created_at="", updated_at="", created_epoch=0.0,
               last_error=None, last_status=None, orthanc_job=None, claimed_by=None, crashes=0,
               priority=10, claim_id=None, claim_items=0, failing_since=None,
               awaits_description=False, lease_until=None, fence=0)


def rules(actions: str, destinations: str = "", base_dir: Path | None = None) -> RuleSet:
    text = f"""
{destinations}
rules:
  - name: r
    on: instance
    match: {{calling_aet: PLANNING}}
    actions:
{actions}
"""
    return load_rules_text(text, TARGETS, base_dir)


def test_steps_fold_into_the_forward_after_them_and_only_that_one() -> None:
    ruleset = rules("""      - normalize: tg263
      - coerce: {set: {InstitutionName: "Sud"}}
      - forward: TPS
      - forward: ARCHIVE""")
    tps, archive = ruleset.rules[0].actions
    assert isinstance(tps, ForwardAction) and tps.targets == ("TPS",)
    assert [type(step) for step in tps.steps] == [NormalizeStep, CoerceStep]
    assert archive.steps == ()


@pytest.mark.parametrize("actions, message", [
    ("      - coerce: {set: {InstitutionName: X}}", "a forward must follow them"),
    ("      - coerce: {set: {Institution: X}}\n      - forward: TPS", "unknown DICOM keyword"),
    ("      - coerce: {set: {StudyDate: yesterday}}\n      - forward: TPS", "DA"),
    ("      - coerce: {set: {SOPInstanceUID: '1.2.3'}}\n      - forward: TPS",
     "would break the links"),
    ("      - coerce: {remove: [ReferencedFrameOfReferenceSequence]}\n      - forward: TPS",
     "would break the links"),
    ("      - coerce: {set: {Rows: 12}}\n      - forward: TPS", "describes the pixels"),
    ("      - coerce: {remove: ['(7FE0,xxxx)']}\n      - forward: TPS", "unreadable"),
    ("      - coerce: {set: {InstitutionName: '{NoSuchTag}'}}\n      - forward: TPS",
     "unknown keyword {NoSuchTag}"),
    ("      - normalize: {roi_names: false, plan_label: false}\n      - forward: TPS",
     "nothing to normalize"),
])
def test_mistakes_are_refused_at_load_with_where_and_why(actions: str, message: str) -> None:
    with pytest.raises(RulesError, match=message):
        rules(actions)


def test_a_hook_script_must_exist_beside_the_rules(tmp_path: Path) -> None:
    with pytest.raises(RulesError, match="no such file"):
        rules("      - hook: hooks/missing.py\n      - forward: TPS", base_dir=tmp_path)
    (tmp_path / "hooks").mkdir()
    (tmp_path / "hooks" / "ring.py").write_text("def process(ds):\n    return ds\n")
    ruleset = rules("      - hook: {script: hooks/ring.py, seconds: 5}\n      - forward: TPS",
                    base_dir=tmp_path)
    (step,) = ruleset.rules[0].actions[0].steps
    assert isinstance(step, HookStep) and step.script == tmp_path / "hooks" / "ring.py"
    assert step.seconds == 5


def test_destination_settings_join_the_rule_steps_after_them() -> None:
    ruleset = rules("      - coerce: {set: {InstitutionName: Rule}}\n      - forward: CD_ROBOT",
                    """destinations:
  CD_ROBOT: {transfer_syntax: implicit-little, coerce: {set: {InstitutionName: Robot}}}""")
    spec = CopySpecs(lambda: ruleset).for_job(job("r", "CD_ROBOT"), "CD_ROBOT")
    assert spec.transfer_syntax == "implicit-little"
    ds = Dataset()
    for step in spec.steps:
        assert isinstance(step, CoerceStep)
        step.coercion.apply(ds)
    assert ds.InstitutionName == "Robot"   # the destination's word is last
    plain = CopySpecs(lambda: ruleset).for_job(job("other", "TPS"), "TPS")
    assert not plain


def test_unknown_transfer_syntax_names_the_choices() -> None:
    with pytest.raises(RulesError, match="jpeg2000-lossless"):
        rules("      - forward: TPS", "destinations:\n  TPS: {transfer_syntax: jpeg2000-lossles}")


def test_coercion_sets_replaces_removes_and_keeps() -> None:
    coercion = parse_coercion({
        "set": {"InstitutionName": "Clinique Sud"},
        "replace": {"StationName": "{StationName}-{Modality}", "OperatorsName": "Nobody"},
        "remove": ["private", "ReferringPhysicianName"],
        "keep": ["(3249,xxxx)"]}, "coerce")
    ds = Dataset()
    ds.Modality, ds.StationName, ds.ReferringPhysicianName = "CT", "CT01", "Doe^John"
    ds.private_block(0x0009, "ACME", create=True).add_new(0x01, "LO", "kernel")
    ds.private_block(0x3249, "TPS VENDOR", create=True).add_new(0x01, "LO", "keep me")
    changes = coercion.apply(ds)
    assert ds.InstitutionName == "Clinique Sud" and ds.StationName == "CT01-CT"
    assert "OperatorsName" not in ds          # replace: only where present
    assert "ReferringPhysicianName" not in ds
    assert not [e for e in ds if e.tag.group == 0x0009]
    assert ds[0x3249, 0x1001].value == "keep me"
    assert "InstitutionName set" in changes and "StationName replaced" in changes


def test_a_template_too_long_for_its_vr_refuses_the_copy_not_truncates() -> None:
    coercion = parse_coercion({"set": {"StationName": "{StudyDescription}"}}, "c")
    ds = Dataset()
    ds.StudyDescription = "A very long description of a planning CT"
    with pytest.raises(CoercionError, match="longer than SH"):
        coercion.apply(ds)


def test_stow_response_gives_each_instance_its_outcome() -> None:
    outcome = parse_response({
        "00081199": {"vr": "SQ", "Value": [{"00081155": {"vr": "UI", "Value": ["1.1"]}}]},
        "00081198": {"vr": "SQ", "Value": [{"00081155": {"vr": "UI", "Value": ["1.2"]},
                                            "00081197": {"vr": "US", "Value": [0xA700]}}]}})
    assert outcome.stored == {"1.1"}
    assert outcome.refused == {"1.2": "out of resources (FailureReason 0xA700)"}
    assert reason_text(None) == "no reason given"


def test_dicomweb_servers_read_from_orthancs_setting_and_refused_when_malformed() -> None:
    servers = dicomweb_servers({"DicomWeb": {"Servers": {
        "PACS": ["http://pacs/dicom-web/", "user", "secret"],
        "CLOUD": {"Url": "https://cloud/dicomweb", "HttpHeaders": {"Authorization": "Bearer t"}}}}})
    assert servers["PACS"].url == "http://pacs/dicom-web" and servers["PACS"].auth == ("user", "secret")
    assert servers["CLOUD"].headers == {"Authorization": "Bearer t"} and servers["CLOUD"].auth is None
    with pytest.raises(ConfigError, match="http"):
        dicomweb_servers({"DicomWeb": {"Servers": {"X": ["ftp://x"]}}})


def test_keyed_uids_map_every_instance_uid_once_and_spare_the_standards() -> None:
    coercion = parse_coercion({"uids": "keyed"}, "c")
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.481.3"
    ds.SOPInstanceUID, ds.FrameOfReferenceUID = "1.2.3.4", "1.2.3.9"
    item = Dataset()
    item.FrameOfReferenceUID = "1.2.3.9"
    ds.ReferencedFrameOfReferenceSequence = [item]
    coercion.apply(ds, lambda uid: "2.25." + uid.replace(".", ""))
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.481.3"
    assert ds.SOPInstanceUID == "2.25.1234"
    assert ds.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID == ds.FrameOfReferenceUID
    with pytest.raises(CoercionError, match="keyed UID mapping"):
        parse_coercion({"uids": "keyed"}, "c").apply(Dataset(), None)
    with pytest.raises(CoercionError, match="expected keyed"):
        parse_coercion({"uids": "random"}, "c")
