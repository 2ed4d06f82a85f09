"""GET /rt-gateway/approvals (paged, by state), GET approvals/{id}, and the decisions:
POST approvals/{id}/approve and approvals/{id}/reject with {"targets": [...], "comment": "...",
"confirm": true}. The deciding user is Orthanc's authenticated user, as the request carries it."""

from __future__ import annotations

from typing import Any

from orthanc_plugin.api.router import ApiError, Request, Response, Router, json_response
from orthanc_plugin.approvals.action import Approvals
from orthanc_plugin.approvals.model import ApprovalState, Decision, DecisionRefused
from orthanc_plugin.approvals.store import ApprovalStore

STATES = ("waiting", "decided", "expired", "all")


def add_routes(router: Router, approvals: Approvals, store: ApprovalStore) -> None:
    def get_list(request: Request) -> Response:
        state = request.choice_param("state", STATES, "waiting")
        offset = request.int_param("offset", 0, minimum=0, maximum=10_000_000)
        limit = request.int_param("limit", 25, minimum=1, maximum=200)
        total, rows = store.page(None if state == "all" else state, offset, limit)
        return json_response({"state": state, "total": total, "offset": offset,
                              "counts": {s.value: store.counts().get(s.value, 0)
                                         for s in ApprovalState},
                              "approvals": rows})

    def get_one(request: Request) -> Response:
        approval = store.get(request.id_param())
        if approval is None:
            raise ApiError(404, f"no approval {request.params['id'][:40]}")
        return json_response(approval)

    def decide(decision: Decision) -> Any:
        def handler(request: Request) -> Response:
            body = request.json()
            if not isinstance(body, dict) or body.get("confirm") is not True:
                raise ApiError(400, f"to {decision.value}, send {{\"confirm\": true}} with the "
                                    f"targets (none: every target still held) and a comment")
            targets = body.get("targets")
            if targets is not None and not (isinstance(targets, list)
                                            and all(isinstance(t, str) for t in targets)):
                raise ApiError(400, "targets: expected a list of destination names")
            comment = body.get("comment", "")
            if not isinstance(comment, str):
                raise ApiError(400, "comment: expected text")
            try:
                decided = approvals.decide(request.id_param(), decision, targets,
                                           request.headers.get("x-rtgw-user", ""), comment)
            except DecisionRefused as refused:
                raise ApiError(refused.status, refused.reason) from None
            return json_response({"approval": decided.approval_id, "decision": decided.decision,
                                  "targets": decided.targets, "jobs": decided.job_ids,
                                  "still_held": decided.still_held})
        return handler

    router.add("GET", "approvals", get_list)
    router.add("GET", r"approvals/(?P<id>\d{1,30})", get_one)
    router.add("POST", r"approvals/(?P<id>\d{1,30})/approve", decide(Decision.APPROVE))
    router.add("POST", r"approvals/(?P<id>\d{1,30})/reject", decide(Decision.REJECT))
