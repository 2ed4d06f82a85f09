"""One way a matched rule becomes queued work, for every trigger (instance, stable study, plan
complete): each action of the rule is planned by its capability and queued for the instances, in
the order given, once per (rule, target)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from orthanc_plugin.db_engine import DbConnection
from orthanc_plugin.jobs.executors import Registry
from orthanc_plugin.jobs.queue import JobQueue, JobSpec
from orthanc_plugin.rules import Rule

# (job action, target) -> the job's spec: what the trigger knows about the resource.
SpecFor = Callable[[str, str], JobSpec]


@dataclass
class Applied:
    job_ids: list[int] = field(default_factory=list)
    new_instances: int = 0
    targets: tuple[str, ...] = ()


def queue_rule_actions(
    connection: DbConnection, queue: JobQueue, registry: Registry, rule: Rule,
    instance_ids: Sequence[str], spec_for: SpecFor,
) -> Applied:
    applied = Applied()
    queued: list[tuple[int, JobSpec]] = []
    for action in rule.actions:
        for planned in registry.plan(action):
            applied.targets += (planned.target,)
            spec = spec_for(planned.action, planned.target)
            job_id, count = queue.enqueue(connection, spec, instance_ids)
            applied.new_instances += count
            if job_id is not None:
                applied.job_ids.append(job_id)
                queued.append((job_id, spec))
    # In the same transaction, so no worker can claim a job a gate holds (approvals).
    for gate in registry.gates:
        if queued:
            gate(connection, rule, queued)
    return applied
