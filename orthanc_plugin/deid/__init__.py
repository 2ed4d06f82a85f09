"""De-identification: keyed UID mapping, PS3.15 Annex E profiles, copies stored and forwarded."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from orthanc_plugin.config import SECTION, ConfigError, resolve_path
from orthanc_plugin.deid.action import (
    COPY_THREADS,
    DELETE_JOB_ACTION,
    AnonymizeExecutor,
    DeleteOriginals,
)
from orthanc_plugin.deid.keys import Pseudonymizer, new_secret
from orthanc_plugin.deid.routes import add_routes
from orthanc_plugin.deid.rule import JOB_ACTION, AnonymizeAction, plan_anonymize
from orthanc_plugin.deid.tables import installation_secret

if TYPE_CHECKING:
    from orthanc_plugin.context import CapabilityContext


def pseudonymizer(ctx: CapabilityContext) -> Pseudonymizer:
    """The site's keyed UID mapping: the same one for de-identified copies and for coerced copies
    with `uids: keyed`, so both keep their RT links and agree with each other."""
    settings = ctx.config.section.get("Deid") or {}
    if not isinstance(settings, dict):
        raise ConfigError(f"{SECTION}.Deid: expected an object")
    secret_file = settings.get("SecretFile")
    if secret_file is None:
        secret = installation_secret(ctx.db)
    else:
        secret = _secret_from_file(resolve_path(ctx.config.config_dir, str(secret_file)))
    return Pseudonymizer(secret)


def copy_threads(ctx: CapabilityContext) -> int:
    """RtGateway.Deid.CopyThreads: copies in the making at once per worker process."""
    settings = ctx.config.section.get("Deid") or {}
    value = settings.get("CopyThreads", COPY_THREADS) if isinstance(settings, dict) else None
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 16:
        raise ConfigError(f"{SECTION}.Deid.CopyThreads: expected a whole number from 1 to 16")
    return value


def install(ctx: CapabilityContext) -> None:
    keys = pseudonymizer(ctx)
    ctx.registry.add_planner(AnonymizeAction, plan_anonymize)
    ctx.registry.add_executor(JOB_ACTION, AnonymizeExecutor(ctx.jobs, keys, copy_threads(ctx),
                                                            ctx.labels))
    ctx.registry.add_executor(DELETE_JOB_ACTION, DeleteOriginals(
        ctx.host, ctx.db, ctx.queue, ctx.recorder,
    ))
    add_routes(ctx.router, ctx.db)


def _secret_from_file(path: Path) -> str:
    """A key file kept beside the database (or on a safer volume), created 0600 when missing."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(new_secret())
    text = path.read_text().strip()
    if len(text) < 16:
        raise ConfigError(f"{SECTION}.Deid.SecretFile: {path} holds fewer than 16 characters")
    return text


__all__ = ["install"]
