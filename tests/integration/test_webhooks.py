"""Webhooks on real processes (issue 27, item 5): a gateway Orthanc, a counting pynetdicom receiver
(LINAC), a closed port (NOWHERE), storescu as the planning system, and a local HTTP receiver.

- a receiver that answers 500 twice, then 200: every event (plan complete, delivered to LINAC,
  parked for NOWHERE) is accepted exactly once, in order, each request signed with a fresh
  timestamp, and no payload carries the patient's name, ID or the study's or plan's UIDs;
- a receiver that is down while the events happen and while the gateway stops and starts again
  gets every event afterwards, exactly once (the outbox is in the gateway's database).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from orthanc_plugin.webhooks.signing import verify
from tests.integration.conftest import keep_logs, require_orthanc
from tests.integration.helpers import counting_peers
from tests.support.orthanc import OrthancProcess, free_port, storescu, wait_until
from tests.support.peers import CountingPeer
from tests.support.rtset import RtSet, make_rt_set, write_datasets

SECRET = "webhook-test-secret-0123456789abcdef"
RULES = """
rules:
  - name: plans to the linac
    on: stable-study
    match: {calling_aet: TPS}
    actions:
      - forward: LINAC
  - name: plans to nowhere
    on: stable-study
    match: {calling_aet: LOST}
    actions:
      - forward: NOWHERE
"""


@dataclass
class Request:
    headers: dict[str, str]
    body: bytes
    at: float
    answered: int


class Receiver:
    """An HTTP receiver on loopback that answers the scripted statuses first, then 200."""

    def __init__(self, port: int, script: list[int] | None = None) -> None:
        self.port = port
        self.script = list(script or [])
        self.requests: list[Request] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver.lock:
                    status = receiver.script.pop(0) if receiver.script else 200
                    # Header names are case-insensitive (urllib sends "X-rtgw-timestamp").
                    receiver.requests.append(Request({k.lower(): v for k, v in self.headers.items()}, body,
                                                     time.time(), status))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook?token=t0k3n"

    def accepted(self) -> list[dict[str, Any]]:
        with self.lock:
            return [json.loads(r.body) for r in self.requests if r.answered == 200]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def peers() -> Iterator[dict[str, CountingPeer]]:
    yield from counting_peers("LINAC")


@contextmanager
def gateway_with_webhook(folder: Path, linac: CountingPeer, url: str,
                         log_name: str) -> Iterator[OrthancProcess]:
    require_orthanc()
    process = OrthancProcess(
        folder, "RTGATEWAY", plugin=True, rules=RULES,
        modalities={"LINAC": ("LINAC", linac.port), "NOWHERE": ("NOWHERE", free_port())},
        gateway_settings={
            "Retry": {"MaxAttempts": 2, "BaseDelaySeconds": 1, "MaxDelaySeconds": 1},
            "Webhooks": [{"Url": url, "Secret": SECRET,
                          "Events": ["plan-complete", "delivered", "parked"]}]})
    process.start()
    try:
        yield process
    finally:
        process.stop()
        keep_logs(process, log_name)


def send(gateway: OrthancProcess, plan: RtSet, calling: str, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    storescu(write_datasets(plan.all(), folder), gateway.dicom_port, calling=calling,
             called="RTGATEWAY")


def outbox(gateway: OrthancProcess) -> list[tuple[int, str]]:
    """The events recorded for the receiver, from the gateway's database: the truth to compare."""
    with sqlite3.connect(gateway.gateway_db) as connection:
        return [(row[0], row[1]) for row in connection.execute(
            "SELECT id, event FROM webhook_outbox ORDER BY id")]


def recorded(gateway: OrthancProcess, kinds: set[str], instances: int) -> bool:
    """Every kind of event recorded, and transfers to LINAC for `instances` instances."""
    with sqlite3.connect(gateway.gateway_db) as connection:
        rows = connection.execute("SELECT event, instances FROM webhook_outbox").fetchall()
    return ({event for event, _ in rows} >= kinds
            and sum(n for event, n in rows if event == "delivered") == instances)


def webhook_state(gateway: OrthancProcess) -> dict[str, Any]:
    (state,) = gateway.json("/rt-gateway/webhooks")["webhooks"]
    return dict(state)


def check_every_request(receiver: Receiver, phi: list[str]) -> None:
    """Signed with the shared secret, a timestamp fresh when it arrived, and no patient data."""
    assert receiver.requests
    for request in receiver.requests:
        assert verify(SECRET.encode(), request.headers, request.body, request.at, window=5) == "", (
            request.headers)
        text = request.body.decode()
        for value in phi:
            assert value not in text, f"{value!r} in {text}"
        assert request.headers["x-rtgw-event-id"] == json.loads(text)["id"]


def phi_of(plan: RtSet) -> list[str]:
    return [plan.patient_id, *plan.patient_name.split("^"), plan.study_uid,
            str(plan.rtplan.SOPInstanceUID)]


def test_a_failing_receiver_gets_every_event_once_after_retries_signed_and_without_phi(
        workdir: Path, peers: dict[str, CountingPeer], tmp_path: Path) -> None:
    receiver = Receiver(free_port(), script=[500, 500])
    try:
        with gateway_with_webhook(workdir / "retries", peers["LINAC"], receiver.url,
                                  "webhooks-retries-gateway") as gateway:
            sent = make_rt_set("HOOK-1", "Secretive^Sally", n_slices=3)
            lost = make_rt_set("HOOK-2", "Hidden^Hugo", n_slices=1, with_dose=False)
            send(gateway, sent, "TPS", tmp_path / "sent")
            send(gateway, lost, "LOST", tmp_path / "lost")
            wait_until(lambda: peers["LINAC"].distinct() == len(sent.all()), 60, "LINAC receives")
            wait_until(lambda: recorded(gateway, {"plan-complete", "delivered", "parked"},
                                        len(sent.all())), 60, "each kind of event recorded")
            events = outbox(gateway)
            wait_until(lambda: len(receiver.accepted()) >= len(events), 60,
                       "every event accepted after the retries")
            time.sleep(2)   # nothing more arrives (no duplicate after the acceptance)
            state = webhook_state(gateway)
            metrics = gateway.json("/rt-gateway/internal/metrics")
            assert outbox(gateway) == events
    finally:
        receiver.close()

    accepted = receiver.accepted()
    ids = [payload["id"] for payload in accepted]
    assert len(ids) == len(set(ids)) == len(events)
    # In order of the event id, and the first one was refused twice before it was accepted.
    assert [int(i.rsplit("-", 1)[1]) for i in ids] == [number for number, _ in events]
    first = [r for r in receiver.requests if json.loads(r.body)["id"] == ids[0]]
    assert [r.answered for r in first] == [500, 500, 200]
    assert first[1].at - first[0].at >= 1.5 and first[2].at - first[1].at >= 3.5   # 2 s, 4 s
    assert first[2].headers["x-rtgw-timestamp"] != first[0].headers["x-rtgw-timestamp"]
    check_every_request(receiver, phi_of(sent) + phi_of(lost))

    kinds = {(p["event"], p.get("target")) for p in accepted}
    assert {("plan-complete", None), ("delivered", "LINAC"), ("parked", "NOWHERE")} <= kinds
    delivered = [p for p in accepted if p["event"] == "delivered"]
    assert sum(p["instances"] for p in delivered) == len(sent.all())
    assert all(p["rule"] == "plans to the linac" and "orthanc_id" in p["study"] for p in delivered)
    assert state["pending"] == 0 and state["delivered"] == len(events)
    assert state["url"] == f"http://127.0.0.1:{receiver.port}/hook"      # no token shown
    assert metrics["rtgw_webhook_deliveries_pending"] == 0


def test_events_wait_for_a_receiver_that_is_down_across_a_gateway_restart(
        workdir: Path, peers: dict[str, CountingPeer], tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/hook"
    with gateway_with_webhook(workdir / "durable", peers["LINAC"], url,
                              "webhooks-durable-gateway") as gateway:
        before = peers["LINAC"].distinct()
        plan = make_rt_set("HOOK-3", "Durable^Dora", n_slices=2)
        send(gateway, plan, "TPS", tmp_path / "plan")
        wait_until(lambda: peers["LINAC"].distinct() == before + len(plan.all()), 60,
                   "LINAC receives")
        wait_until(lambda: recorded(gateway, {"plan-complete", "delivered"}, len(plan.all()))
                   and webhook_state(gateway)["failing"] >= 1, 60,
                   "the events recorded, the receiver tried and found down")
        state = webhook_state(gateway)
        assert state["delivered"] == 0 and "not reached" in state["next"]["last_error"]
        gateway.stop()
        events = outbox(gateway)
        assert len(events) == state["pending"]

        receiver = Receiver(port)      # up only while the gateway is stopped and after
        try:
            gateway.start()
            wait_until(lambda: len(receiver.accepted()) >= len(events), 90,
                       "every event delivered after the restart")
            time.sleep(2)
            final = webhook_state(gateway)
        finally:
            receiver.close()
    ids = [payload["id"] for payload in receiver.accepted()]
    assert len(ids) == len(set(ids)) == len(events)
    assert [int(i.rsplit("-", 1)[1]) for i in ids] == [number for number, _ in events]
    check_every_request(receiver, phi_of(plan))
    assert final["pending"] == 0 and final["delivered"] == len(events)
