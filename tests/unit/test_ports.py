"""The tests' port picker: never a port the kernel may give an outgoing connection meanwhile."""

from __future__ import annotations

import socket
from pathlib import Path

from tests.support.ports import ephemeral_low, free_port


def test_ports_are_distinct_and_below_the_ephemeral_range() -> None:
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    assert all(1024 < port < ephemeral_low() for port in ports)


def test_a_given_port_can_be_listened_on() -> None:
    port = free_port()
    with socket.socket() as server:
        server.bind(("127.0.0.1", port))
        server.listen()
        assert server.getsockname()[1] == port


def test_the_ephemeral_range_is_read_from_the_kernel_and_defaults_to_linuxs(tmp_path: Path) -> None:
    kernel = tmp_path / "ip_local_port_range"
    kernel.write_text("40000\t60999\n")
    assert ephemeral_low(kernel) == 40000
    assert ephemeral_low(tmp_path / "absent") == 32768
