"""The "RtGateway" section of the Orthanc configuration, with defaults that work when it is absent."""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SECTION = "RtGateway"


class ConfigError(ValueError):
    """A setting of the RtGateway section is invalid; the message names it."""


@dataclass(frozen=True)
class RetryPolicySettings:
    max_attempts: int = 8
    base_delay_seconds: float = 5.0
    max_delay_seconds: float = 600.0


@dataclass(frozen=True)
class WorkerSettings:
    """How the worker processes run and reach Orthanc (ARCHITECTURE.md: the work leaves Orthanc)."""

    threads_per_worker: int = 2
    memory_limit_mb: int = 3072
    job_time_limit_seconds: float = 1800.0
    nice: int = 10
    orthanc_url: str = "http://127.0.0.1:8042"
    http_user: str = ""
    http_password: str = ""
    python: str = ""
    max_body_bytes: int = 64 << 20


@dataclass(frozen=True)
class DicomWebServer:
    """One entry of Orthanc's `DicomWeb.Servers`: the gateway sends to it by STOW-RS itself."""

    url: str
    username: str = ""
    password: str = ""
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def auth(self) -> tuple[str, str] | None:
        return (self.username, self.password) if self.username else None


@dataclass(frozen=True)
class GatewayConfig:
    rules_file: Path
    database: Path
    transaction_log_folder: Path
    quarantine_folder: Path
    workers: int = 2
    retry: RetryPolicySettings = RetryPolicySettings()
    # Orthanc reports a failed store job's progress only as a whole percentage; chunks of at most
    # 40 instances keep "how many were delivered before the failure" exact.
    max_instances_per_association: int = 40
    stable_age_seconds: float = 60.0
    poll_interval_seconds: float = 1.0
    known_modalities: tuple[str, ...] = ()
    # Orthanc's DicomWeb.Servers by name: destinations reached by STOW-RS (forwarding/stow.py).
    dicomweb_servers: dict[str, DicomWebServer] = field(default_factory=dict)
    # The whole RtGateway section and the folder of the configuration file: each capability reads
    # its own sub-section (e.g. "Export", "Harvest") and resolves its paths against config_dir.
    section: dict[str, Any] = field(default_factory=dict)
    config_dir: Path = Path(".")
    worker: WorkerSettings = WorkerSettings()
    storage_directory: Path = Path(".")
    min_free_disk_mb: int = 1024
    # This gateway node's name, first part of every claim it makes ("<node>/<generation>:<pid>"):
    # at start it takes back only its own earlier claims, never a live neighbour's (issue 25).
    node_name: str = "gateway"
    # The gateway's state on a PostgreSQL server shared by several nodes (a libpq connection
    # string); empty: the SQLite file at `database`, one node.
    postgresql: str = ""
    # How long a claim holds its jobs without renewal (jobs/lease_store.py): how long a dead
    # node's work waits before another node takes it over.
    claim_lease_seconds: float = 60.0


def resolve_path(base: Path, value: str) -> Path:
    path = Path(value)
    return path if path.is_absolute() else (base / path).resolve()


def _number(section: dict[str, Any], key: str, default: float, minimum: float) -> float:
    value = section.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
        raise ConfigError(f"{SECTION}.{key}: expected a number >= {minimum}, got {value!r}")
    return float(value)


def parse_config(orthanc_config: dict[str, Any], config_dir: Path) -> GatewayConfig:
    """Build the gateway settings from the whole Orthanc configuration.

    Relative paths are resolved against the folder of the configuration file, so a checkout can be
    moved without editing the file.
    """
    section = orthanc_config.get(SECTION) or {}
    if not isinstance(section, dict):
        raise ConfigError(f"{SECTION}: expected an object")
    storage = resolve_path(config_dir, str(orthanc_config.get("StorageDirectory", "OrthancStorage")))
    default_home = storage / "rt-gateway"
    retry_section = section.get("Retry") or {}
    if not isinstance(retry_section, dict):
        raise ConfigError(f"{SECTION}.Retry: expected an object")
    retry = RetryPolicySettings(
        max_attempts=int(_number(retry_section, "MaxAttempts", 8, 1)),
        base_delay_seconds=_number(retry_section, "BaseDelaySeconds", 5.0, 0),
        max_delay_seconds=_number(retry_section, "MaxDelaySeconds", 600.0, 0),
    )
    modalities = orthanc_config.get("DicomModalities") or {}
    if orthanc_config.get("SaveJobs", True) and section.get("AllowSaveJobs") is not True:
        # Measured: after a kill -9, Orthanc resumes its saved store jobs as soon as its jobs
        # engine starts, before any plugin code runs, and re-sends what they had sent.
        raise ConfigError(
            'SaveJobs: Orthanc\'s "SaveJobs" is true (its default): after a crash Orthanc resumes '
            "its own store jobs and sends again what they had sent, before the gateway can stop "
            'them. Set "SaveJobs": false (the gateway\'s queue is the durable record), or '
            f'"{SECTION}": {{"AllowSaveJobs": true}} to accept that risk')
    return GatewayConfig(
        rules_file=resolve_path(config_dir, str(section.get("RulesFile", "lua-free-rules.yaml"))),
        database=resolve_path(config_dir, str(section.get("Database", default_home / "gateway.sqlite"))),
        transaction_log_folder=resolve_path(
            config_dir, str(section.get("TransactionLogFolder", default_home / "logs"))
        ),
        quarantine_folder=resolve_path(
            config_dir, str(section.get("QuarantineFolder", default_home / "quarantine"))
        ),
        workers=int(_number(section, "Workers", 2, 1)),
        retry=retry,
        max_instances_per_association=int(
            min(_number(section, "MaxInstancesPerAssociation", 40, 1), 40)
        ),
        stable_age_seconds=float(orthanc_config.get("StableAge", 60)),
        poll_interval_seconds=_number(section, "PollIntervalSeconds", 1.0, 0.05),
        known_modalities=tuple(sorted(modalities)) if isinstance(modalities, dict) else (),
        dicomweb_servers=dicomweb_servers(orthanc_config),
        section=section,
        config_dir=config_dir,
        worker=_worker_settings(orthanc_config, section),
        storage_directory=storage,
        min_free_disk_mb=int(_number(section, "MinFreeDiskMB", 1024, 0)),
        node_name=_node_name(section),
        postgresql=_postgresql(section),
        claim_lease_seconds=_number(section, "ClaimLeaseSeconds", 60.0, 5.0),
    )


def _postgresql(section: dict[str, Any]) -> str:
    """RtGateway.PostgreSQL: "host=... port=... dbname=... user=..." or a postgresql:// URI."""
    value = section.get("PostgreSQL", "")
    if not isinstance(value, str):
        raise ConfigError(f"{SECTION}.PostgreSQL: expected a connection string, got {value!r}")
    value = value.strip()
    if value and not (value.startswith(("postgresql://", "postgres://")) or "=" in value):
        raise ConfigError(f"{SECTION}.PostgreSQL: expected 'host=... dbname=... user=...' or a "
                          f"postgresql:// URI, got {value!r}")
    return value


NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


def _node_name(section: dict[str, Any]) -> str:
    """RtGateway.NodeName, by default the machine's host name: unique among the nodes that
    share one database (two nodes on one machine each set their own)."""
    value = section.get("NodeName", socket.gethostname().split(".")[0] or "gateway")
    if not isinstance(value, str) or not NODE_NAME.fullmatch(value):
        raise ConfigError(f"{SECTION}.NodeName: expected 1-63 letters, digits, '.', '_' or '-' "
                          f"starting with a letter or digit, got {value!r}")
    return value


def _worker_settings(orthanc_config: dict[str, Any], section: dict[str, Any]) -> WorkerSettings:
    scheme = "https" if orthanc_config.get("SslEnabled") else "http"
    default_url = f"{scheme}://127.0.0.1:{int(orthanc_config.get('HttpPort', 8042))}"
    user = section.get("HttpUser")
    password = section.get("HttpPassword")
    users = orthanc_config.get("RegisteredUsers") or {}
    if user is None and isinstance(users, dict) and users:
        # Orthanc's own first user: the workers need no credential of their own by default.
        user = sorted(users)[0]
        password = users[user]
    for key, value in (("HttpUser", user), ("HttpPassword", password)):
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"{SECTION}.{key}: expected text")
    url = section.get("OrthancUrl", default_url)
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ConfigError(f"{SECTION}.OrthancUrl: expected an http(s) URL, got {url!r}")
    python = section.get("WorkerPython", "")
    if not isinstance(python, str):
        raise ConfigError(f"{SECTION}.WorkerPython: expected a path")
    return WorkerSettings(
        threads_per_worker=int(_number(section, "ThreadsPerWorker", 2, 1)),
        memory_limit_mb=int(_number(section, "WorkerMemoryLimitMB", 3072, 0)),
        job_time_limit_seconds=_number(section, "JobTimeLimitSeconds", 1800, 0),
        nice=int(_number(section, "WorkerNice", 10, 0)),
        orthanc_url=url,
        http_user=user or "",
        http_password=password or "",
        python=python,
        max_body_bytes=int(_number(section, "MaxRequestBodyMB", 64, 1)) << 20,
    )


def dicomweb_servers(orthanc_config: dict[str, Any]) -> dict[str, DicomWebServer]:
    """Orthanc's `DicomWeb.Servers`, written either way the DICOMweb plugin accepts:
    `"NAME": ["url", "user", "password"]` or `"NAME": {"Url": ..., "Username": ...,
    "Password": ..., "HttpHeaders": {...}}`."""
    section = orthanc_config.get("DicomWeb") or {}
    raw = section.get("Servers") if isinstance(section, dict) else None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError("DicomWeb.Servers: expected an object of server names")
    servers = {}
    for name, entry in raw.items():
        where = f"DicomWeb.Servers.{name}"
        if isinstance(entry, list) and entry and all(isinstance(v, str) for v in entry):
            url, user, password = [*entry, "", ""][:3]
            headers: dict[str, str] = {}
        elif isinstance(entry, dict) and isinstance(entry.get("Url"), str):
            url, user, password = entry["Url"], entry.get("Username", ""), entry.get("Password", "")
            headers = entry.get("HttpHeaders") or {}
            if not isinstance(headers, dict):
                raise ConfigError(f"{where}.HttpHeaders: expected an object")
        else:
            raise ConfigError(f'{where}: expected ["url", "user", "password"] or {{"Url": ...}}')
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"{where}: expected an http:// or https:// URL, got {url!r}")
        servers[str(name)] = DicomWebServer(url.rstrip("/"), str(user or ""), str(password or ""),
                                            {str(k): str(v) for k, v in headers.items()})
    return servers
