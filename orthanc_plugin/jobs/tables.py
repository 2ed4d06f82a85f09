"""The durable queue: a job per (rule, resource, target), its instances, and the changes cursor."""

from orthanc_plugin.db import Migration
from orthanc_plugin.db_engine import DbConnection
from orthanc_plugin.retention_store import has_table

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    idempotency_key TEXT NOT NULL UNIQUE,
    rule TEXT NOT NULL, action TEXT NOT NULL, trigger TEXT NOT NULL,
    level TEXT NOT NULL, resource_id TEXT NOT NULL, patient_id TEXT, study_uid TEXT,
    calling_aet TEXT, remote_ip TEXT,
    target TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',      -- pending | held | running | done | dead | cancelled
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL, updated_at TEXT NOT NULL, created_epoch REAL NOT NULL DEFAULT 0,
    last_error TEXT, last_status TEXT, orthanc_job TEXT,
    claimed_by TEXT,                            -- "<node>/<generation>:<pid>" of its worker
    crashes INTEGER NOT NULL DEFAULT 0,         -- runs that ended their worker; 2 = poison
    -- Which waiting job a destination takes first (rules/priority.py): 0 low .. 30 urgent.
    priority INTEGER NOT NULL DEFAULT 10,
    -- The claim running it (one per association chain), and how many of its instances that
    -- claim holds: a destination's caps count these across every worker.
    claim_id TEXT, claim_items INTEGER NOT NULL DEFAULT 0,
    -- When its current run of failed attempts began (NULL once it delivers): a destination's
    -- failover moves a job that has failed to reach it for long enough.
    failing_since REAL,
    -- 1 while a job decided from the arrival note (jobs/arrival.py) waits for its instance's
    -- description to name the patient and study in its records.
    awaits_description INTEGER NOT NULL DEFAULT 0,
    -- The claim's lease (epoch seconds; its worker renews it) and fencing token, incremented at
    -- each claim and takeover: a write carrying an older token is refused (lease_store.py).
    lease_until REAL, fence INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_ready ON jobs(state, next_attempt_at);
CREATE INDEX IF NOT EXISTS jobs_rule_target ON jobs(rule, target);
-- The page's worklist and queue find a plan's and a study's jobs by these.
CREATE INDEX IF NOT EXISTS jobs_resource ON jobs(resource_id);
CREATE INDEX IF NOT EXISTS jobs_study ON jobs(study_uid);
-- The queue page's list of targets, found a target at a time (plans/store.py: job_targets).
CREATE INDEX IF NOT EXISTS jobs_target ON jobs(target);
-- Retention's finished jobs, oldest first (retention_store.done_jobs_before).
CREATE INDEX IF NOT EXISTS jobs_finished ON jobs(state, updated_at);

-- An instance is assigned once per (rule, target): replaying a study never sends it twice,
-- and a study that grows after it was sent is sent again only for what is new.
CREATE TABLE IF NOT EXISTS job_items(
    job_id INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    rule TEXT NOT NULL, target TEXT NOT NULL, instance_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',      -- pending | sent | refused | gone | not-committed
    status TEXT, sent_at TEXT, bytes INTEGER NOT NULL DEFAULT 0,
    -- 1 once a success transfer row counts this delivery: whoever established it (the receiver's
    -- answer, Orthanc's job after a restart, a C-FIND), it is counted in exactly one row.
    reported INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY(job_id, instance_id),
    UNIQUE(rule, target, instance_id)
);
CREATE INDEX IF NOT EXISTS job_items_state ON job_items(job_id, state);
-- A destination's pace: what it received in the last minute.
CREATE INDEX IF NOT EXISTS job_items_target_sent ON job_items(target, sent_at);

-- (rule, target, instance) of pruned finished jobs as a 64-bit hash: "sent once" outlives them
-- (jobs/ledger.py, retention.py).
CREATE TABLE IF NOT EXISTS sent_ledger(key INTEGER PRIMARY KEY);
CREATE TABLE IF NOT EXISTS study_progress(
    study_id TEXT PRIMARY KEY,
    last_received_at REAL NOT NULL,
    stable_done_seq INTEGER NOT NULL DEFAULT 0,   -- received.seq up to which stable rules ran
    stable_signalled INTEGER NOT NULL DEFAULT 0,
    ready_seq INTEGER NOT NULL DEFAULT 0          -- the highest received.seq described in it
);
-- Retention's quiet studies (retention_store.delete_quiet_studies_before).
CREATE INDEX IF NOT EXISTS study_progress_quiet ON study_progress(last_received_at);
"""

# Only the studies whose stable-study rules have instances to see: a handful, however many
# studies the database keeps (intake_store.studies_with_new_instances reads through it).
UNSEEN_STUDIES_INDEX = ("CREATE INDEX IF NOT EXISTS study_progress_unseen ON study_progress(ready_seq) "
                        "WHERE ready_seq > stable_done_seq")

def start_ready_seq(connection: DbConnection) -> None:
    """Migration 10: each study's last described instance, from the intake's rows, and the index
    of studies with instances their stable-study rules have not seen (where both tables are: a
    database made with some parts' tables only, the tests', may lack the intake's)."""
    if not has_table(connection, "study_progress"):
        return
    connection.execute(UNSEEN_STUDIES_INDEX)
    if has_table(connection, "received"):
        connection.execute(
            "UPDATE study_progress SET ready_seq = COALESCE((SELECT MAX(r.seq) FROM received r "
            "WHERE r.study_id = study_progress.study_id AND r.state = 'ready'), 0)")


# The queue's steps since the first release (db.Migration; the gateway runs every part's in
# version order at start).
MIGRATIONS = (
    Migration(1, "jobs: claim owner and crash count, priority, claim size, failing since", {
        "jobs": {"claimed_by": "TEXT", "crashes": "INTEGER NOT NULL DEFAULT 0",
                 "priority": "INTEGER NOT NULL DEFAULT 10", "claim_id": "TEXT",
                 "claim_items": "INTEGER NOT NULL DEFAULT 0", "failing_since": "REAL"}}),
    # Version 2 also gave job_items forwarding's in-flight and commitment columns; version 7
    # (forwarding/tables.py) moved those records to forwarding's own table.
    # Deliveries made before the column existed were reported by their own transfer rows.
    Migration(2, "job items: reported",
              {"job_items": {"reported": "INTEGER NOT NULL DEFAULT 1"}}),
    Migration(6, "jobs: decided at arrival, awaiting the description",
              {"jobs": {"awaits_description": "INTEGER NOT NULL DEFAULT 0"}}),
    # Jobs running when the gateway stopped have no lease: the start's recovery takes them.
    Migration(8, "jobs: a claim's lease and fencing token",
              {"jobs": {"lease_until": "REAL", "fence": "INTEGER NOT NULL DEFAULT 0"}}),
    # Each intake pass asks which studies have instances their stable-study rules have not seen:
    # without this, that read probed every study ever received (bench/history.py).
    Migration(10, "study progress: the last instance described, studies not yet seen indexed",
              {"study_progress": {"ready_seq": "INTEGER NOT NULL DEFAULT 0"}},
              moves=start_ready_seq),
)
