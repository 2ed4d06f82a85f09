"""Harvest: resumable C-FIND/C-MOVE download of a remote archive under a request-rate cap."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from orthanc_plugin.config import SECTION, ConfigError, resolve_path
from orthanc_plugin.harvest.action import HarvestRunner, HarvestSettings
from orthanc_plugin.harvest.model import safe_delimiter
from orthanc_plugin.harvest.routes import add_routes
from orthanc_plugin.harvest.rules_sync import RulesHarvests
from orthanc_plugin.harvest.store import HarvestStore

if TYPE_CHECKING:
    from orthanc_plugin.context import CapabilityContext


def read_settings(section: Any, config_dir: Any, default_folder: Any) -> HarvestSettings:
    if not isinstance(section, dict):
        raise ConfigError(f"{SECTION}.Harvest: expected an object")

    def number(key: str, default: float, minimum: float) -> float:
        value = section.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
            raise ConfigError(f"{SECTION}.Harvest.{key}: expected a number >= {minimum}, got {value!r}")
        return float(value)

    delimiter = section.get("ZipDelimiter", "__")
    try:
        safe_delimiter(str(delimiter))
    except ValueError as error:
        raise ConfigError(f"{SECTION}.Harvest.ZipDelimiter: {error}") from error
    return HarvestSettings(
        folder=resolve_path(config_dir, str(section.get("Folder", default_folder))),
        threads=int(number("Threads", 4, 1)),
        zip_delimiter=str(delimiter),
        burst=int(number("Burst", 1, 1)),
        poll_seconds=number("PollSeconds", 0.2, 0.01),
        move_timeout_seconds=number("MoveTimeoutSeconds", 3600, 1),
    )


def install(ctx: CapabilityContext) -> None:
    settings = read_settings(ctx.config.section.get("Harvest") or {}, ctx.config.config_dir,
                             ctx.config.database.parent / "harvest")
    # The rows it claims say which node holds them, as the queue's jobs do, for as long as the
    # queue's claims hold (RtGateway.ClaimLeaseSeconds).
    store = HarvestStore(ctx.db, ctx.queue.claimant, ctx.config.claim_lease_seconds)
    runner = HarvestRunner(ctx.host, store, ctx.recorder, settings, ctx.host.log_error, ctx.gate)
    ctx.hooks.on_start.append(runner.start)
    ctx.hooks.on_stop.append(runner.stop)
    ctx.hooks.on_rules_loaded.append(
        RulesHarvests(runner, ctx.known_targets, ctx.host.log_error).sync)
    add_routes(ctx.router, ctx, runner)


__all__ = ["install"]
