"""GET /rt-gateway/cleanup: the clean-up policy, the storage's state and a dry run (what would go
and why each other study stays), paged; POST /rt-gateway/cleanup/run: a round now."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from orthanc_plugin.api.router import ApiError, Request, Response, Router, json_response
from orthanc_plugin.cleanup.action import RoundResult, StorageCleanup
from orthanc_plugin.cleanup.model import CleanupPolicy, Verdict

VERDICT_FILTERS = ("all", "delete", "keep")


def add_routes(router: Router, cleanup: StorageCleanup) -> None:
    def get_review(request: Request) -> Response:
        offset = request.int_param("offset", 0, minimum=0, maximum=10_000_000)
        limit = request.int_param("limit", 50, minimum=1, maximum=1000)
        shown = request.choice_param("verdict", VERDICT_FILTERS, "all")
        review = cleanup.review()
        verdicts = [v for v in review.verdicts
                    if shown == "all" or v.delete == (shown == "delete")]
        return json_response({
            "policy": policy_json(review.policy),
            "storage": {"orthanc_mb": round(review.usage.orthanc_mb, 1),
                        "disk_used_percent": round(review.usage.disk_used_percent, 1),
                        "over": review.over},
            "would_delete": sum(v.delete for v in review.verdicts),
            "would_keep": sum(not v.delete for v in review.verdicts),
            "total": len(verdicts), "offset": offset,
            "studies": [verdict_json(v) for v in verdicts[offset:offset + limit]],
            "last_round": round_json(cleanup.last_round),
        })

    def post_run(request: Request) -> Response:
        body = request.json()
        if not isinstance(body, dict) or body.get("confirm") is not True:
            raise ApiError(400, "a clean-up round deletes studies: send {\"confirm\": true}")
        if not cleanup.policy.active:
            raise ApiError(409, "no clean-up policy: the rules file has no 'cleanup:' limit")
        return json_response(round_json(cleanup.run_round(request.headers.get("x-rtgw-user", ""))))

    router.add("GET", "cleanup", get_review)
    router.add("POST", "cleanup/run", post_run)


def policy_json(policy: CleanupPolicy) -> dict[str, Any]:
    return {"active": policy.active, "older_than_days": policy.older_than_days,
            "storage_above_mb": policy.storage_above_mb,
            "disk_used_above_percent": policy.disk_used_above_percent,
            "quiet_minutes": policy.quiet_minutes,
            "check_every_minutes": policy.check_every_minutes,
            "max_deletions_per_round": policy.max_deletions_per_round}


def verdict_json(verdict: Verdict) -> dict[str, Any]:
    study = verdict.study
    arrived = (None if study.last_arrival_epoch is None else
               datetime.fromtimestamp(study.last_arrival_epoch, UTC).isoformat(timespec="seconds"))
    return {"id": study.study_id, "patient_name": study.patient_name,
            "patient_id": study.patient_id, "description": study.description,
            "study_date": study.study_date, "last_arrival": arrived,
            "verdict": "delete" if verdict.delete else "keep", "reason": verdict.reason,
            "blockers": list(study.blockers)}


def round_json(result: RoundResult | None) -> dict[str, Any] | None:
    if result is None:
        return None
    return {"at": result.at, "deleted": [verdict_json(v) for v in result.deleted],
            "failed": result.failed, "kept": result.kept, "over_after": result.over_after}
