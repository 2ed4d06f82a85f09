"""Adding an action is one package of the usual shape and one line of registration (issue 24 item 3,
README "Adding an action"): the example capability tests/support/compress ("compress to RLE
Lossless, then forward") is added to CAPABILITIES and nothing else, and the gateway parses its
rule, folds the following forward into it, runs its executor on the shared contract and forwards
the compressed copies (never the originals) through the queue's ordinary forward jobs."""

from __future__ import annotations

from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import RLELossless

from orthanc_plugin import capabilities
from tests.support.fake_orthanc import FakeOrthanc
from tests.support.gateway_site import GatewaySite, build_site
from tests.support.rtset import make_ct_series

JOB_ACTION = "compress"  # tests/support/compress/rule.py
RULES = """
rules:
  - name: compressed to the archive
    on: stable-study
    match: {calling_aet: TPS}
    actions:
      - compress: rle-lossless
      - forward: [ARCHIVE]
"""


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[GatewaySite]:
    # The one line a new capability adds: its rule.py's declarations (ACTIONS, COMPOSERS) come
    # into the vocabulary the gateway builds from this list; nothing else is registered.
    monkeypatch.setattr(capabilities, "CAPABILITIES",
                        [*capabilities.CAPABILITIES, "tests.support.compress"])
    orthanc = FakeOrthanc({"ARCHIVE": "ARCHIVE_AE"})
    built = build_site(tmp_path, RULES, orthanc)
    yield built
    assert orthanc.unsupported == []


def test_a_new_derivation_runs_on_the_shared_contract_and_its_copies_are_forwarded(
        site: GatewaySite) -> None:
    series = make_ct_series(patient_id="P-COMPRESS", patient_name="Example^Compress",
                            study_uid=pydicom.uid.generate_uid(),
                            frame_of_reference_uid=pydicom.uid.generate_uid(), n_slices=4,
                            rows=64, columns=64)
    originals = [site.orthanc.receive(ds, calling_aet="TPS") for ds in series]
    site.note_stored(*originals)
    site.take_in()
    site.orthanc.mark_stable(site.orthanc.study_of(originals[0]))
    site.take_in()
    site.run_queue()

    (compress,) = site.jobs(JOB_ACTION)
    assert (compress["state"], compress["target"]) == ("done", "ARCHIVE")
    copies = [iid for iid, instance in site.orthanc.instances.items()
              if instance.metadata["Origin"] == "RestApi"]
    assert len(copies) == len(originals)
    for copy in copies:
        data = pydicom.dcmread(BytesIO(site.orthanc.instances[copy].file))
        assert data.file_meta.TransferSyntaxUID == RLELossless
    # The follow-ups: one forward job of the copies, queued and audited by the base.
    (forward,) = site.jobs("forward")
    assert forward["state"] == "done"
    assert sorted(item["instance_id"] for item in site.items(forward["id"])) == sorted(copies)
    assert sorted(site.orthanc.modality("ARCHIVE").received) == sorted(copies)
    (queued,) = site.events("compress-followers-queued")
    assert queued["detail"] == f"job {forward['id']}: 4 compressed to ARCHIVE"
    # The copies are the gateway's own output: no rule acts on them again.
    site.take_in()
    sources = {row["instance_id"]: row["source"] for row in site.rows(
        "SELECT instance_id, source FROM received")}
    assert {sources[copy] for copy in copies} == {"GATEWAY"}


def test_what_the_new_action_refuses_is_worded_like_every_other_rule_error(
        site: GatewaySite) -> None:
    from orthanc_plugin.capabilities import load_rules_text
    from orthanc_plugin.rules import RulesError

    with pytest.raises(RulesError, match=r"rules\[0\]\.actions\[1\]: only forward may follow "
                                         r"compress \(it sends the compressed copy\)"):
        load_rules_text("rules:\n  - name: r\n    on: instance\n    match: {}\n    actions:\n"
                        "      - compress: rle-lossless\n      - export: /tmp/x\n")
    with pytest.raises(RulesError, match=r"rules\[0\]\.actions\[0\]\.compress: unknown compression"):
        load_rules_text("rules:\n  - name: r\n    on: instance\n    match: {}\n    actions:\n"
                        "      - compress: gzip\n")
