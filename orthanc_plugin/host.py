"""The only module that imports `orthanc`: REST calls, metrics, logging and callback registration."""

from __future__ import annotations

import json
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_plus

import orthanc

from orthanc_plugin.ports import HostError

if TYPE_CHECKING:
    from orthanc_plugin.api.routes import Router
    from orthanc_plugin.app import Gateway


def _is_missing(error: Exception) -> bool:
    # The 4.0 plugin raises OrthancException whose text carries Orthanc's error name.
    text = str(error)
    return "Unknown resource" in text or "Inexistent item" in text or "(17)" in text


class OrthancHost:
    """Calls Orthanc's own REST API in-process through the SDK (no HTTP, no credentials)."""

    def get_json(self, uri: str) -> Any:
        return json.loads(self._call(orthanc.RestApiGet, uri))

    def get_text(self, uri: str) -> str:
        return self._call(orthanc.RestApiGet, uri).decode("utf-8", "replace")

    def post_json(self, uri: str, body: Any) -> Any:
        answer = self._call(orthanc.RestApiPost, uri, json.dumps(body))
        return json.loads(answer) if answer.strip() else None

    def get_bytes(self, uri: str) -> bytes:
        return self._call(orthanc.RestApiGet, uri)

    def post_bytes(self, uri: str, data: bytes) -> Any:
        answer = self._call(orthanc.RestApiPost, uri, data)
        try:
            return json.loads(answer) if answer.strip() else None
        except ValueError:
            return answer

    def delete(self, uri: str) -> None:
        self._call(orthanc.RestApiDelete, uri)

    def set_metric(self, name: str, value: float) -> None:
        orthanc.SetMetricsValue(name, float(value), orthanc.MetricsType.DEFAULT)

    def log_info(self, message: str) -> None:
        orthanc.LogInfo(f"RtGateway: {message}")

    def log_warning(self, message: str) -> None:
        orthanc.LogWarning(f"RtGateway: {message}")

    def log_error(self, message: str) -> None:
        orthanc.LogError(f"RtGateway: {message}")

    @staticmethod
    def _call(function: Any, *args: Any) -> bytes:
        try:
            return function(*args)
        except orthanc.OrthancException as error:
            raise HostError(f"{args[0]}: {error}", missing=_is_missing(error)) from error


def read_orthanc_configuration() -> tuple[dict[str, Any], Path]:
    configuration = json.loads(orthanc.GetConfiguration())
    path = Path(orthanc.GetConfigurationPath())
    return configuration, (path if path.is_dir() else path.parent)


def register(gateway: Gateway, router: Router) -> None:
    """One dispatcher per callback type, as the Python plugin allows only one of each."""

    def on_stored(dicom: Any, instance_id: str) -> None:
        try:
            gateway.record_stored_instance(
                instance_id, dicom.GetInstanceRemoteAet(), _origin_name(dicom)
            )
        except Exception:  # a callback must never break Orthanc's store path
            orthanc.LogError("RtGateway: stored-instance callback: " + traceback.format_exc())

    def on_change(change_type: int, level: int, resource_id: str) -> None:
        try:
            if change_type == orthanc.ChangeType.ORTHANC_STARTED:
                gateway.start()
            elif change_type == orthanc.ChangeType.ORTHANC_STOPPED:
                gateway.stop()
            elif change_type == orthanc.ChangeType.STABLE_STUDY:
                gateway.notify_stable_study(resource_id)
            elif (change_type == orthanc.ChangeType.DELETED
                  and level == orthanc.ResourceType.INSTANCE):
                # Orthanc 1.10 signals deletions to plugins but does not log them in /changes.
                gateway.notify_deleted_instance(resource_id)
        except Exception:
            orthanc.LogError("RtGateway: change callback: " + traceback.format_exc())

    def on_rest(output: Any, uri: str, **request: Any) -> None:
        try:
            response = router.dispatch(
                request.get("method", "GET"),
                uri,
                # Orthanc 1.10 hands query values over still URL-encoded ("a%20b", "a+b").
                {unquote_plus(k): unquote_plus(v) for k, v in (request.get("get") or {}).items()},
                request.get("body") or b"",
            )
        except Exception:  # answer 500 rather than kill the HTTP thread
            orthanc.LogError("RtGateway: REST " + uri + ": " + traceback.format_exc())
            _send_status(output, 500, b'{"error": "internal error, see the Orthanc log"}')
            return
        if response.status == 200:
            output.AnswerBuffer(response.body, response.content_type)
        else:
            _send_status(output, response.status, response.body)

    orthanc.RegisterOnStoredInstanceCallback(on_stored)
    orthanc.RegisterOnChangeCallback(on_change)
    orthanc.RegisterRestCallback("/rt-gateway/(.*)", on_rest)
    if gateway.explorer_extension:
        orthanc.ExtendOrthancExplorer(gateway.explorer_extension)


def _send_status(output: Any, status: int, body: bytes) -> None:
    # The 4.0 wrapper maps `const char* body, uint32_t size` to (str, int); newer wrappers (the
    # official Docker image) take the body as bytes alone.
    text = body.decode("utf-8", "replace")
    try:
        output.SendHttpStatus(status, text, len(text.encode("utf-8")))
    except TypeError:
        output.SendHttpStatus(status, body)


def _origin_name(dicom: Any) -> str:
    try:
        origin = dicom.GetInstanceOrigin()
    except Exception:
        return ""
    names = {
        orthanc.InstanceOrigin.DICOM_PROTOCOL: "DicomProtocol",
        orthanc.InstanceOrigin.REST_API: "RestApi",
        orthanc.InstanceOrigin.PLUGIN: "Plugins",
        orthanc.InstanceOrigin.LUA: "Lua",
    } if hasattr(orthanc, "InstanceOrigin") else {}
    return names.get(origin, str(origin))


def install() -> None:
    """Called by entry.py when Orthanc loads the plugin; any exception stops Orthanc's start-up."""
    from orthanc_plugin.app import build_gateway
    from orthanc_plugin.config import ConfigError
    from orthanc_plugin.rules import RulesError

    configuration, config_dir = read_orthanc_configuration()
    try:
        gateway = build_gateway(OrthancHost(), configuration, config_dir)
    except (RulesError, ConfigError) as error:
        orthanc.LogError(f"RtGateway: not starting: {error}")
        raise
    register(gateway, gateway.router)
    orthanc.LogWarning(
        f"RtGateway: loaded {len(gateway.ruleset.rules)} rule(s) from {gateway.config.rules_file}"
    )
