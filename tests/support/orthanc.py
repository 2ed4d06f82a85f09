"""Real Orthanc processes for the tests: a gateway with the plugin, and plain destinations."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import requests

from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
PLUGIN = "/usr/share/orthanc/plugins/libOrthancPython.so"
USER, PASSWORD = "rtgw", "test-password"
# Set by the test command for its second pass (scripts/trixie.sh): gateways then run in that
# debootstrap folder (Debian trixie: Orthanc 1.12, orthanc-python 5.0, Python 3.13) with its venv;
# peers, senders and the tests stay on this machine. The folder sees /tmp and this checkout at the
# same paths, so nothing else changes.
CHROOT = os.environ.get("RTGW_ORTHANC_CHROOT", "")
# Benchmarks on trixie run every Orthanc there (the Lua router and the targets too), so that a
# ratio compares one Orthanc version with itself; tests keep plain peers on the host.
CHROOT_ALL = os.environ.get("RTGW_ORTHANC_CHROOT_ALL", "") == "1"
CHROOT_VENV = "/opt/rtgw-venv"


class OrthancProcess:
    """One Orthanc with its own folder and ports; start, stop, kill -9 and start again."""

    def __init__(
        self,
        folder: Path,
        aet: str,
        *,
        plugin: bool = False,
        rules: str | None = None,
        modalities: dict[str, OrthancProcess | tuple[str, int]] | None = None,
        gateway_settings: dict[str, Any] | None = None,
        stable_age: int = 2,
        extra: dict[str, Any] | None = None,
    ) -> None:
        self.folder = folder
        self.aet = aet
        self.plugin = plugin
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        folder.mkdir(parents=True, exist_ok=True)
        self.log_path = folder / "orthanc.log"
        self.rules_path = folder / "lua-free-rules.yaml"
        if rules is not None:
            self.rules_path.write_text(rules)
        self.config: dict[str, Any] = {
            "Name": aet,
            "DicomAet": aet,
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "StorageDirectory": str(folder / "storage"),
            "IndexDirectory": str(folder / "storage"),
            "StableAge": stable_age,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True,
            "RegisteredUsers": {USER: PASSWORD},
            "DicomAlwaysAllowStore": True,
            "DicomCheckCalledAet": False,
            "DicomScpTimeout": 10,
            "DicomScuTimeout": 5,
            "DicomModalities": {},
            "SaveJobs": False,
            "Plugins": [],
        }
        for name, peer in (modalities or {}).items():
            self.add_modality(name, peer)
        if plugin:
            self.config["Plugins"] = [PLUGIN]
            self.config["PythonScript"] = str(ROOT / "orthanc_plugin" / "in_orthanc" / "entry.py")
            self.config["RtGateway"] = {
                "RulesFile": str(self.rules_path),
                "Database": str(folder / "gateway" / "gateway.sqlite"),
                "TransactionLogFolder": str(folder / "gateway" / "logs"),
                "QuarantineFolder": str(folder / "gateway" / "quarantine"),
                "Workers": 2,
                "PollIntervalSeconds": 0.2,
                "Retry": {"MaxAttempts": 6, "BaseDelaySeconds": 1, "MaxDelaySeconds": 4},
                **({"WorkerPython": f"{CHROOT_VENV}/bin/python"} if CHROOT else {}),
                **(gateway_settings or {}),
            }
        self.config.update(extra or {})

    def add_modality(self, name: str, peer: OrthancProcess | tuple[str, int]) -> None:
        if isinstance(peer, OrthancProcess):
            self.config["DicomModalities"][name] = [peer.aet, "127.0.0.1", peer.dicom_port]
        else:
            self.config["DicomModalities"][name] = [peer[0], "127.0.0.1", peer[1]]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def gateway_db(self) -> Path:
        return Path(self.config["RtGateway"]["Database"])

    def start(self, *, wait: bool = True, config_overrides: dict[str, Any] | None = None) -> None:
        config = dict(self.config)
        config.update(config_overrides or {})
        config_path = self.folder / "orthanc.json"
        config_path.write_text(json.dumps(config, indent=2))
        env = dict(os.environ, TCP_NODELAY="1")
        command = ["Orthanc", str(config_path)]
        if CHROOT and (self.plugin or CHROOT_ALL):
            command = ["chroot", CHROOT, "/usr/sbin/Orthanc", str(config_path)]
            env["RTGW_VENV"] = CHROOT_VENV
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                        cwd=self.folder)
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(
                    f"Orthanc {self.aet} exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            try:
                system = requests.get(f"{self.url}/system", auth=(USER, PASSWORD), timeout=1)
                if system.ok and (not self.plugin or self._plugin_ready()):
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"Orthanc {self.aet} not ready:\n{self.log_tail()}")

    def _plugin_ready(self) -> bool:
        return requests.get(f"{self.url}/rt-gateway/stats", auth=(USER, PASSWORD), timeout=2).ok

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None

    def kill9(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)
        self.process = None

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    # -- REST --------------------------------------------------------------------------------------
    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return requests.get(self.url + path, auth=(USER, PASSWORD), timeout=30, **kwargs)

    def post(self, path: str, body: Any = None, **kwargs: Any) -> requests.Response:
        data = body if isinstance(body, bytes | str) or body is None else json.dumps(body)
        if path.startswith("/rt-gateway/"):
            # What the gateway's page sends; the cross-site check refuses a POST without it.
            headers = {"X-Requested-With": "tests", "Content-Type": "application/json",
                       **kwargs.pop("headers", {})}
            kwargs["headers"] = headers
        auth = kwargs.pop("auth", (USER, PASSWORD))   # another registered user, when a test acts as one
        return requests.post(self.url + path, data=data, auth=auth, timeout=60, **kwargs)

    def delete(self, path: str) -> requests.Response:
        return requests.delete(self.url + path, auth=(USER, PASSWORD), timeout=30)

    def json(self, path: str, **kwargs: Any) -> Any:
        response = self.get(path, **kwargs)
        response.raise_for_status()
        return response.json()

    def json_once_there(self, path: str, **kwargs: Any) -> Any:
        """The resource's JSON, or {} while it does not exist yet (404): for waits on records
        the workers have yet to write, such as a plan the intake has not tracked."""
        response = self.get(path, **kwargs)
        if response.status_code == 404:
            return {}
        response.raise_for_status()
        return response.json()

    def instance_count(self) -> int:
        return int(self.json("/statistics")["CountInstances"])

    def sop_instance_uids(self) -> set[str]:
        uids = set()
        for item in self.json("/instances", params={"expand": ""}):
            uids.add(item["MainDicomTags"]["SOPInstanceUID"])
        return uids

    def reset_storage(self) -> None:
        """Delete every patient (between tests sharing one process)."""
        for patient in self.json("/patients"):
            self.delete(f"/patients/{patient}")


# DCMTK's storescu, not pynetdicom's console script of the same name (first on PATH when the venv
# is activated; it ignores TCP_NODELAY and is about 3x slower).
DCMTK_STORESCU = shutil.which("storescu", path="/usr/bin:/bin") or "storescu"


def storescu(
    files: Sequence[Path], port: int, *, calling: str, called: str = "ANY", check: bool = True,
    options: Sequence[str] = (),
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, TCP_NODELAY="1")
    command = [DCMTK_STORESCU, "-aet", calling, "-aec", called, *options, "127.0.0.1", str(port),
               *map(str, files)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    if check and result.returncode != 0:
        raise RuntimeError(f"storescu failed ({result.returncode}): {result.stderr}")
    return result


def wait_until(predicate: Any, timeout: float, message: str, interval: float = 0.2) -> Any:
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s: {message} (last value {last!r})")


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def send_raw_files(files: Sequence[Path], port: int, *, calling: str) -> list[int | None]:
    """C-STORE files as they are, even broken ones, with pynetdicom; the receiver's status per file.

    storescu refuses to send a file it cannot parse; pynetdicom, in chunked mode, takes the UIDs
    from the file meta and sends the rest of the bytes unread, as a faulty modality would.
    """
    from pydicom import dcmread
    from pydicom.uid import ExplicitVRLittleEndian
    from pynetdicom import AE, _config
    from pynetdicom.sop_class import CTImageStorage

    _config.STORE_SEND_CHUNKED_DATASET = True
    ae = AE(ae_title=calling)
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
    statuses: list[int | None] = []
    try:
        for path in files:
            assoc = ae.associate("127.0.0.1", port)
            if not assoc.is_established:
                statuses.append(None)
                continue
            try:
                dcmread(path, stop_before_pixels=True)
                status = assoc.send_c_store(path)
                statuses.append(int(status.Status) if status else None)
            except Exception:  # the file itself cannot be sent: nothing reached the receiver
                statuses.append(None)
            finally:
                assoc.release()
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = False
    return statuses


def worker_pids(gateway: OrthancProcess) -> list[int]:
    """The gateway's worker processes, found by their channels folder (orphans included)."""
    from orthanc_plugin.channels import channels_for

    folder = str(channels_for(gateway.gateway_db).folder).encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"orthanc_plugin.worker" in argv and folder in argv and b"--check" not in argv:
            pids.append(int(entry.name))
    return sorted(pids)


def process_gone(pid: int) -> bool:
    """The process has ended: no longer in /proc, or a zombie awaiting its parent's wait."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True
