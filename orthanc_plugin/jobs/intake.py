"""From Orthanc's change log to queued jobs: record, describe, evaluate rules, enqueue.

Orthanc's `/changes` log is the durable source: callbacks only wake this loop up, so an instance
stored while the plugin was stopped or crashing is found by reading the log from the saved cursor.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from typing import Any

from orthanc_plugin.audit.clock import now_iso
from orthanc_plugin.audit.recorder import AuditRecorder
from orthanc_plugin.channels import NotedFacts
from orthanc_plugin.db_engine import DbConnection, StateDatabase
from orthanc_plugin.jobs import intake_store as store
from orthanc_plugin.jobs.apply import Applied, queue_rule_actions
from orthanc_plugin.jobs.arrival import ArrivalDecider, Completed
from orthanc_plugin.jobs.arrival_store import ArrivalDecision
from orthanc_plugin.jobs.changes_cursor import GAP_WAIT_SECONDS, ChangesCursor
from orthanc_plugin.jobs.executors import Registry
from orthanc_plugin.jobs.facts import SOURCE_BY_ORIGIN, FactsBuilder
from orthanc_plugin.jobs.queue import JobQueue, JobSpec
from orthanc_plugin.jobs.send_order import OutgoingInstance, order_for_sending
from orthanc_plugin.ports import Host, HostError
from orthanc_plugin.rules import InstanceFacts, Rule, RuleSet, Trigger, evaluate
from orthanc_plugin.rules.arrival import DICOM_ORIGIN

CURSOR_KEY = "changes_cursor"
PLAN_LABEL_TAG = "300a-0002"
BATCH = 200
MAX_DESCRIBE_FAILURES = 5
# "Quiet" means no instance arrived for this long, not merely none in the last pass: notes come a
# few milliseconds apart within a series, and passes are 50 ms apart.
QUIET_AFTER_SECONDS = 1.0
# Describing (a REST call per instance, then audit rows, plan tracking and the index) waits while
# notes keep coming, since forward rules were decided from the notes already (jobs/arrival.py):
# until no note came for this long ...
DESCRIBE_AFTER_NOTES_PAUSE_SECONDS = 0.3
# ... or the oldest waiting instance has waited this long, so a burst that never ends (a busy
# site, a harvest) delays stable-study and plan rules by at most this much, never starves them.
DESCRIBE_AT_MOST_AFTER_SECONDS = 2.0
# How often studies whose unseen instances were all deleted leave the index of unseen studies
# (intake_store.settle_studies_seen_whole): a write, so not at every pass.
SETTLE_SEEN_WHOLE_SECONDS = 60.0


class Intake:
    def __init__(
        self,
        host: Host,
        db: StateDatabase,
        queue: JobQueue,
        recorder: AuditRecorder,
        rules: Callable[[], RuleSet],
        stable_age_seconds: float,
        wake_workers: Callable[[], None],
        registry: Registry,
    ) -> None:
        self.host = host
        self.db = db
        self.queue = queue
        self.recorder = recorder
        self.rules = rules
        self.stable_age_seconds = stable_age_seconds
        self.wake_workers = wake_workers
        self.registry = registry
        self.facts = FactsBuilder(host)
        self._callback_inbox: deque[tuple[str, dict[str, Any]]] = deque()
        self._stable_inbox: deque[str] = deque()
        self._deleted_inbox: deque[str] = deque()
        self._series_cache: dict[str, dict[str, Any]] = {}
        self._describe_failures: dict[str, int] = {}
        # Seconds, monotonic; the contract tests' harness turns it to make a burst end.
        self.clock: Callable[[], float] = time.monotonic
        self._last_arrival = float("-inf")
        self._last_note = float("-inf")
        self._describe_waiting_since: float | None = None
        self._catching_up = False
        self._seen_whole_settled_at = float("-inf")
        self.arrival = ArrivalDecider(queue, registry, recorder, rules)
        # Capabilities that store instances themselves on behalf of an outside source (the import
        # folder) name it here: instance ID -> source, or None when the instance is not theirs.
        self.source_overrides: list[Callable[[str], str | None]] = []
        self.lock = threading.Lock()
        # Where the cursor may move in Orthanc's changes log without skipping one.
        self.changes_cursor = ChangesCursor()
        # Capabilities that follow described instances (plan bundles, the SQL index); each call
        # returns True when it has more to do at once.
        self.after_describe: list[Callable[[], bool]] = []
        # Hooks that may wait until no instance is arriving (e.g. the SQL index).
        self.when_quiet: list[Callable[[], bool]] = []
        # Called with the jobs decided at arrival that had already ended when their instance was
        # described (e.g. the study's sent label, which needs the study).
        self.after_records_completed: list[Callable[[Sequence[int]], None]] = []

    # -- called from Orthanc's callbacks: memory only, no I/O ---------------------------------
    def note_stored(self, instance_id: str, noted: dict[str, Any]) -> None:
        self._callback_inbox.append((instance_id, noted))

    def note_stable_study(self, study_id: str) -> None:
        self._stable_inbox.append(study_id)

    def note_deleted(self, instance_id: str) -> None:
        self._deleted_inbox.append(instance_id)

    # -- the loop body -------------------------------------------------------------------------
    def initialise_cursor(self) -> None:
        """A new gateway starts at the end of the log: it does not re-send Orthanc's history.
        On an Orthanc whose index is a database plugin (PostgreSQL), changes can show out of
        order, and the cursor waits at a gap before passing it (changes_cursor.py)."""
        with contextlib.suppress(HostError):
            if self.host.get_json("/system").get("DatabaseBackendPlugin"):
                self.changes_cursor.gap_wait_seconds = GAP_WAIT_SECONDS
        if self.db.get_meta(CURSOR_KEY) is None:
            last = self.host.get_json("/changes?last").get("Last", 0)
            self.db.set_meta(CURSOR_KEY, str(last))
            self.recorder.event("cursor-initialised", detail=f"changes cursor set to {last}")

    def step(self) -> bool:
        """One pass; returns True when there may be more to do at once."""
        with self.lock:
            arriving = self._drain_callbacks()
            arriving |= self._tail_changes()
            now = self.clock()
            if not self._describe_waits(now):
                arriving |= self._describe_new()
            busy = arriving | self._run_after_describe(self.after_describe)
            busy |= self._run_instance_rules()
            busy |= self._run_stable_studies()
            if arriving:
                self._last_arrival = now
            quiet = now - self._last_arrival >= QUIET_AFTER_SECONDS
            if quiet and not self.queue.has_work_now():
                # Deferred while instances arrive or jobs run: reading whole files takes CPU from
                # Orthanc's own ingest and sends (measured: the SQL index in the middle of a
                # series cost 30 % of ingest speed); the work catches up once it is quiet.
                busy |= self._run_after_describe(self.when_quiet)
            return busy

    def _describe_waits(self, now: float) -> bool:
        """Whether describing waits this pass (see DESCRIBE_AFTER_NOTES_PAUSE_SECONDS). Once the
        longest wait is reached, everything waiting is described before waiting again."""
        if self._catching_up:
            return False
        if now - self._last_note >= DESCRIBE_AFTER_NOTES_PAUSE_SECONDS:
            self._describe_waiting_since = None
            return False
        if self._describe_waiting_since is None:
            self._describe_waiting_since = now
        if now - self._describe_waiting_since < DESCRIBE_AT_MOST_AFTER_SECONDS:
            return True
        self._catching_up = True
        self._describe_waiting_since = None
        return False

    def _drain_callbacks(self) -> bool:
        if not self._callback_inbox and not self._stable_inbox and not self._deleted_inbox:
            return False
        stamp = now_iso()
        queued = False
        with self.db.transaction() as connection:
            while self._callback_inbox:
                instance_id, noted = self._callback_inbox.popleft()
                if noted.get("origin") == DICOM_ORIGIN:
                    # A peer's burst; the gateway's own stores (copies, overlays) are no reason
                    # to wait, and they are never decided at arrival.
                    self._last_note = self.clock()
                inserted = store.note_received(connection, instance_id, stamp)
                if noted and (inserted or store.undecided(connection, instance_id)):
                    # The log can list an instance before its note comes; a duplicate C-STORE of
                    # an instance already decided or described decides nothing again.
                    queued |= self.arrival.decide(connection, instance_id, noted, stamp)
                if noted:
                    # What the callback read from Orthanc's metadata; the describe step then
                    # skips its own metadata call (unless the row was described already).
                    store.fill_noted(connection, instance_id, noted)
            while self._stable_inbox:
                store.signal_stable(connection, self._stable_inbox.popleft())
            while self._deleted_inbox:
                store.mark_instance_gone(connection, self._deleted_inbox.popleft())
        if queued:
            self.wake_workers()
        return True

    def _tail_changes(self) -> bool:
        cursor = int(self.db.get_meta(CURSOR_KEY) or 0)
        now = self.clock()
        # From the cursor, or (a gap open, read again lately) from past what was read: see
        # changes_cursor.py, for Orthanc on a PostgreSQL index, whose changes can show late.
        since = self.changes_cursor.since(cursor, now)
        answer = self.host.get_json(f"/changes?since={since}&limit=1000")
        changes = answer.get("Changes", [])
        advanced, fresh = self.changes_cursor.take(
            cursor, since, [int(change.get("Seq", 0)) for change in changes], now)
        if not fresh and advanced == cursor:
            return False
        stamp = now_iso()
        with self.db.transaction() as connection:
            for change in changes:
                if int(change.get("Seq", 0)) not in fresh:
                    continue     # taken in by an earlier read while the cursor waited at a gap
                kind, resource = change.get("ChangeType"), change.get("ID")
                if kind == "NewInstance":
                    store.note_received(connection, resource, stamp)
                elif kind == "StableStudy":
                    store.signal_stable(connection, resource)
                elif kind == "Deleted" and change.get("ResourceType") == "Instance":
                    store.mark_instance_gone(connection, resource)
            if advanced != cursor:
                self.db.set_meta(CURSOR_KEY, str(advanced), connection)
        # Waiting at a gap: the next pass reads after the poll interval, not at once.
        return self.changes_cursor.waiting_for(advanced) is None and not answer.get("Done", True)

    # -- describing an instance from Orthanc's index ---------------------------------------------
    def _describe_new(self) -> bool:
        rows = store.new_rows(self.db, BATCH)
        if not rows:
            self._catching_up = False
            return False
        described = [(row, self._describe_or_reason(row.instance_id, row)) for row in rows]
        now = time.time()
        completed: list[Completed] = []
        with self.db.transaction() as connection:
            for row, info in described:
                if info is None or isinstance(info, str):
                    if info is None:
                        store.mark_gone(connection, row.seq)
                    else:
                        store.mark_quarantined(connection, row.seq)
                        self.recorder.quarantine(connection, row.instance_id, info)
                    # Decided at arrival and never described: recorded with what is known.
                    completed += self._complete_arrival(connection, row)
                    continue
                info.setdefault("calling_aet", row.calling_aet)
                store.mark_described(connection, row.seq, info, now)
        self._after_completed(completed)
        more = len(rows) == BATCH
        if not more:
            self._catching_up = False
        return more

    def _run_after_describe(self, hooks: list[Callable[[], bool]]) -> bool:
        """One failing hook must not stop the rules: it is logged and tried again next pass."""
        busy = False
        for hook in hooks:
            try:
                busy |= hook()
            except Exception as error:
                self.host.log_error(f"intake hook {getattr(hook, '__qualname__', hook)}: {error!r}")
        return busy

    def _describe_or_reason(self, instance_id: str, noted: store.NewReceived | None = None
                            ) -> dict[str, Any] | str | None:
        """Never let one instance stop the intake: after a few failures it goes to quarantine."""
        try:
            info = self._describe(instance_id, noted)
        except Exception as error:
            failures = self._describe_failures.get(instance_id, 0) + 1
            self._describe_failures[instance_id] = failures
            if failures < MAX_DESCRIBE_FAILURES:
                raise
            self._describe_failures.pop(instance_id, None)
            return f"could not be described after {failures} attempts: {error}"
        self._describe_failures.pop(instance_id, None)
        return info

    def _describe(self, instance_id: str, noted: store.NewReceived | None = None
                  ) -> dict[str, Any] | str | None:
        """Columns for the received row; None when the instance is gone; a reason to quarantine."""
        try:
            metadata: dict[str, Any]
            if noted is not None and noted.sop_class_uid:
                metadata = {"RemoteAET": noted.calling_aet or "",
                            "CalledAET": noted.called_aet or "",
                            "RemoteIP": noted.remote_ip or "", "Origin": noted.origin or "",
                            "SopClassUid": noted.sop_class_uid}
            else:
                metadata = self.host.get_json(f"/instances/{instance_id}/metadata?expand")
            instance = self.host.get_json(f"/instances/{instance_id}")
            series = self._series(instance["ParentSeries"])
        except HostError as error:
            if error.missing:
                return None
            raise
        study_id = series["ParentStudy"]
        study_tags = self.facts.study_tags(study_id)
        tags = instance.get("MainDicomTags", {})
        modality = series.get("MainDicomTags", {}).get("Modality", "")
        if not study_tags.get("StudyInstanceUID"):
            return "the study has no StudyInstanceUID in Orthanc's index"
        plan_label = ""
        if modality == "RTPLAN":
            try:
                plan_label = self.host.get_text(
                    f"/instances/{instance_id}/content/{PLAN_LABEL_TAG}"
                ).rstrip("\x00 ")
            except HostError:
                plan_label = ""
        number = tags.get("InstanceNumber", "")
        origin = metadata.get("Origin", "")
        return {
            "calling_aet": metadata.get("RemoteAET", ""),
            "called_aet": metadata.get("CalledAET", ""),
            "remote_ip": metadata.get("RemoteIP", ""),
            "origin": origin,
            "source": self._source(instance_id, origin),
            "sop_class_uid": metadata.get("SopClassUid", ""),
            "modality": modality,
            "patient_id": study_tags.get("PatientID", ""),
            "study_id": study_id,
            "study_uid": study_tags.get("StudyInstanceUID", ""),
            "series_id": instance["ParentSeries"],
            "series_uid": series.get("MainDicomTags", {}).get("SeriesInstanceUID", ""),
            "sop_instance_uid": tags.get("SOPInstanceUID", ""),
            "instance_number": int(number) if str(number).strip().lstrip("-").isdigit() else 0,
            "plan_label": plan_label,
            "file_size": int(instance.get("FileSize", 0)),
        }

    def _source(self, instance_id: str, origin: str) -> str:
        source = SOURCE_BY_ORIGIN.get(origin, "DICOM")
        if source in ("GATEWAY", "REST"):  # the workers store through the REST API
            for override in self.source_overrides:
                named = override(instance_id)
                if named:
                    return named
        return source

    def _series(self, series_id: str) -> dict[str, Any]:
        cached = self._series_cache.get(series_id)
        if cached is None:
            cached = self.host.get_json(f"/series/{series_id}")
            if len(self._series_cache) > 5000:
                self._series_cache.clear()
            self._series_cache[series_id] = cached
        return cached

    # -- rules -----------------------------------------------------------------------------------
    def _run_instance_rules(self) -> bool:
        rows = store.rows_for_instance_rules(self.db, BATCH)
        if not rows:
            return False
        ruleset = self.rules()
        rules = ruleset.for_trigger(Trigger.INSTANCE)
        by_name = {rule.name: rule for rule in ruleset.rules}
        queued = False
        labels_by_study: dict[str, tuple[str, ...]] = {}
        completed: list[Completed] = []
        with self.db.transaction() as connection:
            decided = self.arrival.pending(connection, [row.instance_id for row in rows])
            for row in rows:
                # Every row of the batch is already described: a study's labels cannot change here.
                study_id = row.study_id or ""
                if study_id not in labels_by_study:
                    labels_by_study[study_id] = store.plan_labels(connection, study_id)
                facts = self.facts.build([row], labels_by_study[study_id])
                at_arrival = decided.get(row.instance_id, {})
                for rule in rules:
                    if rule.name not in at_arrival:
                        queued |= self._apply(connection, ruleset, rule, "instance",
                                              row.instance_id, [row], facts)
                if at_arrival:
                    completed += self._complete_arrival(connection, row, at_arrival, facts[0],
                                                        by_name)
                store.mark_instance_rules_done(connection, row.seq)
        self._after_completed(completed)
        if queued:
            self.wake_workers()
        return len(rows) == BATCH

    def _complete_arrival(self, connection: DbConnection,
                          row: store.Received | store.NewReceived,
                          decisions: Mapping[str, ArrivalDecision] | None = None,
                          facts: InstanceFacts | None = None,
                          rules_by_name: Mapping[str, Rule] | None = None) -> list[Completed]:
        """The records of decisions taken at arrival, completed now that the instance is
        described (or known never to be: gone, quarantined, when `decisions` is not given)."""
        if decisions is None:
            decisions = self.arrival.pending(connection, [row.instance_id]).get(
                row.instance_id, {})
        if not decisions:
            return []
        return [self.arrival.complete(connection, row, decisions, facts, rules_by_name or {})]

    def _after_completed(self, completed: list[Completed]) -> None:
        """Once the completing transaction committed: the log lines that waited for the study,
        and the hooks for jobs that ended before it was known."""
        for done in completed:
            for transfer_id, job_state in done.transfers_to_log:
                self.recorder.log_transfer(transfer_id, job_state, counted=True)
            if done.settled_jobs:
                for hook in self.after_records_completed:
                    try:
                        hook(done.settled_jobs)
                    except Exception as error:
                        self.host.log_error(f"after-records hook: {error!r}")

    def _run_stable_studies(self) -> bool:
        now = time.time()
        if now - self._seen_whole_settled_at >= SETTLE_SEEN_WHOLE_SECONDS:
            self._seen_whole_settled_at = now
            store.settle_studies_seen_whole(self.db)
        rows = store.studies_with_new_instances(self.db)
        queued = False
        for row in rows:
            # Orthanc's IsStable is the truth: a signal may be stale if instances came after it.
            quiet = now - row.last_received_at >= self.stable_age_seconds
            if not (row.stable_signalled or quiet) or not self._is_stable(row.study_id):
                continue
            queued |= self.process_stable_study(row.study_id)
        if queued:
            self.wake_workers()
        return False

    def _is_stable(self, study_id: str) -> bool:
        try:
            return bool(self.host.get_json(f"/studies/{study_id}").get("IsStable", True))
        except HostError:
            return False

    def process_stable_study(self, study_id: str) -> bool:
        """Run the stable-study rules on every instance of the study, queue what is new."""
        self.facts.forget_study(study_id)
        self.adopt_study_instances(study_id)
        ruleset = self.rules()
        rules = ruleset.for_trigger(Trigger.STABLE_STUDY)
        queued = False
        with self.db.transaction() as connection:
            rows = store.study_rows(connection, study_id)
            if not rows:
                return False
            labels = store.plan_labels(connection, study_id)
            facts = self.facts.build(rows, labels)
            for rule in rules:
                queued |= self._apply(connection, ruleset, rule, "study", study_id, rows, facts)
            store.stable_rules_done(connection, study_id, max(row.seq for row in rows))
        return queued

    def adopt_study_instances(self, study_id: str) -> None:
        """Instances stored before the gateway's cursor began still belong to the study."""
        try:
            instances = self.host.get_json(f"/studies/{study_id}/instances")
        except HostError:
            return
        stamp = now_iso()
        with self.db.transaction() as connection:
            store.note_many_received(connection, [item["ID"] for item in instances], stamp)
        while self._describe_new():
            pass

    def study_rows_without_adopting(self, study_id: str) -> list[store.Received]:
        """The study's instances as received rows, for a dry run: instances the intake has not
        seen (stored before its cursor) are described in memory and never enter the intake, so
        testing the rules on an old study cannot queue or send anything."""
        rows = store.study_rows(self.db, study_id)
        known = {row.instance_id for row in rows}
        try:
            instances = self.host.get_json(f"/studies/{study_id}/instances")
        except HostError:
            return rows
        for item in instances:
            if item["ID"] in known:
                continue
            info = self._describe(item["ID"])
            if isinstance(info, dict):
                rows.append(store.Received.described_in_memory(item["ID"], info))
        return rows

    def _apply(
        self,
        connection: DbConnection,
        ruleset: RuleSet,
        rule: Rule,
        level: str,
        resource_id: str,
        rows: Sequence[store.Received],
        facts: list[Any],
    ) -> bool:
        first = rows[0]
        try:
            evaluation = evaluate(rule, facts)
        except Exception as error:  # a rule that cannot be evaluated is audited, not fatal
            self.recorder.event(
                "rule-error", status="error", rule=rule.name, resource_id=resource_id,
                study_uid=first.study_uid or "", detail=f"{type(error).__name__}: {error}",
                connection=connection,
            )
            return False
        applied = Applied()
        if evaluation.matched:
            by_id = {row.instance_id: row for row in rows}
            ordered = order_for_sending(
                [
                    OutgoingInstance(
                        iid,
                        by_id[iid].modality or "",
                        by_id[iid].series_uid or "",
                        by_id[iid].instance_number or 0,
                    )
                    for iid in evaluation.instance_ids
                ]
            )

            def spec_for(job_action: str, target: str) -> JobSpec:
                return JobSpec(
                    rule=rule.name, action=job_action, trigger=rule.on.value, level=level,
                    resource_id=resource_id, target=target,
                    patient_id=first.patient_id or "", study_uid=first.study_uid or "",
                    calling_aet=first.calling_aet or "", remote_ip=first.remote_ip or "",
                    priority=rule.priority,
                )

            applied = queue_rule_actions(connection, self.queue, self.registry, rule,
                                         [item.instance_id for item in ordered], spec_for)
        targets, new_instances = applied.targets, applied.new_instances
        self.recorder.evaluation(
            connection,
            trigger=rule.on.value, level=level, resource_id=resource_id,
            patient_id=first.patient_id or "", study_uid=first.study_uid or "",
            rule=rule.name, matched=evaluation.matched,
            failed_condition=evaluation.failed_condition, reason=evaluation.reason,
            instances=len(evaluation.instance_ids), new_instances=new_instances,
            rules_sha256=ruleset.sha256,
            source={"remote_ip": first.remote_ip or "", "calling_aet": first.calling_aet or ""},
            targets=targets,
        )
        return new_instances > 0


def noted_facts(facts: NotedFacts | None) -> dict[str, Any]:
    """The received row's columns a stored-instance note fills ({} when it carried none)."""
    return asdict(facts) if facts is not None else {}
