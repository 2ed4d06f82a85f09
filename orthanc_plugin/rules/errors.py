"""The one error a rules file can raise, naming where in the file the problem is."""

from __future__ import annotations


class RulesError(ValueError):
    """A rules file is invalid; `path` says where (e.g. `rules[2].match.plan_label`)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason
