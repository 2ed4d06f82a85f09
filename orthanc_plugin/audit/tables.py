"""Audit tables: what was received, every rule decision, every transfer attempt, other events."""

from orthanc_plugin.audit.counts import start_running_totals
from orthanc_plugin.db import Migration

SCHEMA = """
CREATE TABLE IF NOT EXISTS received(
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    instance_id TEXT NOT NULL UNIQUE,
    received_at TEXT NOT NULL,
    calling_aet TEXT, called_aet TEXT, remote_ip TEXT, origin TEXT, source TEXT,
    sop_class_uid TEXT, modality TEXT,
    patient_id TEXT, study_id TEXT, study_uid TEXT, series_id TEXT, series_uid TEXT,
    sop_instance_uid TEXT, instance_number INTEGER, plan_label TEXT, file_size INTEGER,
    state TEXT NOT NULL DEFAULT 'new',          -- new | ready | gone | quarantined
    instance_rules_done INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS received_state ON received(state, instance_rules_done);
CREATE INDEX IF NOT EXISTS received_study ON received(study_id);

CREATE TABLE IF NOT EXISTS evaluations(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL, trigger TEXT NOT NULL, level TEXT NOT NULL, resource_id TEXT NOT NULL,
    patient_id TEXT, study_uid TEXT, rule TEXT NOT NULL, matched INTEGER NOT NULL,
    failed_condition TEXT, reason TEXT, instances INTEGER NOT NULL DEFAULT 0,
    new_instances INTEGER NOT NULL DEFAULT 0, rules_sha256 TEXT
);
CREATE INDEX IF NOT EXISTS evaluations_at ON evaluations(at);
-- A plan's page shows the latest decision of each rule on it and on its study.
CREATE INDEX IF NOT EXISTS evaluations_resource ON evaluations(resource_id);
CREATE INDEX IF NOT EXISTS evaluations_study ON evaluations(study_uid);

CREATE TABLE IF NOT EXISTS transfers(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id INTEGER NOT NULL, rule TEXT, resource_id TEXT, patient_id TEXT, study_uid TEXT,
    target TEXT NOT NULL, attempt INTEGER NOT NULL,
    status TEXT NOT NULL,                       -- success | failed | refused
    instances INTEGER NOT NULL, bytes INTEGER NOT NULL,
    started_at TEXT NOT NULL, ended_at TEXT NOT NULL, error TEXT, orthanc_job TEXT,
    -- The worker that wrote the row ("<node>/<generation>:<pid>") and whether its transaction-log line
    -- is written: a worker killed between the two leaves 0, and the next start writes the line.
    writer TEXT, logged INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS transfers_at ON transfers(started_at);
-- A job's transfer and audit rows are named with the patient and study once its instance is
-- described, per instance decided at arrival: found by job, not by reading the whole table.
CREATE INDEX IF NOT EXISTS transfers_job ON transfers(job_id);

CREATE TABLE IF NOT EXISTS audit_events(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL, event TEXT NOT NULL, status TEXT, patient_id TEXT, study_uid TEXT,
    resource_id TEXT, rule TEXT, target TEXT, job_id INTEGER, detail TEXT
);
CREATE INDEX IF NOT EXISTS audit_events_at ON audit_events(at);
CREATE INDEX IF NOT EXISTS audit_events_job ON audit_events(job_id);

CREATE TABLE IF NOT EXISTS quarantine(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL, instance_id TEXT, reason TEXT NOT NULL, detail TEXT, file_path TEXT
);
"""

# The audit's steps since the first release (db.Migration).
MIGRATIONS = (
    Migration(3, "transfers: which worker wrote the row, its transaction-log line written",
              {"transfers": {"writer": "TEXT", "logged": "INTEGER NOT NULL DEFAULT 1"}}),
    # Rows whose log line is not written yet, found at a start or a worker's crash (recorder.py);
    # a step, not the schema: a database older than version 3 has no `logged` column before it.
    Migration(11, "the Prometheus counters' running totals, started from the tables; transfers "
              "indexed by whether their log line is written",
              moves=start_running_totals),
)
