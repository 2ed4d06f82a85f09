"""A fake of Orthanc's REST API, in memory, for contract tests of the gateway's workers.

`FakeOrthanc` implements the host port (`orthanc_plugin.ports.Host`) that the workers use to reach
Orthanc, answering the URIs the gateway calls with the shapes Orthanc 1.10 gives: instances,
series, studies and their metadata, `/changes`, `/modalities` with store jobs and C-FIND, `/jobs`,
`POST /instances`, deletions, `/tools/find`, `/system`, and labels when `has_labels` (as on 1.12).
A missing resource raises `HostError` with `missing` true, as `worker/http_host.py` raises it for
an HTTP 404.

Resources carry Orthanc's own identifiers (SHA-1 of the DICOM keys), so an ID the gateway computes
ahead of a store (`jobs/own_output.py`) is the ID the fake answers with.

What a test configures:
- instances received "over DICOM" (`receive`, with the calling AE, called AE and IP Orthanc keeps
  as metadata) or posted to the REST API (`POST /instances`, origin `RestApi`);
- per modality (`FakeModality`): store jobs that succeed, drop the association after a number of
  instances, refuse chosen instances with a DIMSE status, or answer `Running` for a few polls;
  each modality records what it received, in order;
- faults (`inject`): an exception raised at a matching call, e.g. `WorkerKilled` to stand for a
  worker killed at that point, or a `HostError` for Orthanc failing that call;
- Orthanc restarting without `SaveJobs` (`forget_jobs`), a study becoming stable (`mark_stable`).

What it does not do: no DICOM networking (nothing crosses a socket), no transcoding, no
`Modify`/`Anonymize`/archive/media routes, no `Expand` in `/tools/find` (whose queries match
case-sensitively, by fnmatch), no authentication, no `StableAge` timer (a study is stable only
when `mark_stable` says so), no `Deleted` entries in `/changes` (Orthanc 1.10 signals deletions
only to plugins), no job engine: a store job delivers, or fails, the moment it is created;
`running_polls` only delays when its polls show the outcome, and a cancel ends it as delivered so
far. A call it does not implement raises `UnsupportedCall` and is listed in `unsupported`, so a
test notices a gateway call the fake ignores.
"""

from __future__ import annotations

import fnmatch
import itertools
import math
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from io import BytesIO
from urllib.parse import parse_qs, unquote, urlsplit

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.tag import Tag

from orthanc_plugin.ports import HostError
from tests.support.fake_orthanc_model import (
    CANCELED_ERROR,
    INSTANCE_TAGS,
    NETWORK_ERROR,
    PATIENT_TAGS,
    SERIES_TAGS,
    STUDY_TAGS,
    FakeInstance,
    FakeModality,
    FakeSeries,
    FakeStoreJob,
    FakeStudy,
    InjectedFault,
    Json,
    Request,
    StoreCall,
    UnsupportedCall,
    WorkerKilled,
    dicom_bytes,
    main_tags,
    orthanc_id,
    tag_text,
)

__all__ = ["FakeModality", "FakeOrthanc", "StoreCall", "UnsupportedCall", "WorkerKilled",
           "dicom_bytes", "orthanc_id"]

RouteHandler = Callable[[Request], Json]


class FakeOrthanc:
    """In-memory Orthanc behind the `Host` port. Thread-safe: one lock around every call."""

    def __init__(self, modalities: dict[str, str] | None = None, *, aet: str = "RTGW",
                 has_labels: bool = False) -> None:
        self.aet = aet
        self.has_labels = has_labels
        self.instances: dict[str, FakeInstance] = {}
        self.series: dict[str, FakeSeries] = {}
        self.studies: dict[str, FakeStudy] = {}
        # Orthanc's patient ID -> the patient's main tags
        self.patient_tags: dict[str, dict[str, str]] = {}
        self.modalities: dict[str, FakeModality] = {
            name: FakeModality(name, modality_aet)
            for name, modality_aet in (modalities or {}).items()
        }
        self.changes: list[dict[str, Json]] = []
        # Change numbers not visible yet: another Orthanc node's store transaction, numbered
        # before later changes, still running (several nodes on one PostgreSQL index).
        self.invisible_changes: set[int] = set()
        # /system's DatabaseBackendPlugin: None for Orthanc's own SQLite index, the plugin's
        # file for a PostgreSQL index (whose changes can show out of order).
        self.database_plugin: str | None = None
        self.store_jobs: dict[str, FakeStoreJob] = {}
        self.store_calls: list[StoreCall] = []
        # Every call as (method, uri), in order; `unsupported` lists those the fake lacks.
        self.calls: list[tuple[str, str]] = []
        self.unsupported: list[str] = []
        # (level, message) of everything the gateway logged through the port.
        self.logged: list[tuple[str, str]] = []
        self.metrics: dict[str, float] = {}
        self.faults: list[InjectedFault] = []
        self._query_answers: dict[str, list[dict[str, str]]] = {}
        self._sequence = itertools.count(1)
        self._lock = threading.RLock()

    # -- what a test sets up -------------------------------------------------------------------
    def receive(self, dataset: Dataset, *, calling_aet: str = "MODALITY", called_aet: str = "",
                remote_ip: str = "10.0.0.10", file: bytes | None = None) -> str:
        """An instance stored by a modality's C-STORE; returns its Orthanc ID. `file` replaces
        the stored file (e.g. bytes no DICOM reader accepts) while the index keeps the dataset's
        tags, as Orthanc's index does when a file is damaged on disk."""
        with self._lock:
            instance_id, _ = self._store(dataset, file if file is not None else dicom_bytes(dataset), {
                "RemoteAET": calling_aet, "CalledAET": called_aet or self.aet,
                "RemoteIP": remote_ip, "Origin": "DicomProtocol"})
            return instance_id

    def modality(self, name: str) -> FakeModality:
        return self.modalities[name]

    def mark_stable(self, study_id: str) -> None:
        """Orthanc found the study quiet for StableAge: IsStable true and a StableStudy change."""
        with self._lock:
            self.studies[study_id].stable = True
            self._log_change("StableStudy", "Study", study_id)

    def forget_jobs(self) -> None:
        """Orthanc restarted with `SaveJobs` false: it no longer knows any job."""
        with self._lock:
            self.store_jobs.clear()

    def inject(self, method: str, uri_prefix: str, error: BaseException, *, skip: int = 0,
               times: int = 1) -> None:
        """The matching call (method, URI starting with uri_prefix) raises `error` instead of
        being answered, after `skip` matching calls went through, `times` times."""
        with self._lock:
            self.faults.append(InjectedFault(method, uri_prefix, error, skip, times))

    def delete_instance(self, instance_id: str) -> None:
        """Someone deleted the instance (Orthanc Explorer, retention): as `DELETE /instances`."""
        self.delete(f"/instances/{instance_id}")

    def study_of(self, instance_id: str) -> str:
        return self.series[self.instances[instance_id].series_id].study_id

    def calls_to(self, method: str, uri_prefix: str) -> list[str]:
        return [uri for called, uri in self.calls if called == method and uri.startswith(uri_prefix)]

    # -- the Host port -------------------------------------------------------------------------
    def get_json(self, uri: str) -> Json:
        return self._call("GET", uri, None)

    def get_text(self, uri: str) -> str:
        answer = self._call("GET", uri, None)
        return answer if isinstance(answer, str) else str(answer)

    def get_bytes(self, uri: str) -> bytes:
        answer = self._call("GET", uri, None)
        if not isinstance(answer, bytes):
            raise self._unsupported("GET", f"{uri} (no binary answer)")
        return answer

    def post_json(self, uri: str, body: Json) -> Json:
        return self._call("POST", uri, body)

    def post_bytes(self, uri: str, data: bytes) -> Json:
        return self._call("POST", uri, data)

    def post_for_bytes(self, uri: str, body: Json) -> bytes:
        answer = self._call("POST", uri, body)
        if not isinstance(answer, bytes):
            raise self._unsupported("POST", f"{uri} (no binary answer)")
        return answer

    def delete(self, uri: str) -> None:
        self._call("DELETE", uri, None)

    def put(self, uri: str, data: bytes = b"") -> None:
        self._call("PUT", uri, data)

    def set_metric(self, name: str, value: float) -> None:
        self.metrics[name] = value

    def log_info(self, message: str) -> None:
        self.logged.append(("info", message))

    def log_warning(self, message: str) -> None:
        self.logged.append(("warning", message))

    def log_error(self, message: str) -> None:
        self.logged.append(("error", message))

    # -- dispatch ------------------------------------------------------------------------------
    def _call(self, method: str, uri: str, body: Json) -> Json:
        with self._lock:
            self.calls.append((method, uri))
            self._fire_fault(method, uri)
            parts = urlsplit(uri)
            request = Request(
                method, uri, [unquote(part) for part in parts.path.strip("/").split("/") if part],
                parse_qs(parts.query, keep_blank_values=True), body)
            handler = self._route(method, request.path)
            if handler is None:
                raise self._unsupported(method, uri)
            return handler(request)

    def _unsupported(self, method: str, uri: str) -> UnsupportedCall:
        self.unsupported.append(f"{method} {uri}")
        return UnsupportedCall(f"{method} {uri} is not implemented by the fake Orthanc")

    def _fire_fault(self, method: str, uri: str) -> None:
        for fault in self.faults:
            if fault.method != method or not uri.startswith(fault.uri_prefix) or fault.times <= 0:
                continue
            if fault.skip > 0:
                fault.skip -= 1
                return
            fault.times -= 1
            raise fault.error

    def _route(self, method: str, path: list[str]) -> RouteHandler | None:
        routes: dict[tuple[str, str, int], RouteHandler] = {
            ("GET", "instances", 2): self._get_instance,
            ("GET", "instances", 3): self._get_instance_part,
            ("GET", "instances", 4): self._get_instance_content,
            ("POST", "instances", 1): self._post_instance,
            ("DELETE", "instances", 2): self._delete_instance,
            ("GET", "series", 2): self._get_series,
            ("GET", "series", 3): self._get_series_part,
            ("GET", "studies", 1): self._get_studies,
            ("GET", "studies", 2): self._get_study,
            ("DELETE", "studies", 2): self._delete_study,
            ("GET", "statistics", 1): self._get_statistics,
            ("GET", "studies", 3): self._get_study_part,
            ("PUT", "studies", 4): self._label,
            ("DELETE", "studies", 4): self._label,
            ("GET", "changes", 1): self._get_changes,
            ("GET", "modalities", 1): self._get_modalities,
            ("POST", "modalities", 3): self._post_modality,
            ("GET", "jobs", 2): self._get_job,
            ("POST", "jobs", 3): self._cancel_job,
            ("GET", "queries", 3): self._get_query_answers,
            ("POST", "tools", 2): self._find,
            ("GET", "system", 1): self._get_system,
        }
        if not path:
            return None
        return routes.get((method, path[0], len(path)))

    def _missing(self, uri: str) -> HostError:
        return HostError(f"{uri}: HTTP 404 Inexistent item", missing=True)

    # -- instances -----------------------------------------------------------------------------
    def _instance(self, uri: str, instance_id: str) -> FakeInstance:
        instance = self.instances.get(instance_id)
        if instance is None:
            raise self._missing(uri)
        return instance

    def _instance_json(self, instance: FakeInstance) -> dict[str, Json]:
        series = self.series[instance.series_id]
        return {
            "ID": instance.instance_id, "Type": "Instance",
            "FileSize": len(instance.file), "FileUuid": str(uuid.uuid5(
                uuid.NAMESPACE_OID, instance.instance_id)),
            "IndexInSeries": series.instance_ids.index(instance.instance_id) + 1,
            "MainDicomTags": main_tags(instance.dataset, INSTANCE_TAGS),
            "ParentSeries": instance.series_id,
        }

    def _get_instance(self, request: Request) -> Json:
        return self._instance_json(self._instance(request.uri, request.path[1]))

    def _get_instance_part(self, request: Request) -> Json:
        instance = self._instance(request.uri, request.path[1])
        part = request.path[2]
        if part == "file":
            return instance.file
        if part == "metadata":
            if "expand" in request.query:
                return dict(instance.metadata)
            return sorted(instance.metadata)
        if part == "series":
            return self._series_json(self.series[instance.series_id])
        if part == "study":
            return self._study_json(self.studies[self.series[instance.series_id].study_id])
        if part == "tags" and "simplify" in request.query:
            return {element.keyword: tag_text(element.value) for element in instance.dataset
                    if element.keyword and element.VR not in ("SQ", "OB", "OW", "OF", "UN")}
        raise self._unsupported("GET", request.uri)

    def _get_instance_content(self, request: Request) -> Json:
        """`/instances/{id}/content/{gggg-eeee}`: a top-level element's value as text."""
        instance = self._instance(request.uri, request.path[1])
        if request.path[2] != "content":
            raise self._unsupported("GET", request.uri)
        group, _, element = request.path[3].partition("-")
        try:
            tag = Tag(int(group, 16), int(element, 16))
        except ValueError:
            raise HostError(f"{request.uri}: HTTP 400 Bad request") from None
        if tag not in instance.dataset:
            raise self._missing(request.uri)
        return tag_text(instance.dataset[tag].value)

    def _post_instance(self, request: Request) -> Json:
        if not isinstance(request.body, bytes):
            raise HostError(f"{request.uri}: HTTP 400 Bad file format")
        try:
            dataset = pydicom.dcmread(BytesIO(request.body))
        except (InvalidDicomError, EOFError, ValueError) as error:
            raise HostError(f"{request.uri}: HTTP 400 Bad file format: {error}") from None
        instance_id, status = self._store(dataset, request.body, {
            "RemoteAET": "", "CalledAET": "", "RemoteIP": "127.0.0.1", "Origin": "RestApi"})
        series = self.series[self.instances[instance_id].series_id]
        study = self.studies[series.study_id]
        return {"ID": instance_id, "ParentPatient": study.patient_id,
                "ParentStudy": study.study_id, "ParentSeries": series.series_id,
                "Path": f"/instances/{instance_id}", "Status": status}

    def _delete_instance(self, request: Request) -> Json:
        self._remove_instance(self._instance(request.uri, request.path[1]))
        return {"RemainingAncestor": None}

    def _remove_instance(self, instance: FakeInstance) -> None:
        del self.instances[instance.instance_id]
        series = self.series[instance.series_id]
        series.instance_ids.remove(instance.instance_id)
        if not series.instance_ids:  # Orthanc removes the emptied parents too
            del self.series[series.series_id]
            study = self.studies[series.study_id]
            study.series_ids.remove(series.series_id)
            if not study.series_ids:
                del self.studies[study.study_id]

    def _store(self, dataset: Dataset, file: bytes, origin: dict[str, str]) -> tuple[str, str]:
        keys = [str(dataset.get(keyword, "") or "").strip() for keyword in
                ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")]
        patient_id, study_id = orthanc_id(keys[0]), orthanc_id(*keys[:2])
        series_id, instance_id = orthanc_id(*keys[:3]), orthanc_id(*keys)
        if instance_id in self.instances:
            return instance_id, "AlreadyStored"
        if patient_id not in self.patient_tags:
            self.patient_tags[patient_id] = main_tags(dataset, PATIENT_TAGS)
            self._log_change("NewPatient", "Patient", patient_id)
        if study_id not in self.studies:
            self.studies[study_id] = FakeStudy(study_id, patient_id, main_tags(dataset, STUDY_TAGS),
                                               main_tags(dataset, PATIENT_TAGS))
            self._log_change("NewStudy", "Study", study_id)
        study = self.studies[study_id]
        study.stable = False  # a new instance makes the study unstable again
        study.last_update = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        if series_id not in self.series:
            self.series[series_id] = FakeSeries(series_id, study_id,
                                                main_tags(dataset, SERIES_TAGS))
            study.series_ids.append(series_id)
            self._log_change("NewSeries", "Series", series_id)
        metadata = {
            **origin,
            "SopClassUid": str(dataset.get("SOPClassUID", "")),
            "ReceptionDate": datetime.now().strftime("%Y%m%dT%H%M%S"),
            "TransferSyntax": str(getattr(getattr(dataset, "file_meta", None),
                                          "TransferSyntaxUID", "")),
        }
        self.series[series_id].instance_ids.append(instance_id)
        self.instances[instance_id] = FakeInstance(instance_id, series_id, file, dataset, metadata)
        self._log_change("NewInstance", "Instance", instance_id)
        return instance_id, "Success"

    # -- series and studies --------------------------------------------------------------------
    def _series_json(self, series: FakeSeries) -> dict[str, Json]:
        study = self.studies[series.study_id]
        return {"ID": series.series_id, "Type": "Series", "Instances": list(series.instance_ids),
                "IsStable": study.stable, "MainDicomTags": dict(series.main_tags),
                "ParentStudy": series.study_id, "Status": "Unknown",
                "ExpectedNumberOfInstances": None}

    def _study_json(self, study: FakeStudy) -> dict[str, Json]:
        return {"ID": study.study_id, "Type": "Study", "IsStable": study.stable,
                "MainDicomTags": dict(study.main_tags),
                "PatientMainDicomTags": dict(study.patient_tags),
                "ParentPatient": study.patient_id, "Series": list(study.series_ids),
                "LastUpdate": study.last_update}

    def _study_instances(self, study: FakeStudy) -> list[FakeInstance]:
        return [self.instances[i] for s in study.series_ids for i in self.series[s].instance_ids]

    def _get_studies(self, request: Request) -> Json:
        since = int(request.query.get("since", ["0"])[0] or 0)
        limit = int(request.query.get("limit", ["0"])[0] or 0)
        studies = list(self.studies.values())[since:]
        studies = studies[:limit] if limit else studies
        if "expand" in request.query:
            return [self._study_json(study) for study in studies]
        return [study.study_id for study in studies]

    def _delete_study(self, request: Request) -> Json:
        study = self.studies.get(request.path[1])
        if study is None:
            raise self._missing(request.uri)
        for instance in self._study_instances(study):
            self._remove_instance(instance)
        return {"RemainingAncestor": None}

    def _get_statistics(self, request: Request) -> Json:
        size = sum(len(instance.file) for instance in self.instances.values())
        return {"TotalDiskSize": str(size), "TotalDiskSizeMB": size // 1048576,
                "CountInstances": len(self.instances), "CountStudies": len(self.studies)}

    def _get_series(self, request: Request) -> Json:
        series = self.series.get(request.path[1])
        if series is None:
            raise self._missing(request.uri)
        return self._series_json(series)

    def _get_series_part(self, request: Request) -> Json:
        series = self.series.get(request.path[1])
        if series is None:
            raise self._missing(request.uri)
        if request.path[2] == "instances":
            return [self._instance_json(self.instances[i]) for i in series.instance_ids]
        raise self._unsupported("GET", request.uri)

    def _get_study(self, request: Request) -> Json:
        study = self.studies.get(request.path[1])
        if study is None:
            raise self._missing(request.uri)
        return self._study_json(study)

    def _get_study_part(self, request: Request) -> Json:
        study = self.studies.get(request.path[1])
        if study is None:
            raise self._missing(request.uri)
        if request.path[2] == "instances":
            return [self._instance_json(self.instances[i]) for s in study.series_ids
                    for i in self.series[s].instance_ids]
        if request.path[2] == "series":
            return [self._series_json(self.series[s]) for s in study.series_ids]
        if request.path[2] == "statistics":
            size = sum(len(instance.file) for instance in self._study_instances(study))
            return {"DiskSize": str(size), "DiskSizeMB": size // 1048576,
                    "CountInstances": len(self._study_instances(study))}
        raise self._unsupported("GET", request.uri)

    def _label(self, request: Request) -> Json:
        study = self.studies.get(request.path[1])
        if not self.has_labels or request.path[2] != "labels":
            raise self._unsupported("PUT" if request.body is not None else "DELETE", request.uri)
        if study is None:
            raise self._missing(request.uri)
        if request.body is None:  # DELETE
            study.labels.discard(request.path[3])
        else:
            study.labels.add(request.path[3])
        return None

    # -- /changes ------------------------------------------------------------------------------
    def _log_change(self, change_type: str, resource_type: str, resource_id: str) -> None:
        plural = {"Patient": "patients", "Study": "studies", "Series": "series",
                  "Instance": "instances"}[resource_type]
        self.changes.append({"ChangeType": change_type, "Date": datetime.now().strftime(
            "%Y%m%dT%H%M%S"), "ID": resource_id, "Path": f"/{plural}/{resource_id}",
            "ResourceType": resource_type, "Seq": next(self._sequence)})

    def _get_changes(self, request: Request) -> Json:
        last_seq = self.changes[-1]["Seq"] if self.changes else 0
        if "last" in request.query:
            return {"Changes": [dict(change) for change in self.changes[-1:]], "Done": True,
                    "Last": last_seq}
        since = int(request.query.get("since", ["0"])[0] or 0)
        limit = int(request.query.get("limit", ["100"])[0] or 100)
        after = [change for change in self.changes if change["Seq"] > since
                 and change["Seq"] not in self.invisible_changes]
        page = [dict(change) for change in after[:limit]]
        return {"Changes": page, "Done": len(after) <= limit,
                "Last": page[-1]["Seq"] if page else last_seq}

    # -- modalities, store jobs, C-FIND ----------------------------------------------------------
    def _get_modalities(self, request: Request) -> Json:
        return sorted(self.modalities)

    def _post_modality(self, request: Request) -> Json:
        modality = self.modalities.get(request.path[1])
        if modality is None:
            raise HostError(f"{request.uri}: HTTP 404 Inexistent item: no modality {request.path[1]!r}",
                            missing=True)
        if request.path[2] == "store":
            return self._start_store(request.uri, modality, request.body)
        if request.path[2] == "query":
            return self._query(request.uri, modality, request.body)
        if request.path[2] == "echo":
            return {}
        raise self._unsupported("POST", request.uri)

    def _start_store(self, uri: str, modality: FakeModality, body: Json) -> Json:
        resources = [str(resource) for resource in body.get("Resources", [])]
        if body.get("Synchronous", True) is not False or body.get("Permissive", False):
            raise self._unsupported("POST", f"{uri} {body!r} (only asynchronous, non-permissive)")
        for resource in resources:
            if resource not in self.instances:  # Orthanc resolves every resource first
                raise self._missing(uri)
        job = FakeStoreJob(str(uuid.uuid4()), modality.name, resources, "Success", 100,
                           running_polls_left=modality.running_polls,
                           created_at=datetime.now().strftime("%Y%m%dT%H%M%S"))
        for position, instance_id in enumerate(resources):
            status = modality.refused_with.get(instance_id)
            dropped = modality.instances_before_drop == 0
            if status is None and not dropped:
                if modality.instances_before_drop is not None:
                    modality.instances_before_drop -= 1
                modality.received.append(instance_id)
                modality.held_sop_uids.add(self.instances[instance_id].sop_instance_uid)
                continue
            if dropped and modality.stores_before_timeout:
                modality.received.append(instance_id)
                modality.held_sop_uids.add(self.instances[instance_id].sop_instance_uid)
            job.state = "Failure"
            # Orthanc's progress of a failed job: position / size as a rounded whole percent.
            job.progress = math.floor(100 * position / len(resources) + 0.5)
            job.error_code, job.error_description = NETWORK_ERROR
            job.error_details = (
                f'C-STORE SCU to AET "{modality.aet}" has failed with DIMSE status {status}'
                if status is not None else
                f'DicomAssociation - C-STORE to AET "{modality.aet}": DIMSE No data available '
                "(timeout in non-blocking mode)" if modality.stores_before_timeout else
                f'DicomAssociation - C-STORE to AET "{modality.aet}": Peer aborted Association '
                "(or never connected)")
            break
        self.store_jobs[job.job_id] = job
        self.store_calls.append(StoreCall(modality.name, tuple(resources), job.job_id))
        return {"ID": job.job_id, "Path": f"/jobs/{job.job_id}"}

    def _query(self, uri: str, modality: FakeModality, body: Json) -> Json:
        if not modality.answers_find:
            raise HostError(f"{uri}: HTTP 500 Error in the network protocol: C-FIND refused")
        wanted = str(body.get("Query", {}).get("SOPInstanceUID", "")).split("\\")
        held = [uid for uid in wanted if uid in modality.held_sop_uids]
        query_id = str(uuid.uuid4())
        self._query_answers[query_id] = [
            {"SOPInstanceUID": uid, "QueryRetrieveLevel": "IMAGE"} for uid in held]
        return {"ID": query_id, "Path": f"/queries/{query_id}"}

    def _get_query_answers(self, request: Request) -> Json:
        answers = self._query_answers.get(request.path[1])
        if answers is None or request.path[2] != "answers":
            raise self._missing(request.uri)
        if "expand" in request.query:
            return [dict(answer) for answer in answers]
        return [str(index) for index in range(len(answers))]

    def _get_job(self, request: Request) -> Json:
        job = self.store_jobs.get(request.path[1])
        if job is None:
            raise self._missing(request.uri)
        state, progress = job.state, job.progress
        if job.running_polls_left > 0:
            job.running_polls_left -= 1
            state, progress = "Running", 0
        return {"ID": job.job_id, "Type": "DicomModalityStore", "State": state,
                "Progress": progress, "ErrorCode": job.error_code if state != "Running" else 0,
                "ErrorDescription": job.error_description if state != "Running" else "Success",
                "ErrorDetails": job.error_details if state == "Failure" else "",
                "Content": {"InstancesCount": len(job.resources), "FailedInstancesCount": 0,
                            "RemoteAet": self.modalities[job.modality].aet,
                            "LocalAet": self.aet, "Description": "REST API"},
                "CreationTime": job.created_at, "Priority": 0}

    def _cancel_job(self, request: Request) -> Json:
        job = self.store_jobs.get(request.path[1])
        if job is None or request.path[2] != "cancel":
            raise self._missing(request.uri)
        if job.running_polls_left > 0:  # still running: cancelled where it stands
            job.running_polls_left = 0
            job.state = "Failure"
            job.error_code, job.error_description = CANCELED_ERROR
        return {}

    # -- /tools/find, /system ------------------------------------------------------------------
    def _find(self, request: Request) -> Json:
        if request.path[1] != "find" or not isinstance(request.body, dict) or request.body.get("Expand"):
            raise self._unsupported("POST", f"{request.uri} {request.body!r}")
        level = str(request.body.get("Level", ""))
        conditions = {str(key): str(value) for key, value in (request.body.get("Query") or {}).items()}
        candidates: list[tuple[str, dict[str, str]]]
        if level == "Series":
            candidates = [(s.series_id, {**self.studies[s.study_id].main_tags,
                                         **self.studies[s.study_id].patient_tags, **s.main_tags})
                          for s in self.series.values()]
        elif level == "Study":
            candidates = [(s.study_id, {**s.patient_tags, **s.main_tags})
                          for s in self.studies.values()]
        elif level == "Instance":
            candidates = [(i.instance_id, main_tags(i.dataset, (
                *PATIENT_TAGS, *STUDY_TAGS, *SERIES_TAGS, *INSTANCE_TAGS)))
                for i in self.instances.values()]
        elif level == "Patient":
            candidates = list(self.patient_tags.items())
        else:
            raise HostError(f"{request.uri}: HTTP 400 Bad request: level {level!r}")
        return [resource_id for resource_id, tags in candidates
                if all(fnmatch.fnmatchcase(tags.get(key, ""), pattern)
                       for key, pattern in conditions.items())]

    def _get_system(self, request: Request) -> Json:
        return {"DicomAet": self.aet, "Name": "fake", "Version": "1.10.1", "ApiVersion": 9,
                "HasLabels": self.has_labels, "DatabaseVersion": 6,
                "DatabaseBackendPlugin": self.database_plugin}
