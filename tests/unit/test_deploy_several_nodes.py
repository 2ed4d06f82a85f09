"""deploy/several-nodes as containers and as systemd units, checked without running them (no Docker
engine or systemd as PID 1 on these machines): compose.yaml's nodes are orthanc-node.json once the
image has turned their environment into configuration, its front runs haproxy.cfg against their
addresses, its PostgreSQL gets the databases they name (the init script run on a real server),
and the node template unit verifies and may write every folder a node writes."""

from __future__ import annotations

import copy
import ipaddress
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import psycopg
import yaml

from orthanc_plugin.config import parse_config
from tests.support.postgres import PostgresServer
from tests.support.systemd import verified_unit

ROOT = Path(__file__).resolve().parents[2]
SEVERAL = ROOT / "deploy" / "several-nodes"
# What Orthanc listens on when nothing sets DicomPort (the image's rt-gateway.json does not).
ORTHANC_DICOM_PORT = 4242


def compose() -> dict[str, Any]:
    """compose.yaml with every ${VAR:?message} given a value, as `docker compose` would."""
    text = (SEVERAL / "compose.yaml").read_text(encoding="utf-8")
    text = re.sub(r"\$\{(\w+):\?[^}]*\}", lambda match: f"{match.group(1).lower()}-secret", text)
    assert "${" not in text
    loaded: dict[str, Any] = yaml.safe_load(text)
    return loaded


def nodes() -> dict[str, dict[str, Any]]:
    return {name: service for name, service in compose()["services"].items() if "build" in service}


def camel(word: str) -> str:
    """The image's envVarToCamelCase (orthanc-builder): QUERY_RETRIEVE_SIZE -> QueryRetrieveSize."""
    return "".join(part[0] + part[1:].lower() for part in word.split("_"))


def merge(into: dict[str, Any], values: dict[str, Any]) -> None:
    for key, value in values.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            merge(into[key], value)
        else:
            into[key] = value


def image_config(environment: dict[str, str]) -> dict[str, Any]:
    """The configuration the orthancteam image makes of docker/rt-gateway.json and a container's
    environment: ORTHANC__A__B_C sets A.BC (values parsed as JSON when they are), its listed
    exception ORTHANC__POSTGRESQL__* sets PostgreSQL.*, ORTHANC_JSON is merged whole."""
    config: dict[str, Any] = json.loads((ROOT / "docker" / "rt-gateway.json").read_text())
    for key, value in environment.items():
        if key == "ORTHANC_JSON":
            merge(config, json.loads(value))
            continue
        if not key.startswith("ORTHANC__"):
            continue
        path = [camel(word) for word in key.removeprefix("ORTHANC__").split("__")]
        if path[0] == "Postgresql":
            path[0] = "PostgreSQL"
        try:
            parsed: Any = json.loads(value)
        except ValueError:
            parsed = value
        section: dict[str, Any] = {}
        leaf = section
        for part in path[:-1]:
            leaf = leaf.setdefault(part, {})
        leaf[path[-1]] = parsed
        merge(config, section)
    return config


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> volume (or host file) of a service."""
    return {entry.split(":")[1]: entry.split(":")[0] for entry in service.get("volumes", [])}


def test_every_compose_node_is_orthanc_node_json_with_its_own_name() -> None:
    site = json.loads((SEVERAL / "orthanc-node.json").read_text())
    site_state = parse_config(site, Path("/etc/rt-gateway")).postgresql
    names = set()
    for service in nodes().values():
        assert service["build"] == {"context": "../..", "dockerfile": "docker/Dockerfile"}
        # The variable the gateway's PostgreSQL setting would come from by the ORTHANC__ rule is
        # spelled "Postgresql" by the image, which the gateway never reads.
        assert "ORTHANC__RT_GATEWAY__POSTGRESQL" not in service["environment"]
        config = image_config(service["environment"])
        parsed = parse_config(config, Path("/etc/orthanc"))
        names.add(parsed.node_name)
        assert "Postgresql" not in config["RtGateway"]
        # The gateway's state: the same database and role as the site file, on the compose server.
        assert parsed.postgresql.startswith("host=postgres port=5432 ")
        words = dict(word.split("=", 1) for word in parsed.postgresql.split())
        site_words = dict(word.split("=", 1) for word in site_state.split())
        assert (words["dbname"], words["user"]) == (site_words["dbname"], site_words["user"])
        assert words["password"] == "rtgw_db_password-secret"
        # Orthanc's index: shared on PostgreSQL with its lock off, SaveJobs off, as the site file.
        assert config["SaveJobs"] is False
        index = config["PostgreSQL"]
        assert index["Lock"] is False and index["EnableIndex"] is True
        assert index["EnableStorage"] is False
        assert (index["Host"], index["Port"]) == ("postgres", 5432)
        assert (index["Database"], index["Username"]) == (site["PostgreSQL"]["Database"],
                                                          site["PostgreSQL"]["Username"])
        for key in ("StorageDirectory", "IndexDirectory", "StableAge", "DicomModalities",
                    "DicomAlwaysAllowEcho"):
            assert config[key] == site[key], key
        assert service["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert len(names) == len(nodes()) == 2


def test_the_nodes_share_one_storage_volume_and_keep_their_state_apart() -> None:
    site = json.loads((SEVERAL / "orthanc-node.json").read_text())
    storage = site["StorageDirectory"]
    state = Path(site["RtGateway"]["Database"]).parents[1]    # /var/lib/rt-gateway
    assert Path(site["IndexDirectory"]).is_relative_to(state)
    shared, own = set(), []
    for service in nodes().values():
        volumes = mounts(service)
        shared.add(volumes[storage])
        own.append(volumes[str(state)])
    assert len(shared) == 1 and len(set(own)) == len(own)
    declared = set(compose()["volumes"])
    assert shared | set(own) <= declared


def test_the_front_runs_haproxy_cfg_against_the_nodes_addresses() -> None:
    config = (SEVERAL / "haproxy.cfg").read_text(encoding="utf-8")
    servers = dict(re.findall(r"(?m)^\s+server (\S+) (\S+) check", config))
    services = compose()["services"]
    front = services["front"]
    assert mounts(front)["/usr/local/etc/haproxy/haproxy.cfg"] == "./haproxy.cfg"
    # Its stats socket's folder exists, and port 104 opens without root.
    socket_folder = re.search(r"stats socket (\S+)/", config)
    assert socket_folder is not None and socket_folder.group(1) in front["tmpfs"]
    assert front["sysctls"]["net.ipv4.ip_unprivileged_port_start"] == 0
    bind = re.search(r"bind :(\d+)", config)
    assert bind is not None and f"{bind.group(1)}:{bind.group(1)}" in front["ports"]
    network = compose()["networks"]["gateway"]["ipam"]["config"][0]
    subnet, dynamic = (ipaddress.ip_network(network[k]) for k in ("subnet", "ip_range"))
    assert set(servers) == set(nodes())
    for name, address in servers.items():
        host, port = address.rsplit(":", 1)
        assigned = ipaddress.ip_address(services[name]["networks"]["gateway"]["ipv4_address"])
        assert assigned == ipaddress.ip_address(host)
        assert assigned in subnet and assigned not in dynamic
        assert int(port) == image_config(services[name]["environment"]).get(
            "DicomPort", ORTHANC_DICOM_PORT)
    assert set(front["depends_on"]) == set(nodes())


def test_the_postgres_init_script_makes_the_databases_and_roles_the_nodes_use(
        postgres_server: PostgresServer) -> None:
    service = compose()["services"]["postgres"]
    assert mounts(service)["/docker-entrypoint-initdb.d/rt-gateway.sh"] == "./postgres-init.sh"
    assert {"ORTHANC_DB_PASSWORD", "RTGW_DB_PASSWORD"} <= set(service["environment"])
    script = SEVERAL / "postgres-init.sh"
    assert os.access(script, os.X_OK)      # the image runs it (a script not executable is sourced)
    env = dict(os.environ, PGHOST=str(postgres_server.root), PGPORT=str(postgres_server.port),
               POSTGRES_USER="postgres", ORTHANC_DB_PASSWORD="o'secret", RTGW_DB_PASSWORD="r-secret")
    ran = subprocess.run([str(script)], env=env, capture_output=True, text=True, timeout=60)
    try:
        assert ran.returncode == 0, ran.stdout + ran.stderr
        with psycopg.connect(postgres_server.conninfo(), autocommit=True) as admin:
            owners = dict(admin.execute(
                "SELECT datname, pg_get_userbyid(datdba) FROM pg_database "
                "WHERE datname IN ('orthanc', 'rtgw')").fetchall())
        environment = next(iter(nodes().values()))["environment"]
        state = json.loads(environment["ORTHANC_JSON"])["RtGateway"]["PostgreSQL"]
        assert owners == {environment["ORTHANC__POSTGRESQL__DATABASE"]:
                          environment["ORTHANC__POSTGRESQL__USERNAME"], "rtgw": "rtgw"}
        assert "dbname=rtgw user=rtgw" in " ".join(state.split())
    finally:
        with psycopg.connect(postgres_server.conninfo(), autocommit=True) as admin:
            for statement in ("DROP DATABASE IF EXISTS orthanc", "DROP DATABASE IF EXISTS rtgw",
                              "DROP ROLE IF EXISTS orthanc", "DROP ROLE IF EXISTS rtgw"):
                admin.execute(statement)


def test_the_node_template_unit_verifies_and_can_write_every_folder_of_a_node() -> None:
    unit = SEVERAL / "rt-gateway-node@.service"
    text, writable = verified_unit(unit)
    site = json.loads((SEVERAL / "orthanc-node.json").read_text())
    parsed = parse_config(copy.deepcopy(site), Path("/etc/rt-gateway"))
    folders = [parsed.database.parent, parsed.transaction_log_folder, parsed.quarantine_folder,
               Path(site["StorageDirectory"]), Path(site["IndexDirectory"])]
    for folder in folders:
        assert any(folder == root or root in folder.parents for root in writable), folder
    # What the single node's unit lacks: the shared storage, and waiting for its mount.
    single = (ROOT / "deploy" / "rt-gateway.service").read_text()
    assert site["StorageDirectory"] not in single
    assert f"RequiresMountsFor={site['StorageDirectory']}" in text
    assert "ExecStart=/usr/sbin/Orthanc /etc/rt-gateway/node-%i.json" in text
    for setting in ("ProtectSystem=strict", "TCP_NODELAY=1", "Restart=on-failure", "User=rtgw"):
        assert setting in text
