"""The real gateway (`orthanc_plugin.app.Gateway`, every capability installed) on a fake Orthanc,
driven by hand: no threads, no sockets, no timers. A test receives instances into the fake,
hands the intake the plugin's notes, runs the intake's passes and the queue's claims one by one,
and reads the gateway's database.

It builds the Gateway as the worker's main does (`build_gateway` from an Orthanc configuration and
a rules file) and drives the same entry points the worker threads call: the note handler, one
`Intake.step` per pass, and `registry.executor(claim.action).run(claim)` per claim.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orthanc_plugin.app import Gateway, build_gateway
from orthanc_plugin.channels import (
    NOTED_METADATA,
    NotedFacts,
    StoredNote,
    decode_note,
    encode_note,
)
from orthanc_plugin.jobs.intake import DESCRIBE_AFTER_NOTES_PAUSE_SECONDS
from orthanc_plugin.jobs.queue import Claim
from orthanc_plugin.jobs.workers import WorkerRole
from orthanc_plugin.worker.main import _note_handler
from tests.support.fake_orthanc import FakeOrthanc

# The worker process that runs the claims, as "<generation>:<pid>" (worker/main.py).
CLAIMANT = "gen-1:4242"
MAX_INTAKE_PASSES = 50
MAX_CLAIMS = 200

Row = dict[str, Any]


class Clock:
    """The intake's monotonic clock, turned by hand."""

    def __init__(self) -> None:
        self.seconds = 1000.0

    def __call__(self) -> float:
        return self.seconds

    def advance(self, seconds: float) -> None:
        self.seconds += seconds + 0.001


@dataclass
class GatewaySite:
    gateway: Gateway
    orthanc: FakeOrthanc
    folder: Path
    clock: Clock = field(default_factory=Clock)

    def __post_init__(self) -> None:
        self.gateway.intake.clock = self.clock

    # -- driving it ----------------------------------------------------------------------------
    def stored_note(self, instance_id: str) -> bytes:
        """The datagram the plugin's stored-instance callback sends (host.py: on_stored)."""
        instance = self.orthanc.instances[instance_id]
        noted = [instance.metadata.get(key, "") for key in NOTED_METADATA]
        return encode_note(StoredNote(instance_id, NotedFacts.of(noted, len(instance.file))))

    def note_stored(self, *instance_ids: str) -> None:
        """The plugin noted these stored instances; the lead worker's inbox hands them over."""
        handle = _note_handler(self.gateway, True)
        for instance_id in instance_ids:
            note = decode_note(self.stored_note(instance_id))
            assert note is not None
            handle(note)

    def take_in(self) -> int:
        """Intake passes until one finds nothing more to do at once, then the notes pause (the
        burst is over, so what waited for it is described) and passes again; returns the passes
        run."""
        passes = self.take_in_while_arriving()
        self.clock.advance(DESCRIBE_AFTER_NOTES_PAUSE_SECONDS)
        return passes + self.take_in_while_arriving()

    def take_in_while_arriving(self) -> int:
        """Intake passes as they run while notes keep coming (no pause in them)."""
        for passes in range(1, MAX_INTAKE_PASSES + 1):
            if not self.gateway.intake.step():
                return passes
        raise AssertionError(f"the intake was still busy after {MAX_INTAKE_PASSES} passes")

    def run_next(self) -> Claim | None:
        """One claim, as a sender thread takes it, run by the executor of its action."""
        claim = self.gateway.queue.claim(self.gateway.registry.max_items)
        if claim is not None:
            self.gateway.registry.executor(claim.action).run(claim)
        return claim

    def run_queue(self) -> list[Claim]:
        """Claims until none is due now (a postponed or backed-off job waits)."""
        claims: list[Claim] = []
        while (claim := self.run_next()) is not None:
            claims.append(claim)
            if len(claims) >= MAX_CLAIMS:
                raise AssertionError(f"the queue still had work after {MAX_CLAIMS} claims")
        return claims

    def time_passes(self) -> None:
        """Every backoff and postponement is over: pending jobs are due now."""
        with self.gateway.db.transaction() as connection:
            connection.execute("UPDATE jobs SET next_attempt_at=0 WHERE state='pending'")

    def restart_workers(self, generation: str = "gen-2") -> int:
        """Orthanc and its workers started again (Gateway.start of the lead): claims of the
        earlier generation go back to the queue, orphaned transfer lines are written."""
        recovered = self.gateway.queue.recover_after_crash(generation)
        self.gateway.recorder.log_orphaned_transfers(generation=generation)
        self.gateway.queue.claimant = f"{generation}:4343"
        return recovered

    # -- reading its database ------------------------------------------------------------------
    def rows(self, sql: str, parameters: tuple[Any, ...] = ()) -> list[Row]:
        return [dict(row) for row in self.gateway.db.query(sql, parameters)]

    def jobs(self, action: str | None = None) -> list[Row]:
        if action is None:
            return self.rows("SELECT * FROM jobs ORDER BY id")
        return self.rows("SELECT * FROM jobs WHERE action=? ORDER BY id", (action,))

    def items(self, job_id: int) -> list[Row]:
        """The queue's items with forwarding's records of them (in flight, commitment)."""
        return self.rows(
            "SELECT i.*, f.in_flight_job, f.in_flight_pos, f.commit_state FROM job_items i "
            "LEFT JOIN forward_items f ON f.job_id = i.job_id AND f.instance_id = i.instance_id "
            "WHERE i.job_id=? ORDER BY i.position", (job_id,))

    def events(self, event: str) -> list[Row]:
        return self.rows("SELECT * FROM audit_events WHERE event=? ORDER BY id", (event,))

    def transfers(self, status: str | None = None) -> list[Row]:
        if status is None:
            return self.rows("SELECT * FROM transfers ORDER BY id")
        return self.rows("SELECT * FROM transfers WHERE status=? ORDER BY id", (status,))

    def errors_logged(self) -> list[str]:
        return [message for level, message in self.orthanc.logged if level == "error"]


def build_site(folder: Path, rules: str, orthanc: FakeOrthanc,
               settings: dict[str, Any] | None = None) -> GatewaySite:
    """A gateway configured as in orthanc.json, its rules in folder/rules.yaml, on `orthanc`.

    The SQL index is off by default (it reads every file when the intake is quiet); `settings`
    are merged into the RtGateway section."""
    (folder / "rules.yaml").write_text(rules, encoding="utf-8")
    section: dict[str, Any] = {
        "RulesFile": "rules.yaml",
        "Retry": {"MaxAttempts": 3, "BaseDelaySeconds": 0, "MaxDelaySeconds": 0},
        "Index": {"Enabled": False},
        **(settings or {}),
    }
    orthanc_config: dict[str, Any] = {
        "SaveJobs": False,
        "StorageDirectory": str(folder / "storage"),
        "StableAge": 1,
        "DicomModalities": {name: [modality.aet, "127.0.0.1", 104]
                            for name, modality in orthanc.modalities.items()},
        "RtGateway": section,
    }
    gateway = build_gateway(orthanc, orthanc_config, folder, WorkerRole(claimant=CLAIMANT))
    # What the lead's start does before its threads run: the intake starts at the end of the
    # log, so only what arrives from now on is the gateway's.
    gateway.publish_rules()
    gateway.intake.initialise_cursor()
    return GatewaySite(gateway, orthanc, folder)
