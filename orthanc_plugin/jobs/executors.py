"""How the queue meets the capabilities: rule actions become jobs, jobs go to an executor.

Each capability (forwarding, de-identification, export, contours, ...) registers:
- a planner: (rule action) -> the (job action, target) pairs to queue for the matched instances;
- an executor: runs a claim of jobs of its job action for one target.
The intake and the sender threads know nothing else about what the capabilities do.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from orthanc_plugin.jobs.queue import Claim, ClaimedItem
from orthanc_plugin.jobs.records import Job


@dataclass(frozen=True)
class PlannedJob:
    action: str          # job action, the key of its executor, e.g. "forward"
    target: str          # what the job is for: a modality name, a folder, ...


Planner = Callable[[Any], list[PlannedJob]]
# (the transaction that queued them, the rule, the new jobs with their specs) -> None. A gate may
# hold the jobs a rule just queued (approvals) before any worker can claim them.
Gate = Callable[[Any, Any, list[tuple[int, Any]]], None]


class Executor(Protocol):
    max_items_per_claim: int

    def run(self, claim: Claim) -> None: ...


class Registry:
    def __init__(self) -> None:
        self.planners: dict[type, Planner] = {}
        self.executors: dict[str, Executor] = {}
        self.gates: list[Gate] = []

    def add_planner(self, action_type: type, planner: Planner) -> None:
        self.planners[action_type] = planner

    def add_executor(self, job_action: str, executor: Executor) -> None:
        self.executors[job_action] = executor

    def plan(self, action: Any) -> list[PlannedJob]:
        planner = self.planners.get(type(action))
        if planner is None:
            raise LookupError(f"no planner for action {type(action).__name__}")
        return planner(action)

    def max_items(self, job_action: str) -> int:
        executor = self.executors.get(job_action)
        return executor.max_items_per_claim if executor else 1

    def executor(self, job_action: str) -> Executor:
        executor = self.executors.get(job_action)
        if executor is None:
            raise LookupError(f"no executor for job action {job_action!r}")
        return executor


def jobs_with_items(claim: Claim) -> list[tuple[Job, list[ClaimedItem]]]:
    """The claim's jobs, each with its own items in claim order."""
    by_job: dict[int, list[ClaimedItem]] = {job.id: [] for job in claim.jobs}
    for item in claim.items:
        by_job[item.job_id].append(item)
    return [(job, by_job[job.id]) for job in claim.jobs]


def action_of_job(ruleset: Any, job: Job, action_type: type) -> Any | None:
    """The rule action a queued job was made for, if the rules in force still have it.

    Jobs outlive reloads: a renamed rule or a removed action leaves jobs without their action.
    """
    for rule in ruleset.rules:
        if rule.name != job.rule:
            continue
        for action in rule.actions:
            if isinstance(action, action_type) and getattr(action, "job_target", None) == job.target:
                return action
    return None
