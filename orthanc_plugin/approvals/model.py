"""Approval before sending, as pure values: who may decide, what a decision does, when a hold
expires. No SQL, no Orthanc."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

DEFAULT_EXPIRY_SECONDS = 7 * 86400
# A rejection is read later by someone who was not there: it must say why.
MIN_REJECT_COMMENT = 3
MAX_COMMENT = 2000


class ApprovalState(StrEnum):
    WAITING = "waiting"      # at least one of its jobs is still held
    DECIDED = "decided"      # every target approved or rejected
    EXPIRED = "expired"      # nobody decided in time: its held jobs were parked


class Decision(StrEnum):
    APPROVE = "approve"
    REJECT = "reject"


@dataclass(frozen=True)
class HoldAction:
    """`hold: {approvers: [alice, bob], expires: 7d}`: the rule's other actions wait for a person.

    Empty approvers: any user signed in to Orthanc may decide."""

    approvers: tuple[str, ...] = ()
    expires_seconds: float = DEFAULT_EXPIRY_SECONDS


class DecisionRefused(Exception):
    """Why a decision was not taken, with the HTTP status that says so."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def check_decider(user: str, approvers: Sequence[str], rule: str) -> None:
    """The audit must name who decided: an anonymous request decides nothing."""
    if not user:
        raise DecisionRefused(403, "deciding needs a user signed in to Orthanc (its RegisteredUsers):"
                                   " the audit names who approved or rejected")
    if approvers and user not in approvers:
        raise DecisionRefused(403, f"{user} may not decide for rule '{rule}' "
                                   f"(approvers: {', '.join(approvers)})")


def chosen_targets(asked: Sequence[str] | None, held: Sequence[str]) -> list[str]:
    """The targets a decision is about: those asked for, or every one still held."""
    if not held:
        raise DecisionRefused(409, "nothing of this approval is still held")
    if asked is None or len(asked) == 0:
        return list(held)
    unknown = [target for target in asked if target not in held]
    if unknown:
        raise DecisionRefused(400, f"targets: {', '.join(unknown)} not held here "
                                   f"(held: {', '.join(held)})")
    return list(dict.fromkeys(asked))


def check_comment(decision: Decision, comment: str) -> str:
    text = comment.strip()
    if len(text) > MAX_COMMENT:
        raise DecisionRefused(400, f"comment: at most {MAX_COMMENT} characters")
    if decision == Decision.REJECT and len(text) < MIN_REJECT_COMMENT:
        raise DecisionRefused(400, "comment: a rejection says why (at least a few words)")
    return text


def expiry_reason(expires_seconds: float, approvers: Sequence[str]) -> str:
    who = f" ({', '.join(approvers)})" if approvers else ""
    return (f"approval expired: nobody approved within {_duration(expires_seconds)}{who}; "
            f"retry to hold it for approval again")


def _duration(seconds: float) -> str:
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            count = int(seconds // size)
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return f"{seconds:g} s"
