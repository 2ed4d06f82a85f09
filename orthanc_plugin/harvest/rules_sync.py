"""Brings the harvests of the rules file into the database when the rules are loaded or reloaded.

Each named harvest is new (created and started), unchanged (left alone whatever its state: a
pause or cancel by hand stands, done work is never redone), or changed (a new version: a new
harvest with the new definition; the previous version, if still running or paused, is cancelled
so two walks never compete for the same source). The new version re-walks the queries but moves
no series already stored whole in the gateway: a series move first counts what is there.
A harvest removed from the file is left as it is. Several nodes loading the same file at once
add each version once (HarvestStore.create_rule_version): the others find it unchanged.
"""

from __future__ import annotations

import threading
import traceback
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING

from orthanc_plugin.harvest.model import HarvestDefinition
from orthanc_plugin.harvest.rule import SECTION
from orthanc_plugin.harvest.store import canonical_json
from orthanc_plugin.rules.model import RuleSet

if TYPE_CHECKING:
    from orthanc_plugin.harvest.action import HarvestRunner


class RulesHarvests:
    def __init__(self, runner: HarvestRunner, known_sources: Callable[[], Collection[str]],
                 log_error: Callable[[str], None]) -> None:
        self.runner = runner
        self.known_sources = known_sources
        self.log_error = log_error
        self._lock = threading.Lock()   # a reload during the start-up sync waits for it

    def sync(self, ruleset: RuleSet) -> dict[str, str]:
        """What happened to each named harvest: created, unchanged, new-version or refused."""
        outcomes: dict[str, str] = {}
        with self._lock:
            for definition in ruleset.sections.get(SECTION, ()):
                try:
                    outcomes[definition.name] = self._sync_one(definition, ruleset.sha256)
                except Exception as error:   # one harvest's failure must not stop the others
                    self.log_error(f"harvest '{definition.name}' from the rules: {traceback.format_exc()}")
                    self.runner.recorder.event("harvest-rules", status="failed", target=definition.source,
                                               detail=f"'{definition.name}': {error}")
                    outcomes[definition.name] = "failed"
        return outcomes

    def _sync_one(self, definition: HarvestDefinition, rules_sha256: str) -> str:
        store = self.runner.store
        current = store.rule_version(definition.name)
        if current is not None and current.definition == canonical_json(definition):
            return "unchanged"
        # The file may have been checked before Orthanc could list its modalities (start-up).
        known = self.known_sources()
        if definition.source not in known:
            reason = f"unknown modality '{definition.source}' (known: {', '.join(sorted(known)) or 'none'})"
            self.log_error(f"harvest '{definition.name}' from the rules not started: {reason}")
            self.runner.recorder.event("harvest-rules", status="refused", target=definition.source,
                                       detail=f"'{definition.name}': {reason}")
            return "refused"
        # The version is read again where it is added: another node syncing the same file may
        # have added it since `current` was read.
        created = self.runner.create_from_rules(definition, rules_sha256)
        if created is None:
            return "unchanged"
        if created.superseded is None:
            self.runner.recorder.event(
                "harvest-rules", status="created", target=definition.source,
                detail=f"'{definition.name}' version 1: harvest {created.harvest_id}")
            return "created"
        cancelled = self.runner.cancel(created.superseded)
        self.runner.recorder.event(
            "harvest-rules", status="new-version", target=definition.source,
            detail=f"'{definition.name}' version {created.version}: harvest {created.harvest_id} "
                   f"replaces harvest {created.superseded}{' (cancelled)' if cancelled else ''}")
        return "new-version"
