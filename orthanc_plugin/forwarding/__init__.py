"""Forwarding: ordered C-STORE through Orthanc's own SCU, per-instance truth, in-flight verification,
storage commitment."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from orthanc_plugin.db_engine import StateDatabase
from orthanc_plugin.forwarding import store
from orthanc_plugin.forwarding.action import Forwarder
from orthanc_plugin.forwarding.commitment import CommitmentWatcher, commitment_gauges
from orthanc_plugin.forwarding.commitment import read_settings as read_commit_settings
from orthanc_plugin.forwarding.routes import add_routes
from orthanc_plugin.forwarding.rule import JOB_ACTION, plan_forward, verify_settings
from orthanc_plugin.forwarding.store import JobStudy
from orthanc_plugin.forwarding.stow import StowClient
from orthanc_plugin.forwarding.verify import InFlightVerifier
from orthanc_plugin.jobs.states import JobState
from orthanc_plugin.labels import PARKED, StudyLabels, label_for_target, orthanc_study_id
from orthanc_plugin.rules import ForwardAction
from orthanc_plugin.transform.copy import CopyMaker
from orthanc_plugin.transform.names_source import NameTables
from orthanc_plugin.transform.record import CopyRecorder
from orthanc_plugin.transform.resolve import CopySpecs

if TYPE_CHECKING:
    from orthanc_plugin.context import CapabilityContext


def study_labeller(labels: StudyLabels, db: StateDatabase
                   ) -> Callable[[JobStudy, str, int], None]:
    """A settled forward job's study gets rtgw-sent-<TARGET> once something reached the target,
    and rtgw-parked while a job of it is parked (removed when one of its jobs completes)."""
    def label(job: JobStudy, state: str, sent: int) -> None:
        if state not in ("done", "dead"):
            return
        if not job.study_uid:
            # Read at its claim; decided at arrival, its study may be known by now, else the
            # description labels it (label_settled).
            job = store.job_study(db, job.job_id) or job
        if not job.study_uid:
            return
        study = orthanc_study_id(job.patient_id, job.study_uid)
        if state == JobState.DEAD:
            labels.add(study, PARKED)
            return
        if sent:
            labels.add(study, label_for_target(job.target))
        if job.failed_before:
            labels.remove(study, PARKED)
    return label


def label_settled(db: StateDatabase, label: Callable[[JobStudy, str, int], None],
                  job_ids: Sequence[int]) -> None:
    """Labels the studies of forward jobs that ended before their study was known (decided at
    arrival, jobs/arrival.py), as their own settling would have."""
    for job in store.settled_jobs(db, job_ids, JOB_ACTION):
        label(job, job.state, job.sent)


def _keyed_uids(ctx: CapabilityContext) -> Callable[[str], str]:
    # Imported here: de-identification queues forwards, so it imports this package.
    from orthanc_plugin.deid import pseudonymizer

    return pseudonymizer(ctx).uid


def install(ctx: CapabilityContext) -> None:
    commit = read_commit_settings(ctx.section("Forwarding"))
    # What forwarding keeps of its items follows them: retried by hand, pruned, shown.
    ctx.hooks.items_reset.append(store.forget_reset_items)
    ctx.hooks.jobs_pruned.append(store.forget_pruned_jobs)
    ctx.hooks.job_details.append(lambda job_id: store.job_commitment(ctx.db, job_id))
    watcher = CommitmentWatcher(ctx.host, ctx.db, ctx.recorder, commit, ctx.host.log_warning,
                                ctx.instance_keys)
    ctx.hooks.on_start.append(watcher.start)
    ctx.hooks.on_stop.append(watcher.stop)
    if commit.modalities:
        ctx.hooks.metrics.append(lambda: commitment_gauges(ctx.db))
    verify = verify_settings(ctx.config.section)
    default = verify.get("*", "c-find")
    stow = StowClient(ctx.config.dicomweb_servers) if ctx.config.dicomweb_servers else None
    label_study = study_labeller(ctx.labels, ctx.db)
    forwarder = Forwarder(
        ctx.host, ctx.queue, ctx.recorder, ctx.file_sizes,
        ctx.config.max_instances_per_association,
        InFlightVerifier(ctx.host, ctx.instance_keys,
                         lambda target: verify.get(target, default), stow),
        copies=CopyMaker(ctx.host, NameTables(), _keyed_uids(ctx)),
        copy_specs=CopySpecs(ctx.rules),
        copy_record=CopyRecorder(ctx.db, ctx.recorder),
        stow=stow,
        after_settle=ctx.refresh_queue_gauges,
        stopping=ctx.stopping,
        label_study=label_study,
        commit_wanted=commit.wanted,
    )
    ctx.hooks.after_records_completed.append(
        lambda job_ids: label_settled(ctx.db, label_study, job_ids))
    ctx.registry.add_planner(ForwardAction, plan_forward)
    ctx.registry.add_executor(JOB_ACTION, forwarder)
    add_routes(ctx.router, ctx.db)


__all__ = ["install"]
