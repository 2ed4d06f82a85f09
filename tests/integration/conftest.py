"""Fixtures for tests with real Orthanc processes on loopback."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.orthanc import OrthancProcess

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"


def require_orthanc() -> None:
    if shutil.which("Orthanc") is None or shutil.which("storescu") is None:
        pytest.fail("Orthanc and DCMTK are not installed: run `make test`, which installs them")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Path:
    return tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])


@pytest.fixture(scope="module")
def destinations(workdir: Path) -> Iterator[dict[str, OrthancProcess]]:
    require_orthanc()
    peers = {
        name: OrthancProcess(workdir / name.lower(), name) for name in ("ORGANO", "ARCHIVE")
    }
    for peer in peers.values():
        peer.start()
    yield peers
    for peer in peers.values():
        peer.stop()


def keep_logs(process: OrthancProcess, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    if process.log_path.exists():
        shutil.copy(process.log_path, ARTIFACTS / f"{name}.log")
