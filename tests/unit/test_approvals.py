"""Approval before sending, without Orthanc: the `hold:` action as the rules file writes it, who
may decide, and the store's holding, deciding, expiring and re-opening on a real queue, on SQLite
and on PostgreSQL."""

from __future__ import annotations

import threading

import pytest

from orthanc_plugin.approvals.model import Decision, DecisionRefused, HoldAction
from orthanc_plugin.approvals.store import ApprovalStore
from orthanc_plugin.approvals.tables import SCHEMA as APPROVALS_SCHEMA
from orthanc_plugin.audit.tables import SCHEMA as AUDIT_SCHEMA
from orthanc_plugin.capabilities import load_rules_text
from orthanc_plugin.config import RetryPolicySettings
from orthanc_plugin.jobs.queue import JobQueue, JobSpec
from orthanc_plugin.jobs.tables import SCHEMA as JOBS_SCHEMA
from orthanc_plugin.plans.tables import SCHEMA as PLANS_SCHEMA
from orthanc_plugin.rules import RulesError
from tests.conftest import MakeDatabase

POLICY = RetryPolicySettings(max_attempts=3, base_delay_seconds=0, max_delay_seconds=0)


def rules(actions: str) -> str:
    return f"""
rules:
  - name: held plans
    on: stable-study
    match: {{calling_aet: TPS}}
    actions:
{actions}
"""


def test_a_hold_is_read_with_its_approvers_and_expiry() -> None:
    ruleset = load_rules_text(rules("      - hold: {approvers: [dr.curie, phys.bragg], expires: 3d}\n"
                                    "      - forward: [LINAC, ARCHIVE]"))
    hold, forward = ruleset.rules[0].actions
    assert hold == HoldAction(("dr.curie", "phys.bragg"), 3 * 86400)
    assert getattr(forward, "targets", None) == ("LINAC", "ARCHIVE")
    plain = load_rules_text(rules("      - hold: {}\n      - forward: LINAC")).rules[0].actions[0]
    assert plain == HoldAction((), 7 * 86400)


@pytest.mark.parametrize(("actions", "path", "reason"), [
    ("      - forward: LINAC\n      - hold: {}", "rules[0].actions[1]", "first action"),
    ("      - hold: {}", "rules[0].actions[0]", "needs an action after it"),
    ("      - hold: {approvers: alice, expires: soon}\n      - forward: LINAC",
     "rules[0].actions[0].hold.expires", "duration"),
    ("      - hold: {approver: [alice]}\n      - forward: LINAC",
     "rules[0].actions[0].hold.approver", "unknown option"),
    ("      - hold: {approvers: [alice, alice]}\n      - forward: LINAC",
     "rules[0].actions[0].hold.approvers[1]", "duplicate approver"),
    ("      - hold: {approvers: [{name: a}]}\n      - forward: LINAC",
     "rules[0].actions[0].hold.approvers[0]", "user name"),
])
def test_a_wrong_hold_is_refused_with_its_path(actions: str, path: str, reason: str) -> None:
    with pytest.raises(RulesError) as error:
        load_rules_text(rules(actions))
    assert error.value.path == path and reason in str(error.value)


@pytest.fixture
def store(make_database: MakeDatabase) -> ApprovalStore:
    """On each engine (conftest.make_database: SQLite, then PostgreSQL)."""
    return ApprovalStore(make_database([AUDIT_SCHEMA, JOBS_SCHEMA, PLANS_SCHEMA,
                                        APPROVALS_SCHEMA]))


def queue_held(store: ApprovalStore, targets: list[str], hold: HoldAction,
               instances: list[str], now: float = 1000.0) -> list[int]:
    queue = JobQueue(store.db, POLICY)
    queued: list[tuple[int, JobSpec]] = []
    with store.db.transaction() as connection:
        for target in targets:
            spec = JobSpec(rule="held plans", action="forward", trigger="stable-study",
                           level="study", resource_id="study-1", target=target,
                           patient_id="P1", study_uid="1.2.3")
            job_id, _ = queue.enqueue(connection, spec, instances)
            assert job_id is not None
            queued.append((job_id, spec))
        store.hold(connection, "held plans", hold, queued, now=now)
    return [job_id for job_id, _ in queued]


def states(store: ApprovalStore) -> dict[str, str]:
    return {row["target"]: row["state"] for row in store.db.query("SELECT target, state FROM jobs")}


def test_held_jobs_are_never_claimed_and_each_target_is_decided_on_its_own(
        store: ApprovalStore) -> None:
    queue = JobQueue(store.db, POLICY)
    queue_held(store, ["LINAC", "ARCHIVE"], HoldAction(("curie", "bragg")), ["a", "b"])
    assert states(store) == {"LINAC": "held", "ARCHIVE": "held"}
    assert queue.claim(max_items=10) is None
    (approval,) = store.page("waiting", 0, 10)[1]

    with pytest.raises(DecisionRefused) as refused:
        store.decide(approval["id"], Decision.APPROVE, ["LINAC"], "clerk", "")
    assert refused.value.status == 403
    with pytest.raises(DecisionRefused) as anonymous:
        store.decide(approval["id"], Decision.APPROVE, ["LINAC"], "", "")
    assert anonymous.value.status == 403 and "signed in" in anonymous.value.reason
    with pytest.raises(DecisionRefused) as unknown:
        store.decide(approval["id"], Decision.APPROVE, ["MOSAIQ"], "curie", "")
    assert unknown.value.status == 400

    approved = store.decide(approval["id"], Decision.APPROVE, ["LINAC"], "curie", "ok")
    assert approved.still_held == ["ARCHIVE"]
    assert states(store) == {"LINAC": "pending", "ARCHIVE": "held"}
    claim = queue.claim(max_items=10)
    assert claim is not None and claim.target == "LINAC"
    store.decide(approval["id"], Decision.REJECT, None, "bragg", "not for the archive")
    assert states(store)["ARCHIVE"] == "cancelled"
    decided = store.get(approval["id"])
    assert decided is not None and decided["state"] == "decided"
    assert [(d["target"], d["decision"], d["user"]) for d in decided["decisions"]] == [
        ("LINAC", "approve", "curie"), ("ARCHIVE", "reject", "bragg")]
    with pytest.raises(DecisionRefused) as late:
        store.decide(approval["id"], Decision.APPROVE, None, "curie", "")
    assert late.value.status == 409


def test_new_instances_of_a_waiting_study_join_its_approval(store: ApprovalStore) -> None:
    queue_held(store, ["LINAC"], HoldAction(), ["a"])
    queue_held(store, ["LINAC"], HoldAction(), ["a", "b"])
    total, approvals = store.page("waiting", 0, 10)
    assert total == 1 and approvals[0]["targets"][0]["instances"] == 2
    assert len(approvals[0]["targets"][0]["job_ids"]) == 2


def test_an_expired_hold_parks_with_the_reason_and_a_retry_holds_it_again(
        store: ApprovalStore) -> None:
    queue = JobQueue(store.db, POLICY)
    (job_id,) = queue_held(store, ["LINAC"], HoldAction(("curie",), 3600), ["a"], now=1000.0)
    assert store.expire_due(now=1000.0 + 3599) == []
    (expired,) = store.expire_due(now=1000.0 + 3600)
    assert expired.targets == ["LINAC"] and expired.job_ids == [job_id]
    job = queue.get(job_id)
    assert job is not None and job["state"] == "dead"
    assert "nobody approved within 1 hour (curie)" in job["last_error"]
    assert queue.retry_by_hand(job_id)
    assert (queue.get(job_id) or {})["state"] == "held"
    assert queue.claim(max_items=10) is None
    (reopened,) = store.reopen_retried(now=9000.0)
    again = store.get(reopened)
    assert again is not None and again["state"] == "waiting"
    assert again["expires_at"].startswith("1970-01-01T03:30")   # 9000 s + 1 h


def test_a_decision_waits_for_another_nodes_decision_then_finds_it_decided(
        store: ApprovalStore) -> None:
    """Two people decide one approval on two nodes at once: the second waits for the first's
    transaction and is refused (409), never a second decision. SQLite: one writer at a time;
    PostgreSQL: the approval's row read FOR UPDATE (a plain read would see it still waiting)."""
    queue_held(store, ["LINAC"], HoldAction(), ["a"])
    (approval,) = store.page("waiting", 0, 10)[1]
    started, finish = threading.Event(), threading.Event()

    def other_node() -> None:
        with store.db.transaction() as connection:
            connection.execute("UPDATE approvals SET state='decided' WHERE id=?",
                               (approval["id"],))
            started.set()
            finish.wait(10)

    other = threading.Thread(target=other_node)
    other.start()
    assert started.wait(10)
    threading.Timer(0.3, finish.set).start()
    try:
        with pytest.raises(DecisionRefused) as refused:
            store.decide(approval["id"], Decision.APPROVE, None, "curie", "")
    finally:
        finish.set()
        other.join()
    assert refused.value.status == 409
    assert (store.get(approval["id"]) or {})["decisions"] == []


def test_a_waiting_approval_whose_jobs_were_cancelled_closes(store: ApprovalStore) -> None:
    queue = JobQueue(store.db, POLICY)
    (job_id,) = queue_held(store, ["LINAC"], HoldAction(), ["a"])
    assert queue.cancel_by_hand(job_id)
    assert store.close_emptied() == 1
    assert store.counts() == {"decided": 1}


# -- destination groups (rules/groups.py): read with the rules, expanded where a target is written
GROUPED = """
groups:
  TPS: [ORGANO, MOSAIQ]
rules:
  - name: to the planning systems
    on: stable-study
    match: {calling_aet: CT}
    actions:
      - forward: [TPS, ARCHIVE, ORGANO]
"""
KNOWN = {"ORGANO", "MOSAIQ", "ARCHIVE"}


def test_a_group_is_expanded_wherever_a_target_is_written_each_destination_once() -> None:
    ruleset = load_rules_text(GROUPED, KNOWN)
    assert getattr(ruleset.rules[0].actions[0], "targets", None) == ("ORGANO", "MOSAIQ", "ARCHIVE")
    assert ruleset.sections["groups"] == {"TPS": ("ORGANO", "MOSAIQ")}


@pytest.mark.parametrize(("groups", "path", "reason"), [
    ("groups: {TPS: [ORGANO, NOWHERE]}", "groups.TPS[1]", "unknown destination 'NOWHERE'"),
    ("groups: {ARCHIVE: [ORGANO]}", "groups.ARCHIVE", "already a destination's name"),
    ("groups: {TPS: [ORGANO], ALL: [TPS]}", "groups.ALL[0]", "groups do not nest"),
    ("groups: {TPS: []}", "groups.TPS", "expected a list of destinations"),
])
def test_a_wrong_group_is_refused_with_its_path(groups: str, path: str, reason: str) -> None:
    text = GROUPED.replace("groups:\n  TPS: [ORGANO, MOSAIQ]", groups).replace(
        "[TPS, ARCHIVE, ORGANO]", "[ARCHIVE]")
    with pytest.raises(RulesError) as error:
        load_rules_text(text, KNOWN)
    assert error.value.path == path and reason in str(error.value)
