"""De-identified copies made several at a time (issue 22 item 5): the same bytes as the model makes
one instance at a time, each instance's outcome its own (stored, or quarantined with the reason),
and no copy lost or made twice when Orthanc fails or the worker dies in the middle of a claim."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
import pytest

from orthanc_plugin.config import ConfigError
from orthanc_plugin.deid.keys import Pseudonymizer
from orthanc_plugin.deid.model import DeidSettings, deidentify
from orthanc_plugin.deid.pipeline import Pipeline
from orthanc_plugin.deid.profile import Option, Profile
from orthanc_plugin.ports import HostError
from tests.support.fake_orthanc import FakeOrthanc, WorkerKilled
from tests.support.gateway_site import GatewaySite, build_site
from tests.support.rtset import make_rt_set

SECRET = "unit-test-secret-0123456789abcdef"
SETTINGS = DeidSettings(Profile.FULL, frozenset({Option.RETAIN_LONGITUDINAL_MODIFIED_DATES}))
RESEARCH_COPY = """
rules:
  - name: research copy
    on: stable-study
    match: {calling_aet: TPS}
    actions:
      - anonymize: {profile: full, options: [retain-longitudinal-modified-dates]}
      - forward: [PACS]
"""
SiteFor = Callable[..., GatewaySite]


@pytest.fixture
def site_for(tmp_path: Path) -> Iterator[SiteFor]:
    """build(copy_threads) -> a gateway on its own fake Orthanc, with a known secret."""
    secret = tmp_path / "deid.key"
    secret.write_text(SECRET)
    built: list[GatewaySite] = []

    def build(copy_threads: int) -> GatewaySite:
        folder = tmp_path / f"site-{len(built)}"
        folder.mkdir()
        orthanc = FakeOrthanc({"PACS": "PACS_AE"})
        site = build_site(folder, RESEARCH_COPY, orthanc, {
            "Deid": {"SecretFile": str(secret), "CopyThreads": copy_threads}})
        built.append(site)
        return site

    yield build
    for site in built:
        assert site.orthanc.unsupported == []


def receive_stable_study(site: GatewaySite, datasets: list[Any],
                         files: dict[int, bytes] | None = None) -> list[str]:
    ids = [site.orthanc.receive(ds, calling_aet="TPS", file=(files or {}).get(n))
           for n, ds in enumerate(datasets)]
    site.note_stored(*ids)
    site.take_in()
    site.orthanc.mark_stable(site.orthanc.study_of(ids[0]))
    site.take_in()
    return ids


def copies_of(site: GatewaySite) -> dict[str, bytes]:
    """original instance ID -> the stored copy's file."""
    return {row["original_instance_id"]: site.orthanc.instances[row["copy_instance_id"]].file
            for row in site.rows("SELECT * FROM deid_copies")}


def model_copy(original: bytes) -> bytes:
    """What the pure model makes of one instance: the per-instance path, one at a time."""
    ds = pydicom.dcmread(BytesIO(original))
    deidentify(ds, SETTINGS, Pseudonymizer(SECRET))
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


# -- the pipeline --------------------------------------------------------------------------------
def test_the_pipeline_answers_in_order_and_raises_each_items_own_error() -> None:
    started: list[int] = []

    def make(item: int) -> int:
        started.append(item)
        if item == 3:
            raise ValueError("item 3 cannot be made")
        time.sleep(0.001 * (item % 3))  # finishes out of order
        return item * 10

    with ThreadPoolExecutor(3) as pool:
        pipeline = Pipeline(pool, make, list(range(8)), ahead=2)
        answers = []
        for item in range(8):
            try:
                answers.append(pipeline.take(item))
            except ValueError as error:
                answers.append(str(error))
            # Never more than `ahead` started beyond the one taken: a claim of a thousand
            # instances holds a few in memory, not all.
            assert len(started) <= item + 1 + 2
        pipeline.close()
    assert answers == [0, 10, 20, "item 3 cannot be made", 40, 50, 60, 70]
    assert sorted(started) == list(range(8))


def test_closing_cancels_what_has_not_started_and_waits_for_what_has() -> None:
    release = threading.Event()
    finished: list[int] = []

    def make(item: int) -> int:
        release.wait(5)
        finished.append(item)
        return item

    with ThreadPoolExecutor(2) as pool:
        pipeline = Pipeline(pool, make, list(range(10)), ahead=4)
        pipeline._submit_until(5)  # as a take() of item 0 would, without waiting for it
        threading.Timer(0.05, release.set).start()
        pipeline.close()
        # The two running when closed were finished before close returned; the queued ones
        # never ran (each stays pending in the queue, made on the next attempt).
        assert sorted(finished) == [0, 1]
    assert sorted(finished) == [0, 1]


# -- the executor on a fake Orthanc --------------------------------------------------------------
def test_copies_made_several_at_a_time_are_the_models_bytes_for_a_full_rt_set(
        site_for: SiteFor) -> None:
    rtset = make_rt_set(n_slices=6)
    made: dict[int, dict[str, bytes]] = {}
    for threads in (1, 4):
        site = site_for(threads)
        originals = receive_stable_study(site, rtset.all())
        site.run_queue()
        assert {job["state"] for job in site.jobs("anonymize")} == {"done"}
        made[threads] = copies_of(site)
        assert sorted(made[threads]) == sorted(originals)
        for original in originals:
            assert made[threads][original] == model_copy(site.orthanc.instances[original].file)
    assert made[1] == made[4]

    # The links of the plan survive: every referenced SOP instance is one of the copies.
    copies = [pydicom.dcmread(BytesIO(data)) for data in made[4].values()]
    sops = {str(ds.SOPInstanceUID) for ds in copies}
    plan = next(ds for ds in copies if ds.Modality == "RTPLAN")
    dose = next(ds for ds in copies if ds.Modality == "RTDOSE")
    assert str(plan.ReferencedStructureSetSequence[0].ReferencedSOPInstanceUID) in sops
    assert str(dose.ReferencedRTPlanSequence[0].ReferencedSOPInstanceUID) in sops


def test_an_instance_that_cannot_be_de_identified_is_quarantined_while_the_rest_are_stored(
        site_for: SiteFor) -> None:
    site = site_for(3)
    rtset = make_rt_set(n_slices=6, with_dose=False)
    datasets = rtset.all()
    ids = receive_stable_study(site, datasets, files={2: b"not a DICOM file"})
    damaged = ids[2]
    site.run_queue()

    (job,) = site.jobs("anonymize")
    assert job["state"] == "dead"  # parked for the refused one; the others are done
    assert [(item["instance_id"], item["state"], item["status"])
            for item in site.items(job["id"])] == [
        (iid, "refused", "invalid-input") if iid == damaged else (iid, "sent", None)
        for iid in ids]
    (quarantined,) = site.rows("SELECT instance_id, reason, detail FROM quarantine")
    assert quarantined["instance_id"] == damaged
    assert quarantined["reason"].startswith("anonymize: cannot be de-identified:")
    assert quarantined["detail"] == f"job {job['id']}"
    copies = copies_of(site)
    assert sorted(copies) == sorted(iid for iid in ids if iid != damaged)
    (forward,) = site.jobs("forward")
    forwarded = {item["instance_id"] for item in site.items(forward["id"])}
    assert forwarded == {row["copy_instance_id"] for row in site.rows(
        "SELECT copy_instance_id FROM deid_copies")}


@pytest.mark.parametrize("fault", ["orthanc-error", "worker-killed"])
def test_a_claim_broken_in_the_middle_loses_and_duplicates_no_copy(
        site_for: SiteFor, fault: str) -> None:
    site = site_for(3)
    rtset = make_rt_set(n_slices=10)
    originals = receive_stable_study(site, rtset.all())
    error: BaseException = (HostError("/instances: HTTP 500 Internal error")
                            if fault == "orthanc-error" else WorkerKilled())
    site.orthanc.inject("POST", "/instances", error, skip=4)
    if fault == "worker-killed":
        with pytest.raises(WorkerKilled):
            site.run_next()
        assert site.restart_workers() == 1
    else:
        site.run_next()
        (job,) = site.jobs("anonymize")
        assert job["state"] == "pending" and job["last_status"] == "host"
    # Copies stored ahead of the failure but not yet recorded are made again: Orthanc answers
    # AlreadyStored (same keyed UIDs, same bytes), and each is recorded once.
    site.time_passes()
    site.run_queue()

    (job,) = site.jobs("anonymize")
    assert job["state"] == "done"
    assert {item["state"] for item in site.items(job["id"])} == {"sent"}
    copies = site.rows("SELECT original_instance_id, copy_instance_id FROM deid_copies")
    assert sorted(row["original_instance_id"] for row in copies) == sorted(originals)
    copy_ids = {row["copy_instance_id"] for row in copies}
    stored = {iid for iid, instance in site.orthanc.instances.items()
              if instance.metadata["Origin"] == "RestApi"}
    assert stored == copy_ids and len(copy_ids) == len(originals)
    forwarded = [item["instance_id"] for forward in site.jobs("forward")
                 for item in site.items(forward["id"])]
    assert sorted(forwarded) == sorted(copy_ids)
    for original, data in copies_of(site).items():
        assert data == model_copy(site.orthanc.instances[original].file)


def test_the_copies_ids_are_noted_as_the_gateways_own_before_the_first_is_stored(
        site_for: SiteFor, monkeypatch: pytest.MonkeyPatch) -> None:
    """One transaction for the claim's own-output notes, not one per copy (bench/deid): when the
    first copy reaches Orthanc, every copy's ID is noted, and the intake takes each as GATEWAY."""
    site = site_for(4)
    originals = receive_stable_study(site, make_rt_set(n_slices=8).all())
    noted_at_first_post: list[int] = []
    post_bytes = site.orthanc.post_bytes

    def counting_post(uri: str, data: bytes) -> Any:
        if uri == "/instances" and not noted_at_first_post:
            noted_at_first_post.append(len(site.rows("SELECT 1 FROM own_output")))
        return post_bytes(uri, data)

    monkeypatch.setattr(site.orthanc, "post_bytes", counting_post)
    site.run_queue()
    site.take_in()

    copies = {row["copy_instance_id"] for row in site.rows("SELECT * FROM deid_copies")}
    assert len(copies) == len(originals)
    assert set(noted_at_first_post) == {len(originals)}  # every thread that saw no count yet
    assert {row["instance_id"] for row in site.rows(
        "SELECT instance_id FROM own_output WHERE made_by='deid'")} == copies
    sources = {row["instance_id"]: row["source"] for row in site.rows(
        "SELECT instance_id, source FROM received")}
    assert {sources[copy] for copy in copies} == {"GATEWAY"}


@pytest.mark.parametrize("threads", [0, 17, "4", True])
def test_copy_threads_out_of_range_is_refused_with_its_path(tmp_path: Path, threads: Any) -> None:
    with pytest.raises(ConfigError, match=r"RtGateway\.Deid\.CopyThreads"):
        build_site(tmp_path, RESEARCH_COPY, FakeOrthanc({"PACS": "PACS_AE"}),
                   {"Deid": {"CopyThreads": threads}})


def test_originals_are_deleted_only_once_their_copies_are_stored_and_nothing_else_needs_them(
        tmp_path: Path) -> None:
    """keep_original: false. The delete job waits while the originals are still queued for
    another job of the rule (here: the originals forwarded to an archive before the anonymize), then
    deletes each original whose copy is recorded, and says when in the mapping."""
    secret = tmp_path / "deid.key"
    secret.write_text(SECRET)
    orthanc = FakeOrthanc({"PACS": "PACS_AE", "ARCHIVE": "ARCHIVE_AE"})
    site = build_site(tmp_path, """
rules:
  - name: research copy, originals removed
    on: stable-study
    match: {calling_aet: TPS}
    actions:
      - forward: [ARCHIVE]
      - anonymize: {profile: full, keep_original: false}
      - forward: [PACS]
""", orthanc, {"Deid": {"SecretFile": str(secret)}})
    originals = receive_stable_study(site, make_rt_set(n_slices=4, with_dose=False).all())
    assert site.jobs("delete-original") == []  # queued once the copies are stored
    for _ in range(10):
        site.run_queue()
        if not site.rows("SELECT 1 FROM jobs WHERE state IN ('pending', 'running')"):
            break
        site.time_passes()
    states = {(job["action"], job["target"]): job["state"] for job in site.jobs()}
    assert states == {("forward", "ARCHIVE"): "done", ("anonymize", "PACS"): "done",
                      ("forward", "PACS"): "done",
                      ("delete-original", "originals-after-PACS"): "done"}
    assert not set(originals) & set(orthanc.instances)
    copies = site.rows("SELECT original_instance_id, copy_instance_id, original_deleted_at "
                       "FROM deid_copies")
    assert sorted(row["original_instance_id"] for row in copies) == sorted(originals)
    assert all(row["original_deleted_at"] for row in copies)
    assert sorted(orthanc.modality("PACS").received) == sorted(
        row["copy_instance_id"] for row in copies)
    assert sorted(orthanc.modality("ARCHIVE").received) == sorted(originals)
