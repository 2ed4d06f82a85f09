"""Writes down what each destination's copy was: the audit event per job (syntax, tag changes,
names), the names before and after (copy_names), and a quarantine row for a copy not made."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence

from orthanc_plugin.audit.recorder import AuditRecorder
from orthanc_plugin.db_engine import StateDatabase
from orthanc_plugin.jobs.queue import Claim, ClaimedItem
from orthanc_plugin.transform.copy import MadeCopy
from orthanc_plugin.transform.rename import Status
from orthanc_plugin.transform.store import CopyName, note_copy_names
from orthanc_plugin.transform.syntax import title_of

MAX_NAMES_IN_DETAIL = 40


class CopyRecorder:
    def __init__(self, db: StateDatabase, recorder: AuditRecorder) -> None:
        self.db = db
        self.recorder = recorder

    def sent(self, claim: Claim, made: Sequence[tuple[ClaimedItem, MadeCopy]]) -> None:
        jobs = {job.id: job for job in claim.jobs}
        by_job: dict[int, list[tuple[ClaimedItem, MadeCopy]]] = defaultdict(list)
        for item, copy in made:
            by_job[item.job_id].append((item, copy))
        stamp = self.recorder.now()
        with self.db.transaction() as connection:
            for job_id, copies in by_job.items():
                job = jobs[job_id]
                note_copy_names(connection, stamp, claim.target, job.rule, [
                    CopyName(item.instance_id, name.attribute, name.before, name.after,
                             str(name.status))
                    for item, copy in copies for name in copy.renamed])
                self.recorder.event(
                    "copy-sent", status="ok", rule=job.rule, target=claim.target,
                    job_id=job_id, study_uid=job.study_uid or "",
                    patient_id=job.patient_id or "",
                    detail=describe([copy for _, copy in copies]), connection=connection)

    def not_made(self, item: ClaimedItem, target: str, reason: str) -> None:
        def write() -> None:
            with self.db.transaction() as connection:
                self.recorder.quarantine(connection, item.instance_id,
                                         f"copy for {target} not made: {reason}")
        self.db.durable(write, "writing the quarantine row")


def describe(copies: Sequence[MadeCopy]) -> str:
    """One line a person reads: how many, in which syntax, what changed, which names."""
    syntaxes = Counter(title_of(copy.syntax_uid) for copy in copies)
    parts = [", ".join(f"{count} as {title}" for title, count in syntaxes.items())]
    changes = sorted({change for copy in copies for change in copy.changes})
    if changes:
        parts.append("; ".join(changes))
    names = [name for copy in copies for name in copy.renamed]
    renamed = _unique(f"{name.before} → {name.after}" for name in names if name.changed)
    if renamed:
        parts.append("names: " + ", ".join(renamed[:MAX_NAMES_IN_DETAIL]))
    for status in (Status.NO_MATCH, Status.HELPER, Status.CONFLICT, Status.TOO_LONG):
        left = _unique(name.before for name in names if name.status is status)
        if left:
            parts.append(f"{status}: " + ", ".join(left[:MAX_NAMES_IN_DETAIL]))
    return "; ".join(parts)


def _unique(texts: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(texts))
