"""Runs harvests: walks patient -> study -> series with C-FIND, C-MOVEs each series to the gateway,
validates it, writes the ZIPs and the inventory. Every step is committed before the next one.

The harvest has its own loop rather than jobs of the durable queue: its unit of work is a row of
harvest_items (a query or a series move), not a list of stored instances, those rows already are
the durable state (a job per step would only copy them), and a walk that lasts weeks must not hold
the forwarding senders. The loop's threads start and stop with the gateway.

Where the time of a harvest goes (bench/harvest), and what the loop does about it:
- the ZIP: Orthanc deflating a whole patient after its last move was about a fifth of the harvest.
  Each series' ZIP is asked of Orthanc as soon as the series is stored whole, while the other
  moves run; the patient's ZIP copies their compressed entries (zips.py);
- reception first (reception.py): the harvest's threads are background work, held while DICOM
  instances arrive. The instances a harvest's own C-MOVEs bring are not a modality to make way
  for: while a move of this loop runs, and QUIET_SLACK_SECONDS after, its REST calls go at once;
  otherwise they are held as any background work (a modality sending keeps the next move waiting);
- polling: a move's job is asked about soon after its start, then less often (remote.py);
- one request, not two, to count a series in the gateway (`/tools/find` expanded).
"""

from __future__ import annotations

import contextlib
import threading
import time
import traceback
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orthanc_plugin.audit.recorder import AuditRecorder
from orthanc_plugin.harvest.model import (
    HarvestDefinition,
    ItemLevel,
    ItemState,
    RetryPolicy,
    SelectionKind,
    Transition,
    after_move,
    after_query,
    eta_seconds,
    parse_count,
    zip_name,
)
from orthanc_plugin.harvest.outputs import (
    harvest_folder,
    inside,
    inventory_csv,
    write_atomically,
)
from orthanc_plugin.harvest.remote import Interrupted, OrthancQueryRetrieve
from orthanc_plugin.harvest.store import (
    Child,
    Harvest,
    HarvestItem,
    HarvestStore,
    LeaseLost,
    NewRuleVersion,
)
from orthanc_plugin.harvest.zips import part_path, valid_part, write_merged, write_part
from orthanc_plugin.ports import Host, HostError
from orthanc_plugin.reception import ReceptionGate

IDLE_WAIT_SECONDS = 1.0
# After the harvest's own last move ended, instances still noted arriving are taken as its own this
# much longer than the gate's quiet period (the lead notes them a little after they are stored).
QUIET_SLACK_SECONDS = 1.0


@dataclass(frozen=True)
class HarvestSettings:
    folder: Path
    threads: int = 4
    zip_delimiter: str = "__"
    burst: int = 1
    poll_seconds: float = 0.2
    move_timeout_seconds: float = 3600.0


class HarvestRunner:
    def __init__(self, host: Host, store: HarvestStore, recorder: AuditRecorder,
                 settings: HarvestSettings, log_error: Callable[[str], None],
                 gate: ReceptionGate | None = None) -> None:
        self.host = host
        # The worker's reception gate (reception.py): C-FIND/C-MOVE calls are background work,
        # unless the arrivals may be this loop's own. None: a disabled gate (a test's runner).
        self.gate = gate if gate is not None else ReceptionGate()
        self.store = store
        self.recorder = recorder
        self.settings = settings
        self.log_error = log_error
        self.stopping = threading.Event()
        self.wakeup = threading.Event()
        self.remote = OrthancQueryRetrieve(host, self.stopping, settings.poll_seconds,
                                           settings.move_timeout_seconds)
        self._zip_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._own_lock = threading.Lock()
        self._own_moves = 0                    # this loop's C-MOVEs running now
        self._own_quiet_at = float("-inf")     # monotonic: until then arrivals may be its own
        # Patients' ZIPs whose builder died (store.orphaned_zips): built again by the work loop.
        # A lock of their own: _zip_lock is held through a whole build, the lease loop must not
        # wait for one.
        self._zips_due: set[tuple[int, int]] = set()
        self._due_lock = threading.Lock()

    # -- life cycle --------------------------------------------------------------------------------
    def start(self) -> None:
        self.stopping.clear()
        resumed = self.store.recover()
        if resumed:
            self.recorder.event("harvest-resumed", status="ok",
                                detail=f"{resumed} step(s) caught mid-way run again")
        self._threads = [threading.Thread(target=self._loop, name=f"rtgw-harvest-{n}", daemon=True)
                         for n in range(self.settings.threads)]
        self._threads.append(threading.Thread(target=self._lease_loop, name="rtgw-harvest-leases",
                                              daemon=True))
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self.stopping.set()
        self.wakeup.set()
        for thread in self._threads:
            thread.join(timeout)
        self._threads = []
        try:
            released = self.store.release()
        except Exception as error:   # the database is away: the rows wait for their lease's end
            self.log_error(f"harvest: claims not released at the stop ({error}); another node "
                           "takes them over when their lease runs out, this one at its next start")
            return
        if released:
            self.recorder.event("harvest-released", status="pending",
                                detail=f"{released} step(s) in flight given back at the stop")

    # -- commands ----------------------------------------------------------------------------------
    def create(self, definition: HarvestDefinition) -> int:
        harvest_id = self.store.create(definition)
        self._created(harvest_id, definition)
        return harvest_id

    def create_from_rules(self, definition: HarvestDefinition,
                          rules_sha256: str) -> NewRuleVersion | None:
        """A new version of a rules-file harvest; None if another node's sync added it first."""
        created = self.store.create_rule_version(definition, rules_sha256)
        if created is not None:
            self._created(created.harvest_id, definition)
        return created

    def _created(self, harvest_id: int, definition: HarvestDefinition) -> None:
        self.recorder.event("harvest-created", status="running", target=definition.source,
                            detail=f"harvest {harvest_id}: {definition.to_json()}")
        self.wakeup.set()

    def pause(self, harvest_id: int) -> bool:
        return self._command(harvest_id, "paused", ("running",))

    def resume(self, harvest_id: int) -> bool:
        resumed = self._command(harvest_id, "running", ("paused",))
        if resumed:
            self._finish_if_settled(harvest_id)   # all settled while paused: nothing would claim it
        return resumed

    def cancel(self, harvest_id: int) -> bool:
        return self._command(harvest_id, "cancelled", ("running", "paused"))

    def refresh(self, harvest_id: int) -> bool:
        done = self.store.refresh(harvest_id)
        if done:
            self.recorder.event("harvest-refresh", status="running", detail=f"harvest {harvest_id}")
            self.wakeup.set()
        return done

    def _command(self, harvest_id: int, state: str, only_from: tuple[str, ...]) -> bool:
        changed = self.store.set_harvest_state(harvest_id, state, only_from)
        if changed:
            self.recorder.event(f"harvest-{state}", status=state, detail=f"harvest {harvest_id}")
            self.wakeup.set()
        return changed

    # -- status ------------------------------------------------------------------------------------
    def status(self, harvest: Harvest) -> dict[str, Any]:
        counts = self.store.counts(harvest.id)
        series = counts.get(ItemLevel.SERIES.value, {})
        settled = sum(series.get(s.value, 0) for s in (ItemState.COMPLETE, ItemState.INCOMPLETE,
                                                       ItemState.FAILED))
        remaining = sum(series.get(s.value, 0) for s in (ItemState.PENDING, ItemState.MOVING))
        sums = self.store.series_sums(harvest.id)
        elapsed = time.time() - harvest.started_epoch
        return {
            "id": harvest.id, "name": harvest.name, "source": harvest.source,
            "state": harvest.state, "pass": harvest.pass_number, "created_at": harvest.created_at,
            "finished_at": harvest.finished_at,
            "definition": self.store.definition(harvest).to_json(),
            "counts": counts,
            "instances": {"expected": sums.expected, "stored": sums.stored},
            "moves": sums.moves,
            "rate": {"requests_last_minute": self.store.requests_last_minute(harvest.source),
                     "max_requests_per_minute": harvest.max_requests_per_minute},
            "eta_seconds": (eta_seconds(elapsed, settled, remaining)
                            if harvest.state == "running" else None),
            "zips": self.store.patient_zips(harvest.id),
            "folder": str(harvest_folder(self.settings.folder, harvest.id)),
        }

    def inventory(self, harvest_id: int) -> str:
        return inventory_csv(self.store.items(harvest_id))

    # -- the loop ----------------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self.stopping.is_set():
            try:
                self._build_orphaned_zips()
                item = self.store.claim()
                if item is not None:
                    self.wakeup.set()   # another thread may take the next row at once
                    self._run(item)
                    continue
                due = self.store.next_due_in()
            except Exception:
                self.log_error("harvest: " + traceback.format_exc())
                due = IDLE_WAIT_SECONDS
            self.wakeup.wait(IDLE_WAIT_SECONDS if due is None else min(max(due, 0.01), IDLE_WAIT_SECONDS))
            self.wakeup.clear()

    def _lease_loop(self) -> None:
        """Renew this node's leases, then take over any node's that ran out (a node that died):
        a shared harvest goes on without a supervisor noticing."""
        failing = False
        while not self.stopping.wait(self.store.renew_every):
            try:
                lost = self.store.renew_leases()
                taken = self.store.take_over_expired()
            except Exception as error:   # the database does not answer: try again next time
                if not failing:
                    self.log_error(f"harvest leases: cannot renew ({error}); claims hold for "
                                   f"{self.store.lease_seconds:.0f} s without renewal")
                    failing = True
                continue
            failing = False
            if lost:
                self.log_error(f"harvest leases: items {lost[:10]} were taken over by another node")
            if taken:
                self.recorder.event("harvest-taken-over", status="pending",
                                    detail=f"items {taken[:10]} whose lease ran out run again")
                self.wakeup.set()
            try:
                orphans = self.store.orphaned_zips()
            except Exception:   # the database does not answer: the next round looks again
                continue
            if orphans:
                with self._due_lock:
                    self._zips_due.update(orphans)
                self.wakeup.set()

    def _build_orphaned_zips(self) -> None:
        """The ZIPs whose builder died, built here (the claim ran out: this node's claim wins
        or another node's does, and that one builds it)."""
        with self._due_lock:
            due, self._zips_due = sorted(self._zips_due), set()
        for harvest_id, patient_item_id in due:
            try:
                with self._reception_marking():
                    self._write_zip_if_settled(harvest_id, patient_item_id)
            except Interrupted:
                with self._due_lock:   # stopping: the next start's lease loop finds it again
                    self._zips_due.add((harvest_id, patient_item_id))
                return

    def _run(self, item: HarvestItem) -> None:
        harvest = self.store.harvest(item.harvest_id)
        assert harvest is not None
        definition = self.store.definition(harvest)
        policy = RetryPolicy(definition.max_attempts, definition.retry_delay_seconds,
                             definition.retry_max_delay_seconds)
        try:
            if item.level == ItemLevel.SERIES.value:
                self._move_series(item, definition, policy)
            else:
                with self._reception_marking():
                    self._query(item, definition, policy)
        except Interrupted:
            return   # left in flight; released at the stop, or taken back at the next start
        except LeaseLost as lost:
            self.log_error(f"harvest {item.harvest_id}: {lost}")
            return   # the row is another node's now: its step is that node's to finish
        except Exception as error:   # never lose the row: it goes back with backoff
            self.log_error(f"harvest {item.harvest_id} item {item.id}: " + traceback.format_exc())
            try:
                self.store.settle(item.id, after_query(False, item.attempts, policy,
                                                           f"internal error: {error}"))
            except LeaseLost:
                return
        try:
            with self._reception_marking():
                self._after_step(item)
        except Interrupted:
            return   # a ZIP not written now is written at the next step of the patient or a refresh

    def _after_step(self, item: HarvestItem) -> None:
        if item.patient_item_id is not None:
            self._write_zip_if_settled(item.harvest_id, item.patient_item_id)
        self._finish_if_settled(item.harvest_id)

    def _finish_if_settled(self, harvest_id: int) -> None:
        if self.store.finish_if_settled(harvest_id):
            folder = harvest_folder(self.settings.folder, harvest_id)
            write_atomically(inside(folder, "inventory.csv"), self.inventory(harvest_id).encode())
            counts = self.store.counts(harvest_id).get(ItemLevel.SERIES.value, {})
            self.recorder.event("harvest-done", status="done",
                                detail=f"harvest {harvest_id}: series {counts}")

    # -- reception first -------------------------------------------------------------------------
    def _reception_marking(self) -> contextlib.AbstractContextManager[None]:
        """Background (held while instances arrive) unless the arrivals may be this loop's own."""
        with self._own_lock:
            own = self._own_moves > 0 or time.monotonic() < self._own_quiet_at
        return self.gate.background(not own)

    @contextlib.contextmanager
    def _own_move(self) -> Iterator[None]:
        """A C-MOVE of this loop runs: the instances arriving meanwhile are the ones it asked for."""
        with self._own_lock:
            self._own_moves += 1
        try:
            with self.gate.background(False):
                yield
        finally:
            with self._own_lock:
                self._own_moves -= 1
                reception = self.gate.settings
                quiet = reception.quiet_seconds if reception.enabled else 0.0
                self._own_quiet_at = max(self._own_quiet_at,
                                         time.monotonic() + quiet + QUIET_SLACK_SECONDS)

    # -- rate --------------------------------------------------------------------------------------
    def _reserve(self, item: HarvestItem, definition: HarvestDefinition, kind: str) -> int:
        """A slot for one request to the source, booked in the database that every node shares
        (the cap holds for all of them together), then waited for; the id of its row."""
        request_id, at = self.store.reserve_request(
            item, definition.source, kind, definition.max_requests_per_minute, self.settings.burst)
        wait = at - time.time()
        if wait > 0 and self.stopping.wait(wait):
            self.store.cancel_request(request_id)   # never sent: no row says it was
            raise Interrupted("stopping while waiting for the rate limit")
        return request_id

    def _request(self, item: HarvestItem, definition: HarvestDefinition, kind: str,
                 call: Callable[[], Any], outcome: str = "ok") -> tuple[Any, int]:
        """One request to the source in its booked slot, recorded whatever the outcome.

        Returns the answer and the id of its audit row.
        """
        request_id = self._reserve(item, definition, kind)
        try:
            result = call()
        except Exception as error:
            self.store.request_sent(request_id, item, "error", str(error)[:500])
            raise
        self.store.request_sent(request_id, item, outcome, None)
        return result, request_id

    # -- queries -----------------------------------------------------------------------------------
    def _query(self, item: HarvestItem, definition: HarvestDefinition, policy: RetryPolicy) -> None:
        level, query = self._query_for(item, definition)
        try:
            (query_id, answers), _ = self._request(
                item, definition, "C-FIND", lambda: self.remote.find(definition.source, level, query))
        except HostError as error:
            self.store.settle(item.id, after_query(False, item.attempts, policy, str(error)))
            return
        children = self._children(item, definition, query_id, answers)
        if item.level != ItemLevel.STUDY.value:
            self.remote.forget(query_id)   # only series answers are retrieved from later
        self.store.add_children(item, children, after_query(True, item.attempts, policy))

    @staticmethod
    def _query_for(item: HarvestItem, definition: HarvestDefinition) -> tuple[str, dict[str, str]]:
        filters = dict(definition.study_filters)
        study_keys = {"StudyInstanceUID": "", "StudyDescription": "",
                      "StudyDate": filters.get("StudyDate", ""),
                      "ModalitiesInStudy": filters.get("ModalitiesInStudy", "")}
        level = ItemLevel(item.level)
        if level is ItemLevel.SELECTION:
            if definition.selection.kind is SelectionKind.REGEX:
                return "Patient", {"PatientID": "*", "PatientName": ""}
            return "Study", {"PatientID": "", "PatientName": "", **study_keys,
                             **dict(definition.selection.query)}
        if level is ItemLevel.PATIENT:
            return "Study", {"PatientID": item.patient_id, **study_keys}
        return "Series", {"PatientID": item.patient_id, "StudyInstanceUID": item.study_uid,
                          "SeriesInstanceUID": "", "Modality": "", "SeriesDescription": "",
                          "NumberOfSeriesRelatedInstances": ""}

    @staticmethod
    def _children(item: HarvestItem, definition: HarvestDefinition, query_id: str,
                  answers: list[dict[str, Any]]) -> list[Child]:
        walk_studies = "study" in definition.levels
        walk_series = definition.retrieves
        below = {True: ItemState.PENDING, False: ItemState.DONE}
        children: list[Child] = []
        level = ItemLevel(item.level)
        for index, answer in enumerate(answers):
            patient_id = str(answer.get("PatientID", ""))
            if level is ItemLevel.SELECTION:
                if not definition.selection.matches(patient_id) or not patient_id:
                    continue
                if definition.selection.kind is SelectionKind.REGEX or not walk_studies:
                    children.append(Child(ItemLevel.PATIENT, patient_id, state=below[walk_studies]))
                    continue
            if level in (ItemLevel.SELECTION, ItemLevel.PATIENT):
                # A PatientID with wildcard characters could match others: keep exact matches.
                if level is ItemLevel.PATIENT and patient_id != item.patient_id:
                    continue
                study_uid = str(answer.get("StudyInstanceUID", ""))
                if study_uid:
                    children.append(Child(ItemLevel.STUDY, patient_id, study_uid,
                                          description=str(answer.get("StudyDescription", "")),
                                          state=below[walk_series]))
                continue
            series_uid = str(answer.get("SeriesInstanceUID", ""))
            if not series_uid:
                continue
            modality = str(answer.get("Modality", ""))
            children.append(Child(
                ItemLevel.SERIES, item.patient_id, item.study_uid, series_uid, modality,
                str(answer.get("SeriesDescription", "")),
                parse_count(answer.get("NumberOfSeriesRelatedInstances")),
                ItemState.PENDING if definition.keeps_modality(modality) else ItemState.SKIPPED,
                query_id, index,
            ))
        if level is ItemLevel.SELECTION and not walk_studies:
            unique = {child.patient_id: child for child in children}
            children = list(unique.values())
        return children

    # -- series ------------------------------------------------------------------------------------
    def _move_series(self, item: HarvestItem, definition: HarvestDefinition, policy: RetryPolicy) -> None:
        expected = item.expected_instances
        with self._reception_marking():
            orthanc_id, stored = self.remote.stored_series(item.series_uid)
            if after_move(True, expected, stored, item.attempts, policy).state is ItemState.COMPLETE:
                # Already here whole (a resumed step, or an earlier harvest): no C-MOVE.
                self.store.settle(item.id, Transition(ItemState.COMPLETE),
                                  stored_instances=stored, orthanc_series_id=orthanc_id)
                return
            try:
                query_id, index = self._retrieve_handle(item, definition)
            except HostError as error:
                self._move_failed(item, policy, expected, stored, error)
                return
        with self._own_move():
            try:
                # The retrieve only starts an Orthanc job: the request's outcome is the job's.
                job_id, request_id = self._request(
                    item, definition, "C-MOVE", lambda: self.remote.retrieve(query_id, index), "sent")
            except HostError as error:
                self._move_failed(item, policy, expected, stored, error)
                return
            self.store.update(item.id, orthanc_job=job_id)
            outcome = self.remote.wait_job(job_id)
            self.store.finish_request(request_id, "ok" if outcome.ok else "error",
                                      None if outcome.error is None else outcome.error[:500])
            expected = self.store.item(item.id).expected_instances
            orthanc_id, stored = self.remote.stored_series(item.series_uid)
            transition = after_move(outcome.ok, expected, stored, item.attempts, policy,
                                    outcome.error)
            self.store.settle(item.id, transition, stored_instances=stored,
                              orthanc_series_id=orthanc_id)
            if transition.state is ItemState.COMPLETE and orthanc_id is not None:
                # The slot is free again (settled): the next series moves while this one is zipped.
                self._keep_series_zip(item, orthanc_id, stored)
        if transition.state is ItemState.INCOMPLETE:
            self.recorder.event("harvest-series-incomplete", status="incomplete",
                                patient_id=item.patient_id, study_uid=item.study_uid,
                                resource_id=item.series_uid, detail=transition.error or "")

    def _move_failed(self, item: HarvestItem, policy: RetryPolicy, expected: int | None, stored: int,
                     error: HostError) -> None:
        self.store.settle(item.id, after_move(False, expected, stored, item.attempts, policy,
                                                 str(error)), stored_instances=stored)

    def _retrieve_handle(self, item: HarvestItem, definition: HarvestDefinition) -> tuple[str, int]:
        """The Orthanc query answer to retrieve the series from; a fresh C-FIND if it is gone.

        Orthanc keeps a bounded number of queries and none across a restart.
        """
        query_id, index = item.query_id, item.answer_index
        if query_id and index is not None and (
                self.remote.answer_series_uid(query_id, index) == item.series_uid):
            return query_id, index
        query = {"PatientID": item.patient_id, "StudyInstanceUID": item.study_uid,
                 "SeriesInstanceUID": item.series_uid, "NumberOfSeriesRelatedInstances": ""}
        (query_id, answers), _ = self._request(
            item, definition, "C-FIND", lambda: self.remote.find(definition.source, "Series", query))
        if not answers:
            raise HostError(f"series {item.series_uid} no longer found at {definition.source}")
        expected = parse_count(answers[0].get("NumberOfSeriesRelatedInstances"))
        self.store.update(item.id, query_id=query_id, answer_index=0,
                          expected_instances=expected if expected is not None else item.expected_instances)
        return query_id, 0

    # -- ZIP ---------------------------------------------------------------------------------------
    def _write_zip_if_settled(self, harvest_id: int, patient_item_id: int) -> None:
        """One ZIP per patient once nothing of the patient is left to do, again when it gains series.

        Built by one node: the one whose claim on the patient row won (two nodes settling the
        patient's last two series at once both get here)."""
        with self._zip_lock:
            if self.store.patient_active(patient_item_id):
                return
            patient = self.store.item(patient_item_id)
            series = self.store.complete_series(patient_item_id)
            if not series or len(series) == patient.zip_series_count:
                return
            token = self.store.claim_zip(patient_item_id, len(series))
            if token is None:
                return   # another node builds it, or built it since this one looked
            patient = self.store.item(patient_item_id)   # its ZIP now, another node's maybe
            folder = harvest_folder(self.settings.folder, harvest_id)
            name = zip_name(patient.patient_id, len(series), self.settings.zip_delimiter)
            path = inside(folder, name)
            try:
                # Each series' ZIP was kept when it arrived whole; one lost (a restart in between,
                # a failed answer) is asked for now.
                # A complete series was counted in Orthanc: it has its Orthanc ID.
                parts = [self._series_zip(harvest_id, row.series_uid, str(row.orthanc_series_id),
                                          row.stored_instances or 0) for row in series]
                write_merged(path, parts)
            except (HostError, OSError, zipfile.BadZipFile) as error:
                self.store.release_zip(patient_item_id, token)
                self.recorder.event("harvest-zip", status="failed", patient_id=patient.patient_id,
                                    detail=f"{name}: {error}")
                return
            except BaseException:
                self.store.release_zip(patient_item_id, token)   # the next step of the patient
                raise
            previous = patient.zip_name
            if not self.store.finish_zip(patient_item_id, token, name, len(series)):
                # The claim ran out while building and another node took it: that node's ZIP
                # (the same series) stands; its files are its own to tidy.
                return
            if previous and previous != name:
                # The name carries the count: the older, smaller ZIP would only mislead.
                inside(folder, previous).unlink(missing_ok=True)
            for part in parts:   # in the patient's ZIP now; a rebuild asks Orthanc again
                part.unlink(missing_ok=True)
            # A builder that died under an earlier claim on this name left its temporary file.
            for leftover in folder.iterdir():
                if leftover.name.startswith(f".{name}.") and leftover.name.endswith(".partial"):
                    leftover.unlink(missing_ok=True)
            self.recorder.event("harvest-zip", status="ok", patient_id=patient.patient_id,
                                target=str(path),
                                detail=f"{len(series)} series, {path.stat().st_size} bytes")

    def _keep_series_zip(self, item: HarvestItem, orthanc_series_id: str, stored: int) -> None:
        """The ZIP of a series stored whole, kept for its patient's ZIP; a failure only means it is
        asked again when the patient's ZIP is written."""
        try:
            with self._zip_lock:
                if item.patient_item_id is None or not self.store.patient_active(
                        item.patient_item_id):
                    return   # nothing else of the patient to wait for: its ZIP step takes this one
                self._series_zip(item.harvest_id, item.series_uid, orthanc_series_id, stored)
        except (HostError, OSError, zipfile.BadZipFile) as error:
            self.log_error(f"harvest {item.harvest_id}: ZIP of series {item.series_uid} "
                           f"left for later: {error}")

    def _series_zip(self, harvest_id: int, series_uid: str, orthanc_series_id: str,
                    stored: int) -> Path:
        path = part_path(harvest_folder(self.settings.folder, harvest_id), series_uid, stored)
        if not valid_part(path):
            write_part(path, self.remote.series_archive(orthanc_series_id))
        return path
