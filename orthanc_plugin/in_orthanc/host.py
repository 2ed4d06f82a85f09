"""The only module that imports `orthanc`: callbacks in, routes out, nothing else.

What stays inside Orthanc's interpreter is deliberately small (ARCHITECTURE.md): the callbacks send
a datagram and return; the REST callback forwards to the lead worker over a Unix socket (a socket
wait releases the GIL); the supervisor starts and watches the worker processes. No thread of the
plugin calls an SDK function that stores, modifies, sends or waits on Orthanc: the only SDK calls
are logging, metrics and the answers to Orthanc's own REST threads.
"""

from __future__ import annotations

import json
import traceback
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

import orthanc

from orthanc_plugin.channels import (
    NOTED_METADATA,
    DeletedNote,
    NotedFacts,
    StableStudyNote,
    StoredNote,
    channels_for,
)
from orthanc_plugin.config import ConfigError, parse_config
from orthanc_plugin.in_orthanc.resumed_jobs_store import gateway_store_jobs
from orthanc_plugin.in_orthanc.supervisor.metrics import MetricsCopier
from orthanc_plugin.in_orthanc.supervisor.notes import NoteSender
from orthanc_plugin.in_orthanc.supervisor.processes import (
    Supervisor,
    WorkerCommand,
    validate_in_worker,
    worker_python,
)
from orthanc_plugin.in_orthanc.supervisor.proxy import ApiProxy

ROOT = Path(__file__).resolve().parents[2]   # the checkout: orthanc_plugin/in_orthanc/host.py
EXPLORER_JS = ROOT / "orthanc_plugin" / "web" / "static" / "explorer.js"


def read_orthanc_configuration() -> tuple[dict[str, Any], Path]:
    configuration = json.loads(orthanc.GetConfiguration())
    path = Path(orthanc.GetConfigurationPath())
    return configuration, (path if path.is_dir() else path.parent)


class Plugin:
    def __init__(self, supervisor: Supervisor, notes: NoteSender, proxy: ApiProxy,
                 database: Path) -> None:
        self.supervisor = supervisor
        self.notes = notes
        self.proxy = proxy
        self.database = database
        self.metrics = MetricsCopier(proxy, _set_metric)

    def start(self) -> None:
        self._cancel_resumed_store_jobs()
        self.supervisor.start()
        self.metrics.start()

    def stop(self) -> None:
        self.metrics.stop()
        orthanc.LogWarning("RtGateway: Orthanc is stopping: stopping the workers")
        self.supervisor.stop(timeout=4.0)
        orthanc.LogWarning("RtGateway: workers stopped")

    def _cancel_resumed_store_jobs(self) -> None:
        """With Orthanc's SaveJobs on, a store job the gateway had in flight when Orthanc died is
        resumed by Orthanc at start and would send again what it had sent. Cancelled here, on
        Orthanc's own change thread at ORTHANC_STARTED (no plugin thread, and no store lock is
        involved in a cancel), before any worker exists; the workers then ask the job or the
        destination what was delivered (forwarding/verify.py)."""
        try:
            jobs = json.loads(orthanc.RestApiGet("/jobs?expand"))
        except orthanc.OrthancException:
            return
        active = [str(job.get("ID")) for job in jobs
                  if job.get("Type") == "DicomModalityStore"
                  and job.get("State") in ("Pending", "Running", "Retry", "Paused")]
        cancelled = 0
        for job_id in gateway_store_jobs(self.database, active):
            try:
                orthanc.RestApiPost(f"/jobs/{job_id}/cancel", "{}")
                cancelled += 1
            except orthanc.OrthancException:
                continue
        if cancelled:
            orthanc.LogWarning(f"RtGateway: cancelled {cancelled} store job(s) Orthanc resumed "
                               "after a restart; their instances are verified before any resend")


def register(plugin: Plugin) -> None:
    """One dispatcher per callback type, as the Python plugin allows only one of each."""

    def on_stored(dicom: Any, instance_id: str) -> None:
        try:
            noted = [dicom.GetInstanceMetadata(key) if dicom.HasInstanceMetadata(key) else ""
                     for key in NOTED_METADATA]
            plugin.notes.send(StoredNote(instance_id, NotedFacts.of(
                noted, int(dicom.GetInstanceSize()))))
        except Exception:  # a callback must never break Orthanc's store path
            orthanc.LogError("RtGateway: stored-instance callback: " + traceback.format_exc())

    def on_change(change_type: int, level: int, resource_id: str) -> None:
        try:
            if change_type == orthanc.ChangeType.ORTHANC_STARTED:
                plugin.start()
            elif change_type == orthanc.ChangeType.ORTHANC_STOPPED:
                plugin.stop()
            elif change_type == orthanc.ChangeType.STABLE_STUDY:
                plugin.notes.send(StableStudyNote(resource_id))
            elif (change_type == orthanc.ChangeType.DELETED
                  and level == orthanc.ResourceType.INSTANCE):
                # Orthanc 1.10 signals deletions to plugins but does not log them in /changes.
                plugin.notes.send(DeletedNote(resource_id))
        except Exception:
            orthanc.LogError("RtGateway: change callback: " + traceback.format_exc())

    def on_rest(output: Any, uri: str, **request: Any) -> None:
        try:
            # Orthanc 1.10 hands query values over still URL-encoded ("a%20b", "a+b").
            query = {unquote_plus(k): unquote_plus(v) for k, v in (request.get("get") or {}).items()}
            body = request.get("body") or b""
            if isinstance(body, str):
                body = body.encode("utf-8")
            answer = plugin.proxy.forward(request.get("method", "GET"), uri, query, body,
                                          request.get("headers") or {})
        except Exception:  # answer 500 rather than kill the HTTP thread
            orthanc.LogError("RtGateway: REST " + uri + ": " + traceback.format_exc())
            _send_status(output, 500, b'{"error": "internal error, see the Orthanc log"}')
            return
        for name, value in answer.headers:
            output.SetHttpHeader(name, value)
        if answer.status == 200:
            output.AnswerBuffer(answer.body, answer.content_type)
        else:
            _send_status(output, answer.status, answer.body)

    orthanc.RegisterOnStoredInstanceCallback(on_stored)
    orthanc.RegisterOnChangeCallback(on_change)
    orthanc.RegisterRestCallback("/rt-gateway/(.*)", on_rest)
    if EXPLORER_JS.exists():
        orthanc.ExtendOrthancExplorer(EXPLORER_JS.read_text(encoding="utf-8"))


def _send_status(output: Any, status: int, body: bytes) -> None:
    # The 4.0 wrapper maps `const char* body, uint32_t size` to (str, int); newer wrappers (the
    # official Docker image) take the body as bytes alone.
    text = body.decode("utf-8", "replace")
    try:
        output.SendHttpStatus(status, text, len(text.encode("utf-8")))
    except TypeError:
        output.SendHttpStatus(status, body)


def install() -> None:
    """Called by entry.py when Orthanc loads the plugin; any exception stops Orthanc's start-up."""
    configuration, config_dir = read_orthanc_configuration()
    try:
        config = parse_config(configuration, config_dir)
    except ConfigError as error:
        orthanc.LogError(f"RtGateway: not starting: {error}")
        raise
    channels = channels_for(config.database)
    # Process 0 is the lead (intake, routes, the capabilities' loops), 1..Workers run the jobs:
    # a job that crashes its process never takes the routes or the intake down with it.
    command = WorkerCommand(worker_python(config.worker.python, ROOT), ROOT, channels,
                            config.workers + 1)
    envelope = json.dumps({"orthanc": configuration, "config_dir": str(config_dir)})
    # The rules file, the settings and the worker interpreter are checked before Orthanc serves.
    problem = validate_in_worker(command, envelope)
    if problem:
        orthanc.LogError(f"RtGateway: not starting: {problem}")
        raise RuntimeError(problem)
    supervisor = Supervisor(command, envelope, _log_warning, _log_error, node=config.node_name)
    proxy = ApiProxy(channels.api_socket, max_body_bytes=config.worker.max_body_bytes)
    plugin = Plugin(supervisor, NoteSender(channels.worker_socket(0)), proxy, config.database)
    if configuration.get("SaveJobs", True):
        orthanc.LogWarning(
            "RtGateway: SaveJobs is on (AllowSaveJobs): store jobs Orthanc resumes after a crash "
            "are cancelled at start and their instances verified, but what Orthanc re-sends "
            "before that can arrive twice")
    register(plugin)
    orthanc.LogWarning(
        f"RtGateway: loaded; a lead and {config.workers} job worker process(es) with "
        f"{command.python}, "
        f"channels in {channels.folder}"
    )


def _set_metric(name: str, value: float) -> None:
    orthanc.SetMetricsValue(name, value, orthanc.MetricsType.DEFAULT)


def _log_warning(message: str) -> None:
    orthanc.LogWarning(f"RtGateway: {message}")


def _log_error(message: str) -> None:
    orthanc.LogError(f"RtGateway: {message}")
