"""What the clean-up of Orthanc's storage decides, as pure logic: which studies may go and why each
other one stays. No `orthanc`, no SQL: the facts come from cleanup/store.py and cleanup/action.py.

A study goes only when nothing the gateway still owes concerns it (every job delivered or
explicitly cancelled, nothing held, parked or pending, no incomplete plan of its patient, no
harvest fetching its patient, nothing still arriving) and then only for one of the policy's reasons:
it is older than the age limit, or the storage is over its threshold and it is among the oldest.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

DAY_SECONDS = 86400.0


@dataclass(frozen=True)
class CleanupPolicy:
    """The rules file's `cleanup:` section. No limit set: nothing is ever deleted."""

    older_than_days: float | None = None
    # Orthanc's own storage (its /statistics TotalDiskSizeMB) above this: oldest studies go first.
    storage_above_mb: float | None = None
    # The storage folder's file system fuller than this: oldest studies go first.
    disk_used_above_percent: float | None = None
    # A study that received an instance this recently is still arriving.
    quiet_minutes: float = 60.0
    check_every_minutes: float = 60.0
    max_deletions_per_round: int = 200

    @property
    def active(self) -> bool:
        return any(limit is not None for limit in (
            self.older_than_days, self.storage_above_mb, self.disk_used_above_percent))

    @property
    def quiet_seconds(self) -> float:
        return self.quiet_minutes * 60.0


@dataclass(frozen=True)
class StudyFacts:
    study_id: str                   # Orthanc's ID
    study_uid: str
    patient_id: str
    patient_name: str
    description: str
    study_date: str
    last_arrival_epoch: float | None  # None: no record of when it arrived
    # What still concerns it, each said as a person reads it ("job 12 (forward to ARCHIVE) parked").
    blockers: tuple[str, ...] = ()


@dataclass(frozen=True)
class Verdict:
    study: StudyFacts
    delete: bool
    reason: str


@dataclass(frozen=True)
class StorageUse:
    orthanc_mb: float
    disk_used_percent: float
    disk_total_mb: float

    def after_freeing(self, megabytes: float) -> StorageUse:
        """The use once `megabytes` of Orthanc's files are gone (a dry run's estimate)."""
        share = 100.0 * megabytes / self.disk_total_mb if self.disk_total_mb else 0.0
        return StorageUse(self.orthanc_mb - megabytes, self.disk_used_percent - share,
                          self.disk_total_mb)

    def over(self, policy: CleanupPolicy) -> str | None:
        """Why the storage is over the policy's threshold, or None."""
        if policy.storage_above_mb is not None and self.orthanc_mb > policy.storage_above_mb:
            return (f"Orthanc's storage {self.orthanc_mb:.0f} MB is above "
                    f"{policy.storage_above_mb:g} MB")
        if (policy.disk_used_above_percent is not None
                and self.disk_used_percent > policy.disk_used_above_percent):
            return (f"the storage disk is {self.disk_used_percent:.1f} % full, above "
                    f"{policy.disk_used_above_percent:g} %")
        return None


def age_text(seconds: float) -> str:
    if seconds >= 2 * DAY_SECONDS:
        return f"{seconds / DAY_SECONDS:.0f} days"
    if seconds >= 7200:
        return f"{seconds / 3600:.0f} hours"
    return f"{max(seconds, 0) / 60:.0f} minutes"


def guard(study: StudyFacts, policy: CleanupPolicy, now: float) -> tuple[str, ...]:
    """Why the study must stay whatever the storage's state; () when it may go."""
    reasons = list(study.blockers)
    if study.last_arrival_epoch is None:
        reasons.append("no record of its arrival at the gateway")
    elif now - study.last_arrival_epoch < policy.quiet_seconds:
        reasons.append(f"still arriving (last instance {age_text(now - study.last_arrival_epoch)}"
                       f" ago, quiet after {policy.quiet_minutes:g} minutes)")
    return tuple(reasons)


def by_age(studies: Iterable[StudyFacts], policy: CleanupPolicy, now: float) -> list[Verdict]:
    """Every study's verdict under the age limit (the threshold mode adds its own), oldest first."""
    verdicts = []
    for study in oldest_first(studies):
        blockers = guard(study, policy, now)
        if blockers:
            verdicts.append(Verdict(study, False, "; ".join(blockers)))
            continue
        assert study.last_arrival_epoch is not None
        age = now - study.last_arrival_epoch
        if policy.older_than_days is not None and age >= policy.older_than_days * DAY_SECONDS:
            verdicts.append(Verdict(study, True, f"received {age_text(age)} ago, older than "
                                                 f"{age_text(policy.older_than_days * DAY_SECONDS)}; "
                                                 "nothing pending"))
        else:
            verdicts.append(Verdict(study, False, _young(age, policy)))
    return verdicts


def _young(age: float, policy: CleanupPolicy) -> str:
    if policy.older_than_days is None:
        return f"received {age_text(age)} ago; goes only if the storage passes its threshold"
    return (f"received {age_text(age)} ago; goes after {policy.older_than_days:g} days, or "
            "earlier if the storage passes its threshold" if
            policy.storage_above_mb is not None or policy.disk_used_above_percent is not None
            else f"received {age_text(age)} ago; goes after {policy.older_than_days:g} days")


def oldest_first(studies: Iterable[StudyFacts]) -> list[StudyFacts]:
    # Studies with no record of arrival sort last: they are never deleted anyway.
    return sorted(studies, key=lambda s: (s.last_arrival_epoch is None,
                                          s.last_arrival_epoch or 0.0, s.study_id))


def threshold_candidates(verdicts: Sequence[Verdict], policy: CleanupPolicy,
                         now: float) -> list[StudyFacts]:
    """Studies the threshold mode may take, oldest first: those the guard lets go but the age
    limit keeps (the age limit's own go first anyway)."""
    return [v.study for v in verdicts if not v.delete and not guard(v.study, policy, now)]
