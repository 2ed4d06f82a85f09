"""What each copy sent said differently: every ROI name and plan label before and after
normalization, per instance and destination (the plan page and the audit read it)."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS copy_names(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL, instance_id TEXT NOT NULL, target TEXT NOT NULL, rule TEXT NOT NULL,
    attribute TEXT NOT NULL,         -- ROIName, ROIObservationLabel, RTPlanLabel
    before TEXT NOT NULL,
    after TEXT,                      -- NULL: sent unchanged, `status` says why
    status TEXT NOT NULL,            -- kept | renamed | no match | helper | conflict | too long
    UNIQUE(instance_id, target, rule, attribute, before)
);
CREATE INDEX IF NOT EXISTS copy_names_instance ON copy_names(instance_id);
"""
