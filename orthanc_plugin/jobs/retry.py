"""Exponential backoff with a cap: how long a failed job waits before its next attempt."""

from __future__ import annotations

from dataclasses import dataclass

from orthanc_plugin.config import RetryPolicySettings


@dataclass(frozen=True)
class RetryDecision:
    retry: bool
    delay_seconds: float


def decide(attempts_made: int, policy: RetryPolicySettings) -> RetryDecision:
    """After `attempts_made` failed attempts: wait base * 2^(n-1), capped, or give up."""
    if attempts_made >= policy.max_attempts:
        return RetryDecision(retry=False, delay_seconds=0.0)
    delay = policy.base_delay_seconds * (2 ** max(attempts_made - 1, 0))
    return RetryDecision(retry=True, delay_seconds=min(delay, policy.max_delay_seconds))
