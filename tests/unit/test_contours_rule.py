"""The overlay rule action's parser and planner, and the queue's postpone (waiting for images)."""

from __future__ import annotations

from pathlib import Path

import pytest

from orthanc_plugin.audit.tables import SCHEMA as AUDIT_SCHEMA
from orthanc_plugin.capabilities import load_rules_text
from orthanc_plugin.config import RetryPolicySettings
from orthanc_plugin.contours.planes import Plane
from orthanc_plugin.contours.rule import OverlayAction, plan_overlay
from orthanc_plugin.db import META_SCHEMA, Database
from orthanc_plugin.jobs.executors import PlannedJob
from orthanc_plugin.jobs.queue import JobQueue, JobSpec
from orthanc_plugin.jobs.tables import SCHEMA as JOBS_SCHEMA
from orthanc_plugin.rules import ForwardAction, RulesError


def overlay_of(options: str, targets: set[str] | None = None) -> OverlayAction:
    text = f"""
rules:
  - name: contours
    on: instance
    match: {{modality: RTSTRUCT}}
    actions:
      - overlay: {options}
"""
    action = load_rules_text(text, targets).rules[0].actions[0]
    assert isinstance(action, OverlayAction)
    return action


def test_defaults_and_every_option() -> None:
    plain = overlay_of("{}")
    assert plain.options.planes == (Plane.AXIAL,) and plain.targets == ()
    assert plain.wait_for_images_seconds == 600 and not plain.options.per_roi
    assert plan_overlay(plain) == [PlannedJob("overlay", "ORTHANC")]
    full = overlay_of(
        "{ignore: [skull, '*body*'], keep: PTV*, planes: [axial, Coronal, sagittal], "
        "forward: [VIEWER, ARCHIVE], per_roi: true, burn_in_outline: true, "
        "series_description: Contours, series_number: 901, wait_for_images: 2m}",
        {"VIEWER", "ARCHIVE"},
    )
    assert full.options.ignore == ("skull", "*body*") and full.options.keep == ("PTV*",)
    assert full.options.planes == (Plane.AXIAL, Plane.CORONAL, Plane.SAGITTAL)
    assert full.targets == ("VIEWER", "ARCHIVE") and full.wait_for_images_seconds == 120
    assert full.options.per_roi and full.options.burn_in_outline
    assert full.options.series_number == 901 and full.options.series_description == "Contours"
    assert plan_overlay(full) == [PlannedJob("overlay", "VIEWER+ARCHIVE")]


def actions_of(actions: str) -> tuple[object, ...]:
    text = f"""
rules:
  - name: contours
    on: instance
    match: {{modality: RTSTRUCT}}
    actions:
{actions}
"""
    return load_rules_text(text, {"A", "B", "C"}).rules[0].actions


def test_the_forwards_after_an_overlay_send_its_series_as_after_any_derivation() -> None:
    """Written as for anonymize: a forward before the overlay sends the originals, those after
    it (and its own forward key) the overlay series; nothing else may follow it."""
    before, overlay = actions_of("      - forward: [A]\n      - overlay: {forward: [B]}\n"
                                 "      - forward: [C]")
    assert isinstance(before, ForwardAction) and before.targets == ("A",)
    assert isinstance(overlay, OverlayAction) and overlay.targets == ("B", "C")
    assert plan_overlay(overlay) == [PlannedJob("overlay", "B+C")]
    with pytest.raises(RulesError, match=r"actions\[1\]: duplicate target 'B'"):
        actions_of("      - overlay: {forward: [B]}\n      - forward: [B]")
    with pytest.raises(RulesError, match=r"only forward may follow overlay .*overlay series"):
        actions_of("      - overlay: {}\n      - export: {folder: /tmp}")


@pytest.mark.parametrize(
    ("options", "path", "reason"),
    [
        ("{planes: [axial, transverse]}", "overlay.planes[1]", "unknown plane 'transverse'"),
        ("{planes: [axial, axial]}", "overlay.planes", "listed twice"),
        ("{colour: red}", "overlay.colour", "unknown option"),
        ("{forward: [NOWHERE]}", "overlay.forward[0]", "unknown target 'NOWHERE'"),
        ("{wait_for_images: soon}", "overlay.wait_for_images", "expected a duration"),
        ("{per_roi: yes please}", "overlay.per_roi", "expected true or false"),
        ("{ignore: [[a]]}", "overlay.ignore[0]", "expected a name or glob"),
        ("{series_number: -3}", "overlay.series_number", "expected a whole number"),
        ("[axial]", "overlay", "expected a mapping"),
    ],
)
def test_errors_name_the_option(options: str, path: str, reason: str) -> None:
    with pytest.raises(RulesError) as caught:
        overlay_of(options, {"VIEWER"})
    assert caught.value.path.endswith(path)
    assert reason in caught.value.reason


def test_postpone_puts_a_claimed_job_back_without_spending_an_attempt(tmp_path: Path) -> None:
    db = Database(tmp_path / "q.sqlite", [META_SCHEMA, AUDIT_SCHEMA, JOBS_SCHEMA])
    queue = JobQueue(db, RetryPolicySettings(max_attempts=2))
    spec = JobSpec(rule="r", action="overlay", trigger="instance", level="instance",
                   resource_id="rs", target="VIEWER")
    with db.transaction() as connection:
        job_id, _ = queue.enqueue(connection, spec, ["rs"])
    for _ in range(5):  # more waits than the retry policy allows attempts
        claim = queue.claim(1)
        assert claim is not None and claim.job_ids == [job_id]
        queue.postpone(claim.job_ids, 0.0, "waiting: 3 images missing")
    job = queue.get(job_id)
    assert job is not None
    assert (job["state"], job["attempts"], job["last_status"]) == ("pending", 0, "waiting")
    assert job["last_error"] == "waiting: 3 images missing"
    queue.postpone([job_id], 0.0, "not running")  # only a claimed (running) job is postponed
    claim = queue.claim(1)
    assert claim is not None
    queue.postpone(claim.job_ids, 60.0, "later")
    assert queue.claim(1) is None
    assert 59 < (queue.next_due_in() or 0) <= 60
