"""The DICOM front of several nodes (deploy/several-nodes/haproxy.cfg) under a real HAProxy, in
front of two real Orthanc nodes: modalities keep one address while a node hangs, dies and comes
back. The file is the committed one; only its addresses, ports and check interval are this test's.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.haproxy import dicom_front, server_states
from tests.support.orthanc import OrthancProcess, storescu, wait_until
from tests.support.rtset import make_rt_set, write_datasets


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[tuple[Path, int, dict[str, OrthancProcess]]]:
    folder = tmp_path_factory.mktemp("front")
    nodes = {name: OrthancProcess(folder / name, "RTGW") for name in ("node-a", "node-b")}
    try:
        for node in nodes.values():
            node.start()
        with dicom_front(folder, {n: p.dicom_port for n, p in nodes.items()}) as front_port:
            yield folder, front_port, nodes
    finally:
        for node in nodes.values():
            if node.process is not None and node.process.poll() is None:
                os.kill(node.process.pid, signal.SIGCONT)
            node.stop()


def send_through(front_port: int, folder: Path, name: str, count: int) -> set[str]:
    """`count` CT slices of a new study sent by one storescu association through the front."""
    ct = make_rt_set(patient_id=name, n_slices=count).ct
    storescu(write_datasets(ct, folder / name), front_port, calling="CT_SCANNER")
    return {str(ds.SOPInstanceUID) for ds in ct}


def test_a_hung_then_a_dead_node_is_taken_out_and_modalities_keep_sending(
        front: tuple[Path, int, dict[str, OrthancProcess]]) -> None:
    folder, front_port, nodes = front
    a, b = nodes["node-a"], nodes["node-b"]
    # Both healthy: each association through the front reaches a node, whole.
    sent = send_through(front_port, folder, "both-1", 5) | send_through(front_port, folder,
                                                                        "both-2", 5)
    assert a.instance_count() + b.instance_count() == len(sent) == 10

    # node-b hangs (SIGSTOP): its port still accepts TCP (the kernel's backlog), but it answers
    # no DICOM. The DICOM check takes it out; a TCP check would not.
    assert b.process is not None
    os.kill(b.process.pid, signal.SIGSTOP)
    wait_until(lambda: server_states(folder).get("node-b") == "DOWN", 30,
               "the hung node taken out by the DICOM check")
    before = a.instance_count()
    for round_ in range(3):
        send_through(front_port, folder, f"hung-{round_}", 4)
    assert a.instance_count() == before + 12

    # It comes back: healthy again after two good checks.
    os.kill(b.process.pid, signal.SIGCONT)
    wait_until(lambda: server_states(folder).get("node-b") == "UP", 30, "the node back in")

    # node-a dies (kill -9): everything goes to node-b, at the same address.
    a.kill9()
    wait_until(lambda: server_states(folder).get("node-a") == "DOWN", 30,
               "the dead node taken out")
    before_b = b.instance_count()
    send_through(front_port, folder, "after-kill", 6)
    assert b.instance_count() == before_b + 6
