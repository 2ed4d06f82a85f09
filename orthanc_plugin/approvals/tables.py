"""Approvals: one per (rule, study or plan) while it waits; its jobs; each person's decision.

approval_decisions' column `user` is a reserved word of PostgreSQL: every statement names it
"user", quoted (both engines take the quoted name)."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS approvals(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    rule TEXT NOT NULL,
    subject TEXT NOT NULL,                 -- 'study:<uid>' or 'plan:<uid>': what is approved
    level TEXT NOT NULL, resource_id TEXT NOT NULL, patient_id TEXT, study_uid TEXT,
    approvers TEXT NOT NULL DEFAULT '[]',  -- JSON list; empty: any signed-in user
    expires_seconds REAL NOT NULL,
    created_at TEXT NOT NULL, expires_epoch REAL NOT NULL,
    state TEXT NOT NULL DEFAULT 'waiting', -- waiting | decided | expired
    -- Filled by the lead worker's round (never inside the intake's transaction): the page's words.
    patient_name TEXT, study_description TEXT, study_date TEXT, plan_label TEXT,
    described INTEGER NOT NULL DEFAULT 0,
    labelled INTEGER NOT NULL DEFAULT 0    -- 1 while the study carries the awaiting label
);
CREATE INDEX IF NOT EXISTS approvals_waiting ON approvals(state, rule, subject);
CREATE TABLE IF NOT EXISTS approval_jobs(
    approval_id INTEGER NOT NULL REFERENCES approvals(id),
    job_id INTEGER NOT NULL PRIMARY KEY
);
CREATE INDEX IF NOT EXISTS approval_jobs_approval ON approval_jobs(approval_id);
CREATE TABLE IF NOT EXISTS approval_decisions(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    approval_id INTEGER NOT NULL REFERENCES approvals(id),
    target TEXT NOT NULL, decision TEXT NOT NULL,   -- approve | reject | expired
    -- Quoted: `user` is a reserved word of PostgreSQL (the same column on SQLite).
    "user" TEXT NOT NULL, comment TEXT NOT NULL DEFAULT '', at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS approval_decisions_approval ON approval_decisions(approval_id);
"""
