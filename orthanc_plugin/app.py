"""The gateway: wires storage, rules, intake, queue, senders and routes. Knows nothing of `orthanc`."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from orthanc_plugin import capabilities
from orthanc_plugin.api.cross_site import read_trusted_origins
from orthanc_plugin.api.gateway_routes import add_routes
from orthanc_plugin.api.health import HealthProbes, probe_write
from orthanc_plugin.api.router import Router
from orthanc_plugin.audit.counts import running_totals
from orthanc_plugin.audit.metrics import Metrics
from orthanc_plugin.audit.received import received_keys, received_sizes
from orthanc_plugin.audit.recorder import AuditRecorder
from orthanc_plugin.audit.tables import MIGRATIONS as AUDIT_MIGRATIONS
from orthanc_plugin.audit.tables import SCHEMA as AUDIT_SCHEMA
from orthanc_plugin.audit.translog import TransactionLog
from orthanc_plugin.config import SECTION, ConfigError, GatewayConfig, parse_config
from orthanc_plugin.context import CapabilityContext, Hooks
from orthanc_plugin.db import Migration
from orthanc_plugin.db_engine import StateDatabase
from orthanc_plugin.forwarding.verify import InstanceKeys
from orthanc_plugin.jobs.arrival_store import SCHEMA as ARRIVAL_SCHEMA
from orthanc_plugin.jobs.executor_base import JobContext
from orthanc_plugin.jobs.executors import Registry
from orthanc_plugin.jobs.intake import Intake
from orthanc_plugin.jobs.intake_lock_store import IntakeLeadership
from orthanc_plugin.jobs.own_output import SCHEMA as OWN_OUTPUT_SCHEMA
from orthanc_plugin.jobs.own_output import own_output_source
from orthanc_plugin.jobs.queue import JobQueue
from orthanc_plugin.jobs.states import JobState
from orthanc_plugin.jobs.tables import MIGRATIONS as JOBS_MIGRATIONS
from orthanc_plugin.jobs.tables import SCHEMA as JOBS_SCHEMA
from orthanc_plugin.jobs.workers import WorkerPool, WorkerRole
from orthanc_plugin.labels import StudyLabels
from orthanc_plugin.ports import Host, HostError
from orthanc_plugin.retention import Retention
from orthanc_plugin.retention import read_settings as read_retention
from orthanc_plugin.rules import (
    RulesError,
    RuleSet,
    Trigger,
    Vocabulary,
    evaluate,
    explain_each,
    load_rules_file,
    load_rules_text,
)
from orthanc_plugin.state_database import open_state_database, where

RULES_TEXT_KEY = "rules_in_force_text"
# The gauge of finished jobs still in the table (rtgw_jobs_done): counting them reads an index as
# long as the table, so at most this often, not at every read of the metrics (every 2 s).
DONE_COUNT_EVERY_SECONDS = 60.0
RULES_SHA_KEY = "rules_in_force_sha256"


class Gateway:
    def __init__(self, host: Host, config: GatewayConfig, ruleset: RuleSet,
                 role: WorkerRole | None = None, vocabulary: Vocabulary | None = None) -> None:
        role = role or WorkerRole()
        self.role = role
        # What the rules may say, from the capability list; every reload reads with it.
        self.vocabulary = vocabulary if vocabulary is not None else capabilities.vocabulary()
        self.host = host
        self.config = config
        self.ruleset = ruleset
        self._rules_lock = threading.Lock()
        # The SQLite file, or the PostgreSQL server several nodes share (state_database.py).
        self.db: StateDatabase = open_state_database(
            config, [AUDIT_SCHEMA, JOBS_SCHEMA, OWN_OUTPUT_SCHEMA, ARRIVAL_SCHEMA,
                     *capabilities.extra_schemas()],
            role.report_trouble,
        )
        # Before anything reads or writes: one sequence over the core's parts and the
        # capabilities' (db.Migration).
        self.db.migrate(all_migrations())
        self.metrics = Metrics(host.set_metric)
        self.recorder = AuditRecorder(
            self.db, TransactionLog(config.transaction_log_folder), self.metrics
        )
        self.queue = JobQueue(self.db, config.retry, role.claimant,
                              lease_seconds=config.claim_lease_seconds)
        # Set at a requested stop: executors end their claims at the next safe boundary.
        self.stopping = threading.Event()
        self.registry = Registry()
        self.intake = Intake(
            host, self.db, self.queue, self.recorder, lambda: self.ruleset,
            config.stable_age_seconds, self._wake_senders, self.registry,
        )
        self.intake.source_overrides.append(own_output_source(self.db))
        self._rules_checked_at = 0.0
        self._followed_rules_sha = ""
        self.pool = WorkerPool(
            self.intake, self.queue, self.registry,
            config.workers if role.job_threads is None else role.job_threads,
            config.poll_interval_seconds, host.log_error, watch=role.watch,
            before_claim=self.follow_published_rules, gate=role.gate,
            intake_held=IntakeLeadership(self.db).held,
        )
        # The lead worker wakes the other worker processes too.
        self.wake_other_workers = role.wake_other_workers
        self.job_context = JobContext(host, self.db, self.queue, self.recorder,
                                      lambda: self.ruleset, self._wake_senders, self.stopping)
        try:
            trusted = read_trusted_origins(config.section.get("TrustedOrigins"))
        except ValueError as error:
            raise ConfigError(f"{SECTION}.TrustedOrigins: {error}") from None
        self.router = Router(trusted)
        self.retention = Retention(self.db, read_retention(config.section), host.log_warning)
        # The intake's, the queue's and retention's hook lists are the context's: a capability
        # plugs in by name.
        self.hooks = Hooks(after_describe=self.intake.after_describe,
                           when_quiet=self.intake.when_quiet,
                           source_overrides=self.intake.source_overrides,
                           after_records_completed=self.intake.after_records_completed,
                           claim_admission=self.queue.admission_checks,
                           items_reset=self.queue.items_reset,
                           job_details=self.queue.job_details,
                           jobs_pruned=self.retention.jobs_pruned)
        # How many arrivals were decided from the plugin's note alone (jobs/arrival.py).
        self.hooks.stats.append(
            lambda: {"intake": {"decided_at_arrival": self.intake.arrival.decided}})
        self.rules_text = _read_text(config.rules_file)
        self.health_probes = HealthProbes(
            self.db, {"storage": config.storage_directory, "database": config.database.parent},
            config.min_free_disk_mb, role.worker_pids)
        add_routes(self.router, self)
        self._started = False
        self._gauges_refreshed_at = float("-inf")
        self._done_counted_at = float("-inf")
        self.context = CapabilityContext(
            host=host, db=self.db, queue=self.queue, registry=self.registry,
            recorder=self.recorder, router=self.router, config=config, hooks=self.hooks,
            jobs=self.job_context, facts=self.intake.facts, stopping=self.stopping,
            rules=lambda: self.ruleset, known_targets=self.known_targets,
            wake_workers=self._wake_senders, file_sizes=self.file_sizes,
            instance_keys=self.instance_keys, refresh_queue_gauges=self.refresh_queue_gauges,
            labels=StudyLabels(host, host.log_warning), gate=role.gate,
        )
        capabilities.install_all(self.context)

    # -- life cycle ------------------------------------------------------------------------------
    def start(self, *, lead: bool = True, generation: str = "") -> None:
        """The lead worker runs the intake and the capabilities' loops; every worker runs jobs."""
        if self._started:
            return
        self._started = True
        if not lead:
            self.pool.start(intake=False)
            return
        recovered = self.queue.recover_after_crash(generation)
        self.recorder.log_orphaned_transfers(generation=generation)
        self.publish_rules()
        self.intake.initialise_cursor()
        self.recorder.event(
            "gateway-started", status="ok",
            detail=f"{len(self.ruleset.rules)} rule(s), sha256 {self.ruleset.sha256}, "
            f"{recovered} interrupted job(s) requeued",
        )
        self.seed_metrics()
        self.pool.start(intake=True)
        self.retention.start()
        for hook in self.hooks.on_start:
            hook()
        for rules_hook in self.hooks.on_rules_loaded:
            rules_hook(self.ruleset)
        self.host.log_warning(
            f"started: {len(self.ruleset.rules)} rule(s) from {self.config.rules_file}, "
            f"{self.config.workers} worker process(es), database {where(self.config)}"
        )

    def seed_metrics(self) -> None:
        """Prometheus counters continue from the audit's running totals (audit/counts.py) after a
        restart instead of from zero; retention's pruning never lowers them."""
        totals = running_totals(self.db)
        self.metrics.gauge("rtgw_instances_sent_total", totals.get("sent_instances", 0))
        self.metrics.gauge("rtgw_bytes_sent_total", totals.get("sent_bytes", 0))
        self.metrics.gauge("rtgw_transfer_failures_total", totals.get("failures", 0))
        targets: dict[str, list[float]] = {}
        for name, value in totals.items():
            if name.startswith("target_"):
                target, _, kind = name[len("target_"):].rpartition("_")
                targets.setdefault(target, [0.0, 0.0])[kind == "failures"] += value
        for target, (sent, failed) in targets.items():
            self.metrics.gauge(f"rtgw_target_{target}_instances_sent_total", sent)
            self.metrics.gauge(f"rtgw_target_{target}_failures_total", failed)
        self.metrics.gauge("rtgw_rule_evaluations_total", totals.get("evaluations", 0))
        self.metrics.gauge("rtgw_rule_matches_total", totals.get("matches", 0))
        self.metrics.gauge("rtgw_quarantined_total", totals.get("quarantined", 0))
        self.refresh_queue_gauges()

    def refresh_queue_gauges(self) -> None:
        # Called after every settled claim, at most once a second, and only the live states:
        # counting the finished jobs too would read the whole table on the sending path
        # (tests/unit/test_query_plans.py); `done` is counted when the metrics are read.
        now = time.monotonic()
        if now - self._gauges_refreshed_at < 1.0:
            return
        self._gauges_refreshed_at = now
        counts = self.queue.live_state_counts()
        for state in (JobState.PENDING, JobState.HELD, JobState.RUNNING, JobState.DEAD):
            self.metrics.gauge(f"rtgw_jobs_{state}", counts.get(state, 0))

    def stop(self) -> None:
        if self._started:
            for hook in self.hooks.on_stop:
                hook()
            self.retention.stop()
            self.pool.stop()
            self.recorder.event("gateway-stopped", status="ok")
            self._started = False

    # -- callbacks (memory only) -------------------------------------------------------------------
    def record_stored_instance(self, instance_id: str, noted: dict[str, Any]) -> None:
        self.intake.note_stored(instance_id, noted)
        self.pool.wake_intake()

    def notify_stable_study(self, study_id: str) -> None:
        self.intake.note_stable_study(study_id)
        self.pool.wake_intake()

    def notify_deleted_instance(self, instance_id: str) -> None:
        self.intake.note_deleted(instance_id)
        self.pool.wake_intake()

    def _wake_senders(self) -> None:
        self.pool.wake_senders()
        self.wake_other_workers()

    def metrics_snapshot(self) -> dict[str, float]:
        """Counters from the database, so every worker's transfers count and a restart continues."""
        self._gauges_refreshed_at = float("-inf")
        self.seed_metrics()
        now = time.monotonic()
        if now - self._done_counted_at >= DONE_COUNT_EVERY_SECONDS:
            # Finished jobs are most of the table: counted once a minute, not at every read.
            self._done_counted_at = now
            self.metrics.gauge(f"rtgw_jobs_{JobState.DONE}",
                               self.queue.state_counts().get(JobState.DONE, 0))
        writable, _ = probe_write(self.db)
        self.metrics.gauge("rtgw_database_unwritable",
                           0 if writable and not self.db.trouble.unwritable else 1)
        self.metrics.gauge("rtgw_database_write_failures_total", self.db.trouble.failures)
        for capability_gauges in self.hooks.metrics:
            for name, value in capability_gauges().items():
                self.metrics.gauge(name, value)
        return self.metrics.snapshot()

    # -- rules shared by the worker processes ----------------------------------------------------
    def publish_rules(self) -> None:
        """The lead's rules in force, for the other workers (a reload happens in the lead only)."""
        with self.db.transaction() as connection:
            self.db.set_meta(RULES_TEXT_KEY, self.rules_text, connection)
            self.db.set_meta(RULES_SHA_KEY, self.ruleset.sha256, connection)
        self._followed_rules_sha = self.ruleset.sha256

    def follow_published_rules(self) -> None:
        now = time.monotonic()
        if now - self._rules_checked_at < 1.0:
            return
        self._rules_checked_at = now
        published = self.db.get_meta(RULES_SHA_KEY)
        if not published or published == self._followed_rules_sha:
            return
        text = self.db.get_meta(RULES_TEXT_KEY) or ""
        try:
            ruleset = load_rules_text(text, None, Path(self.config.rules_file).parent,
                                      self.vocabulary)
        except RulesError as error:  # the lead validated it; log and keep what is in force
            self.host.log_error(f"published rules not loaded: {error}")
            return
        with self._rules_lock:
            self.ruleset, self.rules_text = ruleset, text
            self._followed_rules_sha = published

    # -- rules -------------------------------------------------------------------------------------
    def known_targets(self) -> set[str]:
        targets = set(self.config.known_modalities) | set(self.config.dicomweb_servers)
        with contextlib.suppress(HostError):
            targets.update(self.host.get_json("/modalities"))
        return targets

    def reload_rules(self) -> RuleSet:
        with self._rules_lock:
            try:
                ruleset = load_rules_file(self.config.rules_file, self.known_targets(),
                                          self.vocabulary)
            except RulesError as error:
                self.recorder.event("rules-reload", status="refused", detail=str(error))
                self.host.log_error(f"rules not reloaded, the previous rules stay: {error}")
                raise
            self.ruleset = ruleset
            self.rules_text = _read_text(self.config.rules_file)
            self.publish_rules()
            self.recorder.event(
                "rules-reload", status="ok",
                detail=f"{len(ruleset.rules)} rule(s), sha256 {ruleset.sha256}",
            )
            if self._started:
                for hook in self.hooks.on_rules_loaded:
                    hook(ruleset)
            return ruleset

    def describe_rules(self) -> dict[str, Any]:
        return {
            "file": str(self.config.rules_file),
            "sha256": self.ruleset.sha256,
            "text": self.rules_text,
            "rules": self.ruleset.to_json(),
        }

    def test_rules(self, study: str) -> dict[str, Any]:
        """Which rules would fire on a study and why (not); nothing is queued or sent."""
        study_id = self._resolve_study(study)
        rows = self.intake.study_rows_without_adopting(study_id)
        labels = tuple(sorted({r.plan_label for r in rows if r.plan_label}))
        facts = self.intake.facts.build(rows, labels)
        results = []
        for rule in self.ruleset.rules:
            evaluation = evaluate(rule, facts)
            targets = [t for action in rule.actions for t in getattr(action, "targets", ())]
            results.append(
                {
                    "rule": rule.name,
                    "on": rule.on.value,
                    "enabled": rule.enabled,
                    "would_fire": evaluation.matched,
                    "failed_condition": evaluation.failed_condition,
                    "reason": evaluation.reason,
                    "instances": len(evaluation.instance_ids),
                    "targets": targets,
                    "conditions": explain_each(rule.match, facts),
                }
            )
        return {"study": study_id, "instances": len(rows), "plan_labels": labels, "rules": results}

    def _resolve_study(self, study: str) -> str:
        try:
            self.host.get_json(f"/studies/{study}")
            return study
        except HostError:
            pass
        try:
            matches = self.host.post_bytes("/tools/lookup", study.encode())
        except HostError:
            matches = []
        for match in matches or []:
            if match.get("Type") == "Study":
                return str(match["ID"])
        from orthanc_plugin.api.router import ApiError

        raise ApiError(404, f"no study {study!r} in Orthanc")

    # -- jobs --------------------------------------------------------------------------------------
    def retry_job(self, job_id: int) -> bool:
        retried = self.queue.retry_by_hand(job_id)
        if retried:
            self.recorder.event("job-retried-by-hand", status="pending", job_id=job_id)
            self._wake_senders()
        return retried

    def cancel_job(self, job_id: int, user: str) -> bool:
        cancelled = self.queue.cancel_by_hand(job_id)
        if cancelled:
            self.recorder.event("job-cancelled-by-hand", status="cancelled", job_id=job_id,
                                detail=f"cancelled by {user or 'an unnamed user'}")
        return cancelled

    def instance_keys(self, instance_ids: Sequence[str]) -> dict[str, InstanceKeys]:
        keys = {instance_id: InstanceKeys(k.study_uid, k.series_uid, k.sop_instance_uid,
                                          k.sop_class_uid)
                for instance_id, k in received_keys(self.db, instance_ids).items()}
        for instance_id in instance_ids:
            if instance_id not in keys:
                with contextlib.suppress(HostError, KeyError):
                    tags = self.host.get_json(f"/instances/{instance_id}/tags?simplify")
                    keys[instance_id] = InstanceKeys(
                        tags["StudyInstanceUID"], tags["SeriesInstanceUID"], tags["SOPInstanceUID"],
                        tags.get("SOPClassUID", ""))
        return keys

    def file_sizes(self, instance_ids: list[str] | Any) -> dict[str, int]:
        return received_sizes(self.db, list(instance_ids))


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        return ""


def all_migrations() -> list[Migration]:
    """Every part's schema migrations, one sequence (db.check_migrations)."""
    return [*JOBS_MIGRATIONS, *AUDIT_MIGRATIONS, *capabilities.migrations()]


def build_gateway(host: Host, orthanc_config: dict[str, Any], config_dir: Path,
                  role: WorkerRole | None = None) -> Gateway:
    """Read the settings and the rules; a broken rules file raises and Orthanc does not start."""
    config = parse_config(orthanc_config, config_dir)
    vocabulary = capabilities.vocabulary()
    # No DicomModalities in the file: they may live in Orthanc's database, checked at reload.
    ruleset = load_rules_file(config.rules_file,
                              set(config.known_modalities) | set(config.dicomweb_servers) or None,
                              vocabulary)
    return Gateway(host, config, ruleset, role, vocabulary)


__all__ = ["Gateway", "Trigger", "build_gateway"]
