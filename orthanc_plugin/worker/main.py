"""`python -m orthanc_plugin.worker`: one worker process of the gateway.

Worker 0 is the lead: the intake from Orthanc's `/changes`, the REST routes (behind the plugin's
proxy) and the capabilities' own loops (import folder, harvest, SQL index, plan tracking). Workers
1..Workers run the queued jobs (forward, anonymize, export, overlay, ...), so a job that ends its
process (memory, time limit, a crash) never takes the routes or the intake with it. All of them
reach Orthanc over HTTP and share the gateway's SQLite database, whose transactions make a claim
belong to one worker.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from orthanc_plugin.app import RULES_TEXT_KEY, Gateway, build_gateway
from orthanc_plugin.channels import (
    Channels,
    DeletedNote,
    Note,
    StableStudyNote,
    StoredNote,
    WakeNote,
)
from orthanc_plugin.config import ConfigError, GatewayConfig, parse_config
from orthanc_plugin.db import DatabaseUnwritable, database_errors
from orthanc_plugin.jobs.intake import noted_facts
from orthanc_plugin.jobs.workers import WorkerRole
from orthanc_plugin.reception import (
    ARRIVAL_FILE,
    ArrivalBeacon,
    ReceptionGate,
    ReceptionSettings,
    read_reception_settings,
    summary,
)
from orthanc_plugin.rules import RulesError
from orthanc_plugin.state_database import open_state_database
from orthanc_plugin.worker.api_server import ApiServer
from orthanc_plugin.worker.guard import (
    EXIT_CONFIG,
    JobClock,
    die_with_parent,
    limit_memory,
    lower_priority,
)
from orthanc_plugin.worker.http_host import HttpHost
from orthanc_plugin.worker.note_inbox import NoteInbox, WakeSender

# Orthanc's REST API stops answering once Orthanc signals its stop (measured on 1.10: requests
# hang until the HTTP server closes), so waiting longer for in-flight claims gains nothing; they go
# back to the queue and their in-flight instances are verified at the destination before a resend.
STOP_BUDGET_SECONDS = 1.5


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="orthanc_plugin.worker")
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--generation", default="")
    parser.add_argument("--parent", type=int, default=0)
    parser.add_argument("--channels", required=True)
    parser.add_argument("--crashed-pid", type=int, default=0)
    parser.add_argument("--crash-reason", default="")
    parser.add_argument("--check", action="store_true",
                        help="build the gateway from the configuration on stdin, then exit")
    return parser.parse_args(argv)


def _read_envelope() -> tuple[dict[str, Any], Path]:
    envelope = json.loads(sys.stdin.buffer.readline() or b"{}")
    return envelope.get("orthanc") or {}, Path(envelope.get("config_dir") or ".")


def _host_for(config: GatewayConfig, label: str, gate: ReceptionGate) -> HttpHost:
    settings = config.worker
    auth = (settings.http_user, settings.http_password) if settings.http_user else None
    return HttpHost(settings.orthanc_url, auth, label, gate)


def check(orthanc_config: dict[str, Any], config_dir: Path) -> int:
    try:
        config = parse_config(orthanc_config, config_dir)
        read_reception_settings(config.section)
        # A disabled gate: the check holds nothing.
        build_gateway(_host_for(config, "check", ReceptionGate()), orthanc_config, config_dir)
    except (RulesError, ConfigError) as error:
        sys.stderr.write(f"RtGateway: not starting: {error}\n")
        return EXIT_CONFIG
    return 0


def _build(orthanc_config: dict[str, Any], config_dir: Path, host: HttpHost,
           role: WorkerRole) -> Gateway:
    try:
        return build_gateway(host, orthanc_config, config_dir, role)
    except RulesError as error:
        # The file changed since Orthanc started and is broken now: the rules in force stay.
        config = parse_config(orthanc_config, config_dir)
        from orthanc_plugin.capabilities import load_rules_text

        text = open_state_database(config, []).get_meta(RULES_TEXT_KEY)
        if not text:
            raise
        host.log_error(f"rules file refused ({error}); the rules in force stay")
        return Gateway(host, config, load_rules_text(text, None), role)


THREAD_STACK_BYTES = 4 << 20


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    orthanc_config, config_dir = _read_envelope()
    if args.check:
        return check(orthanc_config, config_dir)
    if args.parent:
        die_with_parent(args.parent)
    channels = Channels(Path(args.channels))
    label = f"worker {args.index}"
    try:
        config = parse_config(orthanc_config, config_dir)
        reception = read_reception_settings(config.section)
    except ConfigError as error:
        sys.stderr.write(f"RtGateway {label}: {error}\n")
        return EXIT_CONFIG
    lower_priority(config.worker.nice)
    # Threads reserve their stack as address space (8 MB by default): the routes' request
    # threads need far less, and the memory limit counts what is reserved.
    threading.stack_size(THREAD_STACK_BYTES)
    limit_memory(config.worker.memory_limit_mb)
    channels.pid_file(args.index).write_text(str(os.getpid()))
    # Before the first REST call: background threads of this process wait while instances arrive.
    # The one gate of this process, handed to the host, the pool and the capabilities (role).
    gate = ReceptionGate.for_worker(reception, channels.folder, args.index)
    host = _host_for(config, label, gate)
    lead = args.index == 0
    clock = JobClock(config.worker.job_time_limit_seconds, host.log_error)
    others = [channels.worker_socket(i) for i in range(1, config.workers + 1)]
    role = WorkerRole(
        claimant=f"{args.generation}:{os.getpid()}",
        # The lead runs the intake and the capabilities' loops; the others run the jobs.
        job_threads=0 if lead else config.worker.threads_per_worker,
        watch=clock,
        worker_pids=lambda: {i: _pid_of(channels, i) for i in range(config.workers + 1)},
        wake_other_workers=WakeSender(others).wake if lead else (lambda: None),
        report_trouble=host.log_error,
        gate=gate,
    )
    gateway = _build(orthanc_config, config_dir, host, role)
    clock.start_watchdog()
    if args.crashed_pid:
        _reclaim(gateway, f"{args.generation}:{args.crashed_pid}", args.crash_reason)

    beacon = ArrivalBeacon(channels.folder / ARRIVAL_FILE) if lead and reception.enabled else None
    inbox = NoteInbox(channels.worker_socket(args.index), _note_handler(gateway, lead, beacon),
                      host.log_error)
    inbox.start()
    api: ApiServer | None = None
    if lead:
        _show_reception(gateway, channels, reception)
        gateway.start(lead=True, generation=args.generation)
        api = ApiServer(channels.api_socket, gateway.router, host.log_error,
                        config.worker.max_body_bytes)
        api.start()
    else:
        gateway.start(lead=False, generation=args.generation)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    while not stop.wait(1.0):
        pass
    # A clean stop: no new claims; claims in flight end at their next association boundary;
    # what is still running at the budget's end goes back to the queue unspent.
    gateway.stopping.set()
    gateway.db.stopping.set()
    gateway.pool.stop(STOP_BUDGET_SECONDS)
    unwritable: tuple[type[BaseException], ...] = (DatabaseUnwritable, *database_errors())
    try:
        released = gateway.queue.release_claims()
    except unwritable as error:
        host.log_error(f"stopping: claims not released ({error}); the next start takes them back")
        released = 0
    host.log_warning(f"stopped on request; {released} running job(s) back to the queue")
    if lead:
        gateway.stop()
        if api is not None:
            api.stop()
    os._exit(0)


def _pid_of(channels: Channels, index: int) -> int | None:
    try:
        return int(channels.pid_file(index).read_text().strip())
    except (OSError, ValueError):
        return None


def _reclaim(gateway: Gateway, claimant: str, reason: str) -> None:
    requeued, poisoned = gateway.queue.reclaim_from_crashed(claimant, reason)
    gateway.recorder.log_orphaned_transfers(writer=claimant)
    for job_id in requeued:
        gateway.recorder.event("worker-crashed", status="pending", job_id=job_id,
                               detail=f"its worker ended ({reason}); the job runs again")
    for job_id in poisoned:
        gateway.recorder.event("job-poison", status="poison", job_id=job_id,
                               detail=f"its run ended the worker twice (last: {reason}); parked, "
                               "retry by hand after fixing the cause")
        gateway.host.log_error(f"job {job_id} parked as poison: {reason}")


def _show_reception(gateway: Gateway, channels: Channels, settings: ReceptionSettings) -> None:
    """GET stats and the Prometheus gauges show what reception first held, summed over workers."""
    gateway.hooks.stats.append(lambda: {"reception_first": summary(channels.folder, settings)})

    def gauges() -> dict[str, float]:
        shown = summary(channels.folder, settings)
        return {"rtgw_reception_first_held_calls_total": shown["held_calls"],
                "rtgw_reception_first_held_seconds_total": shown["held_seconds"],
                "rtgw_reception_first_pass_windows_total": shown["pass_windows"]}

    gateway.hooks.metrics.append(gauges)


def _note_handler(gateway: Gateway, lead: bool, beacon: ArrivalBeacon | None = None) -> Any:
    def handle(note: Note) -> None:
        if isinstance(note, WakeNote):
            gateway.pool.wake_senders()
        elif not lead:
            return
        elif isinstance(note, StoredNote):
            if beacon is not None:
                # First, and before any database work: background workers hold their REST
                # calls from the next one on (reception.py).
                beacon.noted(note.facts.origin if note.facts else "")
            gateway.record_stored_instance(note.instance_id, noted_facts(note.facts))
        elif isinstance(note, StableStudyNote):
            gateway.notify_stable_study(note.study_id)
        elif isinstance(note, DeletedNote):
            gateway.notify_deleted_instance(note.instance_id)

    return handle
