"""The `export` rule action: write the matched instances as files into a folder (DRAW export).

    - export: {folder: /data/draw, filename: "DRAW_{PatientID}_{SOPInstanceUID}.dcm"}
    - export: /data/draw          # the default name DRAW_{HospitalID}_{SOPInstanceUID}.dcm
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from orthanc_plugin.export.model import DEFAULT_TEMPLATE, TemplateError, template_keywords
from orthanc_plugin.jobs.executors import PlannedJob
from orthanc_plugin.rules.errors import RulesError
from orthanc_plugin.rules.schema_actions import ActionContext, ActionParser
from orthanc_plugin.rules.wording import kind_of, one_of

JOB_ACTION = "export"
KEYS = ("folder", "filename")


@dataclass(frozen=True)
class ExportAction:
    folder: str       # as written; relative folders are resolved against the configuration's folder
    filename: str = DEFAULT_TEMPLATE

    @property
    def job_target(self) -> str:
        return self.folder


def parse_export(raw: Any, path: str, context: ActionContext) -> ExportAction:
    if isinstance(raw, str):
        raw = {"folder": raw}
    if not isinstance(raw, dict):
        raise RulesError(path, f"expected a folder or a mapping with folder and filename, "
                               f"got {kind_of(raw)}")
    for key in raw:
        if key not in KEYS:
            raise RulesError(f"{path}.{key}", f"unknown option (expected one of: {one_of(KEYS)})")
    folder = raw.get("folder")
    if not isinstance(folder, str) or not folder.strip():
        raise RulesError(f"{path}.folder", f"expected a folder path, got {kind_of(folder)}")
    filename = raw.get("filename", DEFAULT_TEMPLATE)
    if not isinstance(filename, str):
        raise RulesError(f"{path}.filename", f"expected a file-name template, got {kind_of(filename)}")
    try:
        template_keywords(filename)
    except TemplateError as error:
        raise RulesError(f"{path}.filename", str(error)) from None
    return ExportAction(folder.strip(), filename)


def plan_export_job(action: ExportAction) -> list[PlannedJob]:
    return [PlannedJob(JOB_ACTION, action.job_target)]


# What this capability adds to the rules' vocabulary (capabilities.vocabulary()).
ACTIONS: dict[str, ActionParser] = {"export": parse_export}
