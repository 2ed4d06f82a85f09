"""The Docker packaging, run with pytest-docker where a Docker engine exists.

No Docker engine runs on the development and CI machines of this project, so there these tests are
skipped with that reason; everything else is tested against local Orthanc processes.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import requests

from tests.support.orthanc import storescu, wait_until
from tests.support.rtset import make_rt_set, write_datasets

ROOT = Path(__file__).resolve().parents[2]
AUTH = ("rtgw", "change-me")


def docker_engine_available() -> bool:
    if shutil.which("docker") is None:
        return False
    result = subprocess.run(["docker", "info"], capture_output=True, timeout=20, check=False)
    return result.returncode == 0


pytestmark = [
    pytest.mark.docker,
    pytest.mark.skipif(not docker_engine_available(), reason="no Docker engine on this machine"),
]


@pytest.fixture(scope="module")
def docker_compose_file() -> str:
    return str(ROOT / "docker" / "compose.yaml")


@pytest.fixture(scope="module")
def gateway_url(docker_ip: str, docker_services) -> str:
    url = f"http://{docker_ip}:{docker_services.port_for('gateway', 8042)}"

    def ready() -> bool:
        try:
            return requests.get(f"{url}/rt-gateway/stats", auth=AUTH, timeout=2).ok
        except requests.RequestException:
            return False

    docker_services.wait_until_responsive(timeout=180, pause=2, check=ready)
    return url


def test_gateway_in_docker_forwards_to_the_target(
    gateway_url: str, docker_ip: str, docker_services, tmp_path: Path
) -> None:
    rules = requests.get(f"{gateway_url}/rt-gateway/rules", auth=AUTH, timeout=10).json()
    assert rules["rules"][0]["name"] == "Ethos adaptive plans"
    rtset = make_rt_set("DOCKER-1", plan_label="ADP1")
    storescu(write_datasets(rtset.all(), tmp_path), docker_services.port_for("gateway", 4242),
             calling="FOLLOW", called="RTGATEWAY")
    target = f"http://{docker_ip}:{docker_services.port_for('target', 8042)}"
    wait_until(
        lambda: requests.get(f"{target}/statistics", auth=AUTH, timeout=5).json()["CountInstances"]
        >= len(rtset.all()),
        120, "study forwarded by the containerised gateway",
    )
