"""Webhooks' pure parts (signature, payload, settings, backoff) and the outbox on a real SQLite file:
the triggers that fill it from the rows the gateway already writes, and a sender's retries."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from dataclasses import asdict
from dataclasses import fields as dataclass_fields
from pathlib import Path
from typing import Any

import pytest

from orthanc_plugin import capabilities
from orthanc_plugin.audit.metrics import Metrics
from orthanc_plugin.audit.recorder import AuditRecorder
from orthanc_plugin.audit.tables import SCHEMA as AUDIT_SCHEMA
from orthanc_plugin.audit.translog import TransactionLog
from orthanc_plugin.config import ConfigError, RetryPolicySettings
from orthanc_plugin.db import Database
from orthanc_plugin.jobs.own_output import SCHEMA as OWN_OUTPUT_SCHEMA
from orthanc_plugin.jobs.queue import JobQueue, JobSpec
from orthanc_plugin.jobs.tables import SCHEMA as JOBS_SCHEMA
from orthanc_plugin.labels import orthanc_study_id
from orthanc_plugin.plans import search
from orthanc_plugin.webhooks.model import (
    LONGEST_DELAY_SECONDS,
    Endpoint,
    OutboxEvent,
    backoff_seconds,
    read_settings,
    redacted,
)
from orthanc_plugin.webhooks.payload import body_of, build_payload
from orthanc_plugin.webhooks.sender import EndpointSender
from orthanc_plugin.webhooks.signing import signature, signed_headers, verify
from orthanc_plugin.webhooks.store import WebhookStore
from tests.conftest import MakeDatabase

SECRET = b"a-shared-secret-of-32-characters"
PATIENT_ID, STUDY_UID = "PAT-0042", "1.2.826.0.1.3680043.8.498.1"
ORTHANC_ID = "0123abcd-0123abcd-0123abcd-0123abcd-0123abcd"


# -- signature --------------------------------------------------------------------------------------
def test_the_signature_is_hmac_sha256_of_timestamp_dot_body() -> None:
    body = b'{"event":"delivered"}'
    expected = hmac.new(SECRET, b"1700000000." + body, hashlib.sha256).hexdigest()
    assert signature(SECRET, 1700000000, body) == f"sha256={expected}"
    headers = signed_headers(SECRET, 1700000000, body, "rtgw-x-1", "delivered")
    assert headers["X-RTGW-Timestamp"] == "1700000000"
    assert headers["X-RTGW-Event-Id"] == "rtgw-x-1"
    assert headers["X-RTGW-Signature"] == f"sha256={expected}"


def test_a_receiver_rejects_a_stale_timestamp_a_changed_body_and_another_secret() -> None:
    body = b'{"event":"parked"}'
    now = 1700000000
    headers = signed_headers(SECRET, now, body, "id", "parked")
    assert verify(SECRET, headers, body, now + 10) == ""
    assert verify(SECRET, {k.lower(): v for k, v in headers.items()}, body, now) == ""
    assert verify(SECRET, headers, body, now + 301) == "timestamp outside the replay window"
    assert verify(SECRET, headers, body + b" ", now) == "bad signature"
    assert verify(b"another-secret-of-some-length", headers, body, now) == "bad signature"
    # The timestamp is signed: moving it forward to pass the window breaks the signature.
    replayed = {**headers, "X-RTGW-Timestamp": str(now + 1000)}
    assert verify(SECRET, replayed, body, now + 1000) == "bad signature"
    assert verify(SECRET, {}, body, now) == "no timestamp"


# -- payload ----------------------------------------------------------------------------------------
def outbox_row(**values: Any) -> OutboxEvent:
    row: dict[str, Any] = {
        "id": 7, "event": "delivered", "at": "2024-05-01T10:00:00.000+00:00", "status": "success",
        "rule": "to linac", "target": "LINAC", "job_id": 3, "action": "forward",
        "resource_id": ORTHANC_ID, "patient_id": PATIENT_ID, "study_uid": STUDY_UID,
        "detail": "Doe^John asked", "instances": 12, "plan_uid": None, "plan_label": None,
    }
    row.update(values)
    return OutboxEvent(**row)


def test_without_patient_data_the_payload_names_no_patient_and_no_uid() -> None:
    payload = build_payload(outbox_row(), "abcd1234", include_patient_data=False)
    body = body_of(payload).decode()
    for phi in (PATIENT_ID, STUDY_UID, "Doe^John"):
        assert phi not in body
    assert payload == {
        "version": 1, "event": "delivered", "id": "rtgw-abcd1234-7",
        "at": "2024-05-01T10:00:00.000+00:00", "status": "success", "rule": "to linac",
        "target": "LINAC", "action": "forward", "job": 3, "instances": 12,
        "resource": ORTHANC_ID, "study": {"orthanc_id": orthanc_study_id(PATIENT_ID, STUDY_UID)}}


def test_a_plan_uid_resource_and_label_travel_only_with_patient_data() -> None:
    row = outbox_row(event="plan-complete", resource_id="1.2.3.4.5", plan_uid="1.2.3.4.5",
                     plan_label="PROSTATE", detail=None, rule=None, target=None, job_id=None)
    hidden = build_payload(row, "o", include_patient_data=False)
    assert "resource" not in hidden and "plan_label" not in hidden
    assert "1.2.3.4.5" not in body_of(hidden).decode()
    shown = build_payload(row, "o", include_patient_data=True)
    assert shown["resource"] == "1.2.3.4.5" and shown["plan_label"] == "PROSTATE"
    assert shown["patient"] == {"patient_id": PATIENT_ID}
    assert shown["study"]["study_uid"] == STUDY_UID


def test_the_approval_and_harvest_numbers_are_passed_without_the_detail() -> None:
    held = build_payload(outbox_row(event="held-for-approval", detail="approval 12: 2 job(s)"),
                         "o", include_patient_data=False)
    assert held["approval"] == 12 and "detail" not in held
    done = build_payload(outbox_row(event="harvest-done", detail="harvest 3: series {}"), "o", False)
    assert done["harvest"] == 3


def test_the_body_is_the_same_bytes_every_time() -> None:
    row = outbox_row()
    assert body_of(build_payload(row, "o", False)) == body_of(build_payload(outbox_row(), "o", False))
    assert json.loads(body_of(build_payload(row, "o", False)))["id"] == "rtgw-o-7"


# -- settings ---------------------------------------------------------------------------------------
def settings(tmp_path: Path, **entry: Any) -> list[Endpoint]:
    base: dict[str, Any] = {"Url": "https://hooks.example.org/rtgw?token=abc",
                            "Secret": SECRET.decode(), "Events": ["delivered"]}
    base.update(entry)
    return read_settings({"Webhooks": [{k: v for k, v in base.items() if v is not None}]}, tmp_path)


def test_settings_defaults_and_no_section(tmp_path: Path) -> None:
    assert read_settings({}, tmp_path) == []
    (endpoint,) = settings(tmp_path)
    assert endpoint.secret == SECRET and endpoint.events == {"delivered"}
    assert endpoint.include_patient_data is False and endpoint.timeout_seconds == 10.0
    assert endpoint.targets == frozenset()
    assert redacted(endpoint.url) == "https://hooks.example.org/rtgw"
    (every,) = settings(tmp_path, Events=["*"], Targets=["LINAC"])
    assert len(every.events) == 6
    assert ("delivered", "LINAC") in every.subscriptions()
    assert ("quarantined", "") in every.subscriptions()


def test_a_secret_file_relative_to_the_configuration_is_read_and_stripped(tmp_path: Path) -> None:
    (tmp_path / "hook.secret").write_bytes(SECRET + b"\n")
    (endpoint,) = settings(tmp_path, Secret=None, SecretFile="hook.secret")
    assert endpoint.secret == SECRET


@pytest.mark.parametrize(("entry", "message"), [
    ({"Events": ["delivered", "sent"]}, "Webhooks[0].Events: unknown event 'sent'"),
    ({"Events": []}, "Webhooks[0].Events: expected a non-empty list"),
    ({"Url": "http://hooks.example.org/x"}, "http:// is allowed only to this machine"),
    ({"Url": "ftp://hooks.example.org/x"}, "expected an https:// URL"),
    ({"Url": "https://user:pw@hooks.example.org/x"}, "no user or password"),
    ({"Secret": None}, "set exactly one of Secret or SecretFile"),
    ({"SecretFile": "x"}, "set exactly one of Secret or SecretFile"),
    ({"Secret": "short"}, "at least 16 characters"),
    ({"Secret": None, "SecretFile": "missing.secret"}, "SecretFile: cannot read"),
    ({"IncludePatientData": "no"}, "IncludePatientData: expected true or false"),
    ({"IncludePatientdata": True}, "unknown setting 'IncludePatientdata'"),
    ({"TimeoutSeconds": 0}, "TimeoutSeconds: expected seconds"),
    ({"TimeoutSeconds": 1000}, "TimeoutSeconds: expected seconds"),
    ({"Targets": []}, "Targets: expected a non-empty list"),
])
def test_bad_settings_are_refused_with_the_setting_named(tmp_path: Path, entry: dict[str, Any],
                                                           message: str) -> None:
    with pytest.raises(ConfigError, match=r"RtGateway\.Webhooks") as refused:
        settings(tmp_path, **entry)
    assert message in str(refused.value)


def test_plain_http_is_allowed_to_loopback_only_and_a_url_once(tmp_path: Path) -> None:
    for url in ("http://127.0.0.1:8080/h", "http://localhost/h", "http://[::1]:9/h"):
        assert settings(tmp_path, Url=url)[0].url == url
    entry = {"Url": "https://a.example.org/h", "Secret": SECRET.decode(), "Events": ["parked"]}
    with pytest.raises(ConfigError, match="listed twice"):
        read_settings({"Webhooks": [entry, entry]}, tmp_path)
    with pytest.raises(ConfigError, match="expected a list"):
        read_settings({"Webhooks": entry}, tmp_path)


# -- backoff ----------------------------------------------------------------------------------------
def test_backoff_starts_at_two_seconds_doubles_and_stops_at_five_minutes() -> None:
    assert [backoff_seconds(n) for n in range(0, 6)] == [0.0, 2.0, 4.0, 8.0, 16.0, 32.0]
    assert backoff_seconds(9) == 300.0 == LONGEST_DELAY_SECONDS
    assert backoff_seconds(10_000) == LONGEST_DELAY_SECONDS


# -- the outbox on the gateway's real schema --------------------------------------------------------
class Env:
    """The gateway's schema on one engine (conftest.make_database: SQLite, then PostgreSQL)."""

    def __init__(self, tmp_path: Path, make_database: MakeDatabase) -> None:
        self.db = make_database([AUDIT_SCHEMA, JOBS_SCHEMA, OWN_OUTPUT_SCHEMA,
                                 *capabilities.extra_schemas()])
        if isinstance(self.db, Database):
            self.db.add_function(search.SQL_FUNCTION, 1, search.fold)
        self.recorder = AuditRecorder(self.db, TransactionLog(tmp_path / "logs"),
                                      Metrics(lambda name, value: None))
        self.queue = JobQueue(self.db, RetryPolicySettings(max_attempts=1, base_delay_seconds=0,
                                                           max_delay_seconds=0))
        self.store = WebhookStore(self.db)
        self.instances = 0

    def job(self, target: str = "LINAC") -> int:
        spec = JobSpec(rule="r", action="forward", trigger="stable-study", level="study",
                       resource_id=ORTHANC_ID, target=target, patient_id=PATIENT_ID,
                       study_uid=STUDY_UID)
        with self.db.transaction() as connection:
            self.instances += 1
            job_id, _ = self.queue.enqueue(connection, spec, [f"i-{self.instances}"])
        assert job_id is not None
        return job_id

    def transfer(self, target: str, status: str = "success", instances: int = 3) -> None:
        job_id = self.job(target)
        job = self.queue.job(job_id)
        assert job is not None
        with self.db.transaction() as connection:
            self.recorder.insert_transfer(connection, job=job, attempt=1, status=status,
                                          instances=instances, bytes_sent=10,
                                          started_at="2024-01-01", error=None, orthanc_job=None,
                                          writer="test")

    def outbox(self) -> list[tuple[str, str, str]]:
        return [(row["event"], row["url"], row["target"] or "") for row in self.db.query(
            "SELECT o.event, o.target, d.url FROM webhook_outbox o JOIN webhook_deliveries d "
            "ON d.outbox_id = o.id ORDER BY o.id, d.url")]


A, B = "https://a.example.org/h", "https://b.example.org/h"


def test_only_subscribed_events_fill_the_outbox_one_delivery_per_url(tmp_path: Path,
                                                                     make_database: MakeDatabase) -> None:
    env = Env(tmp_path, make_database)
    env.store.subscribe([
        Endpoint(A, SECRET, frozenset({"delivered", "quarantined", "parked"}), frozenset({"LINAC"})),
        Endpoint(B, SECRET, frozenset({"delivered", "held-for-approval"})),
    ])
    env.transfer("LINAC")
    env.transfer("ARCHIVE")                       # A wants LINAC only
    env.transfer("LINAC", status="failed")        # not delivered
    env.transfer("LINAC", instances=0)            # nothing reached it
    env.recorder.event("held-for-approval", status="held", detail="approval 1: 1 job(s)")
    env.recorder.event("harvest-done", status="done", detail="harvest 1")   # nobody subscribed
    with env.db.transaction() as connection:
        env.recorder.quarantine(connection, ORTHANC_ID, "unreadable")
    parked = env.job("LINAC")
    env.queue.park(parked, "refused by the receiver", "refused")
    assert env.outbox() == [
        ("delivered", A, "LINAC"), ("delivered", B, "LINAC"), ("delivered", B, "ARCHIVE"),
        ("held-for-approval", B, ""), ("quarantined", A, ""), ("parked", A, "LINAC")]
    # Parked again after a retry by hand: a new event; an update that keeps it parked: none.
    env.db.execute("UPDATE jobs SET last_error='x' WHERE id=?", (parked,))
    assert len(env.outbox()) == 6


def test_a_plan_complete_event_fires_once_when_the_bundle_first_completes(
        tmp_path: Path, make_database: MakeDatabase) -> None:
    env = Env(tmp_path, make_database)
    env.store.subscribe([Endpoint(A, SECRET, frozenset({"plan-complete"}))])

    def upsert(complete: bool) -> None:
        with env.db.transaction() as connection:
            connection.execute(
                "INSERT INTO plan_bundles(plan_uid, plan_instance_id, patient_id, study_uid,"
                " plan_label, complete, members_json, first_seen_epoch, completed_epoch,"
                " updated_at) VALUES('1.2.3', ?, ?, ?, 'PLAN', ?, '[{}, {}]', 1, ?, 'now')"
                " ON CONFLICT(plan_uid) DO UPDATE SET complete=excluded.complete,"
                " completed_epoch=COALESCE(plan_bundles.completed_epoch, excluded.completed_epoch)",
                (ORTHANC_ID, PATIENT_ID, STUDY_UID, int(complete), 5.0 if complete else None))

    upsert(False)
    assert env.outbox() == []
    upsert(True)
    upsert(True)
    assert env.outbox() == [("plan-complete", A, "")]
    row = env.db.query("SELECT * FROM webhook_outbox")[0]
    assert (row["resource_id"], row["plan_uid"], row["instances"]) == (ORTHANC_ID, "1.2.3", None)


def test_the_due_event_carries_every_outbox_column(tmp_path: Path,
                                                   make_database: MakeDatabase) -> None:
    """Contract: next_due's record has each column of webhook_outbox, as written."""
    env = Env(tmp_path, make_database)
    env.store.subscribe([Endpoint(A, SECRET, frozenset({"delivered"}))])
    env.transfer("LINAC", instances=4)
    written = dict(env.db.query("SELECT * FROM webhook_outbox")[0])
    assert [field.name for field in dataclass_fields(OutboxEvent)] == list(written)
    due = env.store.next_due(A, now=1e12)
    assert due is not None and asdict(due) == written
    assert (due.event, due.target, due.instances, due.patient_id) == ("delivered", "LINAC", 4,
                                                                       PATIENT_ID)


def test_without_subscriptions_nothing_is_written(tmp_path: Path,
                                                  make_database: MakeDatabase) -> None:
    env = Env(tmp_path, make_database)
    env.store.subscribe([Endpoint(A, SECRET, frozenset({"delivered"}))])
    env.store.subscribe([])
    env.transfer("LINAC")
    assert env.db.query("SELECT COUNT(*) AS n FROM webhook_outbox")[0]["n"] == 0


class FlakyReceiver:
    """Answers with the given errors first, then accepts; checks every request like a receiver."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        self.received: list[dict[str, Any]] = []
        self.calls = 0

    def __call__(self, url: str, body: bytes, headers: Mapping[str, str], timeout: float) -> str:
        self.calls += 1
        assert verify(SECRET, headers, body, time.time()) == ""
        if self.errors:
            return self.errors.pop(0)
        payload = json.loads(body)
        assert headers["X-RTGW-Event-Id"] == payload["id"]
        self.received.append(payload)
        return ""


def test_a_sender_retries_with_backoff_and_keeps_the_order(tmp_path: Path,
                                                           make_database: MakeDatabase) -> None:
    env = Env(tmp_path, make_database)
    endpoint = Endpoint(A, SECRET, frozenset({"delivered"}))
    env.store.subscribe([endpoint])
    env.transfer("LINAC")
    env.transfer("ARCHIVE")
    receiver = FlakyReceiver(["HTTP 500", "not reached: refused"])
    logged: list[str] = []
    sender = EndpointSender(endpoint, env.store, "orig", receiver, logged.append)
    now = time.time()
    assert sender.attempt(now) is False                  # 500: first event waits 2 s
    assert sender.attempt(now + 1) is False and receiver.calls == 1   # not due; the 2nd waits too
    assert sender.attempt(now + 2.5) is False            # refused: then 4 s
    head = env.store.summary()[A]["next"]
    assert head["attempts"] == 2 and head["last_error"] == "not reached: refused"
    assert sender.attempt(now + 5) is False and receiver.calls == 2
    assert env.store.pending_counts() == (2, 1)
    assert sender.attempt(now + 7) is True
    assert sender.attempt(now + 7) is True
    assert sender.attempt(now + 7) is False
    assert [p["target"] for p in receiver.received] == ["LINAC", "ARCHIVE"]
    assert [p["id"] for p in receiver.received] == ["rtgw-orig-1", "rtgw-orig-2"]
    summary = env.store.summary()[A]
    assert (summary["delivered"], summary["pending"], summary["failing"]) == (2, 0, 0)
    assert len(logged) == 2 and "retrying" in logged[0] and "again" in logged[1]
    # Delivered long ago: pruned with its event.
    assert env.store.prune(0, now=time.time() + 10) == 2
    assert env.db.query("SELECT COUNT(*) AS n FROM webhook_outbox")[0]["n"] == 0
