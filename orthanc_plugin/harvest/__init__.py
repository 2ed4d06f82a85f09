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
    from orthanc_plugin.app import Gateway


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


def install(gateway: Gateway) -> None:
    settings = read_settings(gateway.config.section.get("Harvest") or {}, gateway.config.config_dir,
                             gateway.config.database.parent / "harvest")
    runner = HarvestRunner(gateway.host, HarvestStore(gateway.db), gateway.recorder, settings,
                           gateway.host.log_error)
    gateway.on_start.append(runner.start)
    gateway.on_stop.append(runner.stop)
    gateway.on_rules_loaded.append(
        RulesHarvests(runner, gateway.known_targets, gateway.host.log_error).sync)
    add_routes(gateway.router, gateway, runner)


__all__ = ["install"]
