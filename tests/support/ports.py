"""Ports for the tests' servers (Orthanc, PostgreSQL, HAProxy, peers), one per call."""

from __future__ import annotations

import random
import socket
from pathlib import Path

EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
# Below the kernel's ephemeral range and above the ports services are commonly given.
LOWEST = 10000
# Ports given by this process: a probe bind succeeds again until their server binds them, so
# each is handed out once.
_given: set[int] = set()


def ephemeral_low(path: Path = EPHEMERAL_RANGE_FILE) -> int:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def _binds(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A port nothing listens on, chosen below the ephemeral range.

    Why not bind(0): that gives a port from the ephemeral range, and any outgoing connection
    (storescu, an HTTP client, Orthanc's own SCU) can take it as its source port before the
    server it was meant for binds it: an Orthanc then fails at start with "Address already in
    use" (seen in a benchmark that starts ten Orthancs)."""
    high = ephemeral_low()
    if high - LOWEST > 1000:
        for _ in range(500):
            port = random.randrange(LOWEST, high)
            if port not in _given and _binds(port):
                _given.add(port)
                return port
    with socket.socket() as probe:  # a machine with no room below its ephemeral range
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    _given.add(port)
    return port
