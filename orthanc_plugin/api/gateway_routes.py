"""Routes of the gateway core: rules, jobs, audit and stats."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

from orthanc_plugin.api.health import health
from orthanc_plugin.api.router import (
    ApiError,
    Request,
    Response,
    Router,
    csv_response,
    json_response,
)
from orthanc_plugin.audit.clock import now_iso
from orthanc_plugin.audit.queries import AuditQueryError, audit_rows, stats, to_csv
from orthanc_plugin.forwarding.stow import qido_echo
from orthanc_plugin.jobs.states import ALL_JOB_STATES
from orthanc_plugin.ports import HostError
from orthanc_plugin.rules import RulesError

if TYPE_CHECKING:
    from orthanc_plugin.app import Gateway

ECHO_PREFIX = "last_echo:"
JOB_STATES = ALL_JOB_STATES
MAX_JOBS_LISTED = 10_000


def add_routes(router: Router, gateway: Gateway) -> None:
    def internal_metrics(_: Request) -> Response:
        # Read by the plugin, which copies the values into Orthanc's Prometheus registry.
        return json_response(gateway.metrics_snapshot())

    def get_health(_: Request) -> Response:
        status, report = health(gateway.health_probes)
        return json_response(report, status)

    def get_rules(_: Request) -> Response:
        return json_response(gateway.describe_rules())

    def reload_rules(_: Request) -> Response:
        try:
            ruleset = gateway.reload_rules()
        except RulesError as error:
            return json_response(
                {"error": str(error), "path": error.path, "reason": error.reason,
                 "rules_in_force": gateway.ruleset.sha256},
                400,
            )
        return json_response({"loaded": len(ruleset.rules), "sha256": ruleset.sha256})

    def test_rules(request: Request) -> Response:
        body = request.json()
        study = body.get("study") if isinstance(body, dict) else None
        if not study:
            raise ApiError(400, "body: expected {\"study\": <Orthanc study id or StudyInstanceUID>}")
        return json_response(gateway.test_rules(str(study)))

    def list_jobs(request: Request) -> Response:
        state = request.choice_param("state", JOB_STATES)
        limit = request.int_param("limit", 200, minimum=1, maximum=MAX_JOBS_LISTED)
        return json_response(gateway.queue.list(state, limit))

    def get_job(request: Request) -> Response:
        job = gateway.queue.get(request.id_param())
        if job is None:
            raise ApiError(404, f"no job {request.params['id']}")
        return json_response(job)

    def retry_job(request: Request) -> Response:
        job_id = request.id_param()
        if gateway.queue.get(job_id) is None:
            raise ApiError(404, f"no job {job_id}")
        if not gateway.retry_job(job_id):
            raise ApiError(409, f"job {job_id} is not parked (dead): nothing to retry")
        return json_response({"retried": job_id})

    def cancel_job(request: Request) -> Response:
        job_id = request.id_param()
        if gateway.queue.get(job_id) is None:
            raise ApiError(404, f"no job {job_id}")
        if not gateway.cancel_job(job_id, request.headers.get("x-rtgw-user", "")):
            raise ApiError(409, f"job {job_id} is sending or finished: only a waiting or parked "
                                "job can be cancelled")
        return json_response({"cancelled": job_id})

    def retry_parked(request: Request) -> Response:
        body = request.json()
        target = body.get("target") if isinstance(body, dict) else None
        if not isinstance(target, str) or not target:
            raise ApiError(400, "body: expected {\"target\": <modality name>}")
        retried = [job_id for job_id in gateway.queue.parked_for(target)
                   if gateway.retry_job(job_id)]
        return json_response({"retried": retried})

    def list_targets(_: Request) -> Response:
        """The destinations and each one's last C-ECHO (from this page or any other)."""
        answer = []
        for name in sorted(gateway.known_targets()):
            last = gateway.db.get_meta(ECHO_PREFIX + name)
            answer.append({"name": name, "last_echo": json.loads(last) if last else None})
        return json_response(answer)

    def echo_target(request: Request) -> Response:
        name = request.params["name"]
        if name not in gateway.known_targets():
            raise ApiError(404, f"no destination {name[:64]!r}")
        started = time.monotonic()
        server = gateway.config.dicomweb_servers.get(name)
        try:
            if server is not None:
                # A DICOMweb destination has no C-ECHO: a one-study QIDO-RS says it answers.
                ok, error = qido_echo(server)
            else:
                gateway.host.post_json(f"/modalities/{name}/echo", {})
                ok, error = True, ""
        except HostError as failure:   # no answer is an answer here, not a server error
            ok, error = False, str(failure)[:300]
        record = {"ok": ok, "error": error, "at": now_iso(),
                  "seconds": round(time.monotonic() - started, 3)}

        def write() -> None:
            with gateway.db.transaction() as connection:
                gateway.db.set_meta(ECHO_PREFIX + name, json.dumps(record), connection)
        gateway.db.durable(write, "recording a C-ECHO")
        return json_response(record)

    def get_audit(request: Request) -> Response:
        try:
            rows = audit_rows(gateway.db, request.query)
        except AuditQueryError as error:
            raise ApiError(400, str(error)) from error
        if request.choice_param("format", ("json", "csv")) == "csv":
            return csv_response(to_csv(rows))
        return json_response(rows)

    def get_stats(_: Request) -> Response:
        result = stats(gateway.db)
        for section in gateway.hooks.stats:
            result.update(section())
        return json_response(result)

    router.add("GET", "internal/metrics", internal_metrics)
    router.add("GET", "health", get_health)
    router.add("GET", "rules", get_rules)
    router.add("POST", "rules/reload", reload_rules)
    router.add("POST", "rules/test", test_rules)
    router.add("GET", "jobs", list_jobs)
    router.add("GET", r"jobs/(?P<id>\d+)", get_job)
    router.add("POST", r"jobs/(?P<id>\d+)/retry", retry_job)
    router.add("POST", r"jobs/(?P<id>\d+)/cancel", cancel_job)
    router.add("POST", "jobs/retry-parked", retry_parked)
    router.add("GET", "targets", list_targets)
    router.add("POST", r"targets/(?P<name>[A-Za-z0-9_.\-]{1,64})/echo", echo_target)
    router.add("GET", "audit", get_audit)
    router.add("GET", "stats", get_stats)
