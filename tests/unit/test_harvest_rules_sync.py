"""Harvests of the rules file brought into the database: created once, left alone while unchanged,
a new version when changed. Runs on the real store and runner (threads not started)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest

from orthanc_plugin import capabilities
from orthanc_plugin.audit.metrics import Metrics
from orthanc_plugin.audit.recorder import AuditRecorder
from orthanc_plugin.audit.tables import SCHEMA as AUDIT_SCHEMA
from orthanc_plugin.audit.translog import TransactionLog
from orthanc_plugin.harvest.action import HarvestRunner, HarvestSettings
from orthanc_plugin.harvest.model import ItemState, Transition
from orthanc_plugin.harvest.rules_sync import RulesHarvests
from orthanc_plugin.harvest.store import HarvestStore
from orthanc_plugin.harvest.tables import SCHEMA
from orthanc_plugin.ports import Host
from orthanc_plugin.rules import RuleSet
from tests.conftest import MakeDatabase

load_rules_text = capabilities.load_rules_text


@pytest.fixture
def runner(tmp_path: Path, make_database: MakeDatabase) -> HarvestRunner:
    # Both engines: an SQLite file, then a real PostgreSQL (tests/conftest.py).
    db = make_database([AUDIT_SCHEMA, SCHEMA])
    recorder = AuditRecorder(db, TransactionLog(tmp_path / "log"), Metrics(lambda name, value: None))
    # No Orthanc here: the sync only writes rows, it never calls the host.
    return HarvestRunner(cast(Host, None), HarvestStore(db), recorder, HarvestSettings(tmp_path / "h"),
                         lambda message: None)


def rules(*harvests: str) -> RuleSet:
    return load_rules_text("rules: []\nharvests:\n" + "".join(harvests), None)


def harvest(name: str, patients: str = "[P1]", extra: str = "") -> str:
    return f"  - name: {name}\n    source: PACS\n    patients: {patients}\n{extra}"


def events(runner: HarvestRunner) -> list[tuple[str, str]]:
    return [(row["status"], row["detail"]) for row in runner.store.db.query(
        "SELECT status, detail FROM audit_events WHERE event='harvest-rules' ORDER BY id")]


def sync(runner: HarvestRunner, ruleset: RuleSet, known: tuple[str, ...] = ("PACS",)) -> dict[str, Any]:
    return RulesHarvests(runner, lambda: known, lambda message: None).sync(ruleset)


def test_new_harvests_are_created_and_the_same_file_again_changes_nothing(runner: HarvestRunner) -> None:
    ruleset = rules(harvest("a"), harvest("b", "{regex: 'B.*'}"))
    assert sync(runner, ruleset) == {"a": "created", "b": "created"}
    rows = runner.store.harvests()
    assert [(row.name, row.state) for row in rows] == [("a", "running"), ("b", "running")]
    # The work done so far must survive a reload of the same file (or a restart).
    patient = runner.store.claim()
    assert patient is not None
    runner.store.settle(patient.id, Transition(ItemState.DONE))
    runner.pause(rows[1].id)

    assert sync(runner, ruleset) == {"a": "unchanged", "b": "unchanged"}
    # Reordered and with a default written out: the same definitions, still unchanged.
    defaults_written = harvest("a", "[P1]", "    levels: [patient, study, series]\n    concurrency: 2\n")
    reordered = rules(harvest("b", "{regex: 'B.*'}"), defaults_written)
    assert sync(runner, reordered) == {"b": "unchanged", "a": "unchanged"}
    after = runner.store.harvests()
    assert [(row.id, row.state) for row in after] == [(rows[0].id, "running"),
                                                           (rows[1].id, "paused")]
    assert runner.store.item(patient.id).state == "done"
    assert len(events(runner)) == 2


def test_a_changed_definition_is_a_new_version_and_cancels_the_running_one(runner: HarvestRunner) -> None:
    sync(runner, rules(harvest("a")))
    (first,) = runner.store.harvests()
    assert sync(runner, rules(harvest("a", "[P1, P2]"))) == {"a": "new-version"}
    old, new = runner.store.harvests()
    assert old.id == first.id and old.state == "cancelled"
    assert new.state == "running" and new.name == "a"
    assert runner.store.definition(new).selection.patient_ids == ("P1", "P2")
    version = runner.store.rule_version("a")
    assert version is not None and (version.version, version.harvest_id) == (2, new.id)
    assert events(runner)[-1] == (
        "new-version", f"'a' version 2: harvest {new.id} replaces harvest {old.id} (cancelled)")
    # Going back to the first definition is a third version, not a revival of the cancelled one.
    assert sync(runner, rules(harvest("a"))) == {"a": "new-version"}
    assert runner.store.rule_version("a").version == 3   # type: ignore[union-attr]


def test_a_finished_version_stays_done_when_replaced(runner: HarvestRunner) -> None:
    sync(runner, rules(harvest("a")))
    (first,) = runner.store.harvests()
    runner.store.set_harvest_state(first.id, "done", ("running",))
    sync(runner, rules(harvest("a", "[P2]")))
    assert [row.state for row in runner.store.harvests()] == ["done", "running"]
    assert events(runner)[-1][1].endswith(f"replaces harvest {first.id}")


def test_an_unknown_source_is_refused_and_tried_again_at_the_next_load(runner: HarvestRunner) -> None:
    ruleset = rules(harvest("a"))
    assert sync(runner, ruleset, known=("OTHER",)) == {"a": "refused"}
    assert runner.store.harvests() == []
    assert events(runner) == [("refused", "'a': unknown modality 'PACS' (known: OTHER)")]
    assert sync(runner, ruleset) == {"a": "created"}


def test_harvests_posted_with_the_same_name_are_not_taken_for_the_rules_one(runner: HarvestRunner) -> None:
    posted = runner.create(rules(harvest("a", "[P9]")).sections["harvests"][0])
    assert sync(runner, rules(harvest("a"))) == {"a": "created"}
    assert runner.store.harvest(posted).state == "running"   # type: ignore[union-attr]
