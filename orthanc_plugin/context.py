"""What a capability is given at install: one context object, never the whole Gateway.

It names every way in: Orthanc (host), the database, the queue and the executor registry, the
audit recorder, the router for its routes, its own configuration section, and the named hook
points where it plugs into the gateway's life (intake hooks, start/stop, rules loaded).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orthanc_plugin.api.router import Router
from orthanc_plugin.audit.recorder import AuditRecorder
from orthanc_plugin.config import SECTION, ConfigError, GatewayConfig
from orthanc_plugin.db_engine import StateDatabase
from orthanc_plugin.jobs.executor_base import JobContext
from orthanc_plugin.jobs.executors import Registry
from orthanc_plugin.jobs.facts import FactsBuilder
from orthanc_plugin.jobs.queue import AdmissionCheck, JobDetails, JobItemsReset, JobQueue
from orthanc_plugin.labels import StudyLabels
from orthanc_plugin.ports import Host
from orthanc_plugin.reception import ReceptionGate
from orthanc_plugin.retention import JobsPruned
from orthanc_plugin.rules import RuleSet


@dataclass
class Hooks:
    """Named hook points. Intake hooks run on the lead worker's intake thread."""

    # Called after instances are described; return True when there is more to do at once.
    after_describe: list[Callable[[], bool]] = field(default_factory=list)
    # Called only while no instance arrives and no job runs (the SQL index).
    when_quiet: list[Callable[[], bool]] = field(default_factory=list)
    # Jobs decided at arrival that ended before their instance was described, once their
    # records name the study (jobs/arrival.py); e.g. the study's sent label.
    after_records_completed: list[Callable[[Sequence[int]], None]] = field(default_factory=list)
    # Instance ID -> the source it was stored for (import folder), or None.
    source_overrides: list[Callable[[str], str | None]] = field(default_factory=list)
    # The lead worker's own loops start and stop with the gateway.
    on_start: list[Callable[[], None]] = field(default_factory=list)
    on_stop: list[Callable[[], None]] = field(default_factory=list)
    # Called with the rules in force once started and after each good reload.
    on_rules_loaded: list[Callable[[RuleSet], object]] = field(default_factory=list)
    # Destination policies the queue consults inside each claim (caps, time windows).
    claim_admission: list[AdmissionCheck] = field(default_factory=list)
    # A job retried by hand, in the queue's transaction: what a capability recorded of its
    # items that go back to pending is forgotten (forwarding: their commitment).
    items_reset: list[JobItemsReset] = field(default_factory=list)
    # What a capability adds to a job's JSON (forwarding: its storage commitment).
    job_details: list[JobDetails] = field(default_factory=list)
    # Retention prunes finished jobs: a capability's records of them go in the same batch.
    jobs_pruned: list[JobsPruned] = field(default_factory=list)
    # Gauges a capability adds to the Prometheus snapshot (name -> value), read per scrape.
    metrics: list[Callable[[], dict[str, float]]] = field(default_factory=list)
    # Sections a capability adds to GET stats (name -> JSON value), read per request.
    stats: list[Callable[[], dict[str, Any]]] = field(default_factory=list)


@dataclass(eq=False)  # identity: plans/routes keys providers by context
class CapabilityContext:
    host: Host
    db: StateDatabase
    queue: JobQueue
    registry: Registry
    recorder: AuditRecorder
    router: Router
    config: GatewayConfig
    hooks: Hooks
    jobs: JobContext
    facts: FactsBuilder
    stopping: threading.Event
    rules: Callable[[], RuleSet]
    known_targets: Callable[[], set[str]]
    wake_workers: Callable[[], None]
    file_sizes: Callable[[Sequence[str]], dict[str, int]]
    instance_keys: Callable[[Sequence[str]], dict[str, Any]]
    refresh_queue_gauges: Callable[[], None]
    # Orthanc labels on the studies acted on (1.12+, feature-detected; nothing on 1.10).
    labels: StudyLabels
    # This worker process's reception gate (reception.py): background work marks its threads
    # with it and holds its own loops while a modality's instances arrive.
    gate: ReceptionGate

    @property
    def config_dir(self) -> Path:
        return self.config.config_dir

    def section(self, name: str) -> dict[str, Any]:
        """This capability's own sub-section of RtGateway (e.g. "Export"), {} when absent."""
        value = self.config.section.get(name) or {}
        if not isinstance(value, dict):
            raise ConfigError(f"{SECTION}.{name}: expected an object")
        return value
