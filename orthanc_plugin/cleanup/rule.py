"""The rules file's `cleanup:` section (what may leave Orthanc's storage, and when) and the
`delete_after: forwarded` action for pure relays.

    cleanup:
      older_than: 30d              # studies received more than 30 days ago go ...
      storage_above_gb: 400        # ... and, while Orthanc's storage is above 400 GB, the oldest
      disk_used_above_percent: 85  # ... or while its disk is more than 85 % full
      quiet_for: 60m               # a study that received an instance this recently stays
      check_every: 1h
      max_deletions_per_round: 200

    actions:
      - forward: ARCHIVE
      - delete_after: forwarded    # the matched instances leave once nothing still needs them

Both are read with the rules (reloadable), and only ever delete what the guard lets go
(cleanup/model.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from orthanc_plugin.cleanup.model import DAY_SECONDS, CleanupPolicy
from orthanc_plugin.jobs.executors import PlannedJob
from orthanc_plugin.rules.durations import duration_seconds
from orthanc_plugin.rules.errors import RulesError
from orthanc_plugin.rules.numbers import positive_number
from orthanc_plugin.rules.schema_actions import ActionContext, ActionParser, SectionParser
from orthanc_plugin.rules.wording import kind_of, one_of

SECTION = "cleanup"
JOB_ACTION = "delete-after-forwarded"
JOB_TARGET = "orthanc-storage"
KEYS = ("older_than", "storage_above_gb", "disk_used_above_percent", "quiet_for", "check_every",
        "max_deletions_per_round")
DELETE_AFTER_CHOICES = ("forwarded",)


@dataclass(frozen=True)
class DeleteAfterAction:
    when: str = "forwarded"

    @property
    def job_target(self) -> str:
        return JOB_TARGET


def parse_cleanup(raw: Any, path: str, context: ActionContext) -> CleanupPolicy:
    if raw is None:
        return CleanupPolicy()
    if not isinstance(raw, dict):
        raise RulesError(path, f"expected a mapping such as {{older_than: 30d}}, got {kind_of(raw)}")
    for key in raw:
        if key not in KEYS:
            raise RulesError(f"{path}.{key}", f"unknown option (expected one of: {one_of(KEYS)})")
    older = raw.get("older_than")
    gigabytes = positive_number(raw, "storage_above_gb", path)
    percent = positive_number(raw, "disk_used_above_percent", path)
    if percent is not None and percent >= 100:
        raise RulesError(f"{path}.disk_used_above_percent", "expected a percentage below 100")
    deletions = positive_number(raw, "max_deletions_per_round", path, whole=True)
    return CleanupPolicy(
        older_than_days=None if older is None else duration_seconds(
            older, f"{path}.older_than") / DAY_SECONDS,
        storage_above_mb=None if gigabytes is None else gigabytes * 1024.0,
        disk_used_above_percent=percent,
        quiet_minutes=duration_seconds(raw.get("quiet_for", "60m"), f"{path}.quiet_for",
                                       allow_zero=True) / 60.0,
        check_every_minutes=duration_seconds(raw.get("check_every", "1h"),
                                             f"{path}.check_every") / 60.0,
        max_deletions_per_round=200 if deletions is None else int(deletions),
    )


def parse_delete_after(raw: Any, path: str, context: ActionContext) -> DeleteAfterAction:
    if raw not in DELETE_AFTER_CHOICES:
        raise RulesError(path, f"unknown value {kind_of(raw)} "
                               f"(expected one of: {one_of(DELETE_AFTER_CHOICES)})")
    return DeleteAfterAction(str(raw))


def plan_delete_after(action: DeleteAfterAction) -> list[PlannedJob]:
    return [PlannedJob(JOB_ACTION, action.job_target)]


# What this capability adds to the rules' vocabulary (capabilities.vocabulary()).
SECTIONS: dict[str, SectionParser] = {SECTION: parse_cleanup}
ACTIONS: dict[str, ActionParser] = {"delete_after": parse_delete_after}
