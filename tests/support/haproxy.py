"""A real HAProxy running the committed DICOM front (deploy/several-nodes/haproxy.cfg) for the
tests: the file as committed, with this test's addresses, ports and check interval."""

from __future__ import annotations

import os
import re
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.orthanc import free_port, wait_until

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "deploy" / "several-nodes" / "haproxy.cfg"
HAPROXY = "/usr/sbin/haproxy"
# The committed 2 s keeps checks cheap on a clinical network; the tests look every 200 ms.
CHECK_INTERVAL = "200ms"


def front_config(folder: Path, front_port: int, nodes: dict[str, int]) -> Path:
    text = CONFIG.read_text(encoding="utf-8")
    text = text.replace("bind :104", f"bind 127.0.0.1:{front_port}")
    text = text.replace("/run/haproxy/rt-gateway.sock", str(folder / "haproxy.sock"))
    text = re.sub(r"inter \S+", f"inter {CHECK_INTERVAL}", text)
    text = re.sub(r"(?m)^    server .*\n", "", text)
    text += "".join(f"    server {name} 127.0.0.1:{port} check\n" for name, port in nodes.items())
    path = folder / "haproxy.cfg"
    path.write_text(text, encoding="utf-8")
    return path


def server_states(folder: Path) -> dict[str, str]:
    """Each node's state as HAProxy sees it now (its stats socket): 'UP', 'DOWN', ..."""
    with socket.socket(socket.AF_UNIX) as stats:
        stats.connect(str(folder / "haproxy.sock"))
        stats.sendall(b"show stat\n")
        answer = b""
        while chunk := stats.recv(65536):
            answer += chunk
    lines = answer.decode().splitlines()
    header = lines[0].lstrip("# ").split(",")
    rows = [dict(zip(header, line.split(","), strict=False)) for line in lines[1:] if line]
    return {row["svname"]: row["status"].split()[0] for row in rows
            if row.get("pxname") == "gateway_nodes" and row["svname"] != "BACKEND"}


@contextmanager
def dicom_front(folder: Path, nodes: dict[str, int]) -> Iterator[int]:
    """HAProxy before these nodes (name -> DICOM port), once every node is healthy; its port."""
    if not os.path.exists(HAPROXY):
        raise AssertionError(f"{HAPROXY} is missing: scripts/setup.sh installs Debian's haproxy")
    front_port = free_port()
    config = front_config(folder, front_port, nodes)
    proxy = subprocess.Popen([HAPROXY, "-db", "-f", str(config)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: (folder / "haproxy.sock").exists(), 30, "HAProxy's stats socket")
        wait_until(lambda: set(server_states(folder).values()) == {"UP"}
                   and len(server_states(folder)) == len(nodes), 60,
                   "every node healthy by the DICOM check")
        yield front_port
    finally:
        proxy.terminate()
        proxy.wait(timeout=30)
