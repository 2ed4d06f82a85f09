"""Plan bundles: the references each RT object carries, the bundles, and what each rule did."""

import zlib

from orthanc_plugin.db import Database, Migration
from orthanc_plugin.db_engine import StateDatabase
from orthanc_plugin.plans.store import fold_search_text

# The plans' steps since the first release (db.Migration).
MIGRATIONS = (
    Migration(4, "plans: dose summation and beam count; the worklist's search columns", {
        "rt_objects": {"dose_summation": "TEXT", "beam_count": "INTEGER"},
        "plan_bundles": {"accession_number": "TEXT", "search_text": "TEXT",
                         "patient_birth_date": "TEXT", "patient_sex": "TEXT"}}),
)

SCHEMA = """
-- Bundles find images by SOP Instance UID in the shared received table.
CREATE INDEX IF NOT EXISTS received_sop_uid ON received(sop_instance_uid);

CREATE TABLE IF NOT EXISTS rt_objects(
    instance_id TEXT PRIMARY KEY,
    sop_instance_uid TEXT NOT NULL,
    modality TEXT NOT NULL,                     -- RTPLAN | RTSTRUCT | RTDOSE
    patient_id TEXT, study_uid TEXT, calling_aet TEXT,
    plan_label TEXT, plan_name TEXT, plan_date TEXT,
    references_json TEXT NOT NULL,              -- SOP Instance UIDs the object names
    recorded_at TEXT NOT NULL,
    dose_summation TEXT,                        -- RTDOSE: PLAN | BEAM | FRACTION | ...
    beam_count INTEGER                          -- RTPLAN: beams of its fraction groups
);
CREATE INDEX IF NOT EXISTS rt_objects_patient ON rt_objects(patient_id);
CREATE INDEX IF NOT EXISTS rt_objects_sop ON rt_objects(sop_instance_uid);

CREATE TABLE IF NOT EXISTS plan_bundles(
    plan_uid TEXT PRIMARY KEY,                  -- the RTPLAN's SOP Instance UID: the bundle id
    plan_instance_id TEXT NOT NULL,
    patient_id TEXT, patient_name TEXT, study_uid TEXT, calling_aet TEXT, remote_ip TEXT,
    plan_label TEXT, plan_name TEXT, plan_date TEXT,
    complete INTEGER NOT NULL DEFAULT 0,
    missing_json TEXT NOT NULL DEFAULT '[]',
    members_json TEXT NOT NULL DEFAULT '[]',    -- stored members in sending order
    first_seen_epoch REAL NOT NULL,
    completed_epoch REAL,
    updated_at TEXT NOT NULL,
    accession_number TEXT,                      -- the study's, for the worklist's search
    -- The second identifier beside the name, wherever a plan is chosen for sending.
    patient_birth_date TEXT, patient_sex TEXT,
    -- What the worklist's search compares (SEARCH_TEXT below). Last, where migration 4 adds it
    -- to an older table: a new database, SQLite or PostgreSQL, has it from here.
    search_text TEXT
);
CREATE INDEX IF NOT EXISTS plan_bundles_patient ON plan_bundles(patient_id);

-- One row per (rule, bundle, outcome): a plan-complete rule fires once per complete bundle,
-- and acts once on a bundle still incomplete after complete_within.
CREATE TABLE IF NOT EXISTS plan_rule_runs(
    rule TEXT NOT NULL, plan_uid TEXT NOT NULL,
    outcome TEXT NOT NULL,      -- fired | not-matched | forwarded-incomplete | held
    at TEXT NOT NULL, missing_json TEXT, jobs INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY(rule, plan_uid, outcome)
);

-- Computed DVHs of complete bundles (GET plans/{id}), valid while the members are the same.
CREATE TABLE IF NOT EXISTS plan_dvh(
    plan_uid TEXT PRIMARY KEY, members_sha256 TEXT NOT NULL, dvh_json TEXT NOT NULL,
    computed_at TEXT NOT NULL
);
"""

# What the worklist's search looks in, in one folded column kept by triggers (a word is then one LIKE per
# plan, not five) and held in the worklist index, so a search never reads the plans' rows.
# Folded by plans/search.py (accents, case, punctuation), a function every connection has.
SEARCH_TEXT = ("rtgw_fold(coalesce(patient_name, '') || ' ' || coalesce(patient_id, '') || ' ' || "
               "coalesce(plan_label, '') || ' ' || coalesce(plan_name, '') || ' ' || "
               "coalesce(accession_number, ''))")
NEW_SEARCH_TEXT = SEARCH_TEXT.replace("coalesce(", "coalesce(NEW.")   # inside a trigger

# The worklist filters, counts and orders plans from these indexes alone, never from the table's
# rows (each holds every member's UIDs: a scan of them grows with the plans' sizes). Created once
# plan_bundles has accession_number and search_text (plans/__init__.py).
WORKLIST_INDEX = f"""
DROP INDEX IF EXISTS plan_bundles_worklist;
DROP INDEX IF EXISTS plan_bundles_received;
CREATE INDEX IF NOT EXISTS plan_bundles_worklist_v2 ON plan_bundles(first_seen_epoch, plan_uid,
    search_text, calling_aet, complete, study_uid, patient_name, plan_label, plan_date);
CREATE INDEX IF NOT EXISTS plan_bundles_source ON plan_bundles(calling_aet);
CREATE TRIGGER IF NOT EXISTS plan_bundles_search_insert AFTER INSERT ON plan_bundles BEGIN
    UPDATE plan_bundles SET search_text = {SEARCH_TEXT} WHERE rowid = NEW.rowid;
END;
CREATE TRIGGER IF NOT EXISTS plan_bundles_search_update AFTER UPDATE OF patient_name, patient_id,
    plan_label, plan_name, accession_number ON plan_bundles BEGIN
    UPDATE plan_bundles SET search_text = {SEARCH_TEXT} WHERE rowid = NEW.rowid;
END;
UPDATE plan_bundles SET search_text = {SEARCH_TEXT} WHERE search_text IS NULL;

-- Trigrams of the same text (row ids of plan_bundles): a word of three characters or more is
-- found without scanning every plan. Only a shortlist: the row's own search_text decides.
CREATE VIRTUAL TABLE IF NOT EXISTS plan_search USING fts5(text, tokenize='trigram');
CREATE TRIGGER IF NOT EXISTS plan_search_insert AFTER INSERT ON plan_bundles BEGIN
    INSERT INTO plan_search(rowid, text) VALUES(NEW.rowid, {NEW_SEARCH_TEXT});
END;
CREATE TRIGGER IF NOT EXISTS plan_search_update AFTER UPDATE OF patient_name, patient_id,
    plan_label, plan_name, accession_number ON plan_bundles BEGIN
    DELETE FROM plan_search WHERE rowid = OLD.rowid;
    INSERT INTO plan_search(rowid, text) VALUES(NEW.rowid, {NEW_SEARCH_TEXT});
END;
CREATE TRIGGER IF NOT EXISTS plan_search_delete AFTER DELETE ON plan_bundles BEGIN
    DELETE FROM plan_search WHERE rowid = OLD.rowid;
END;
INSERT INTO plan_search(rowid, text) SELECT rowid, search_text FROM plan_bundles
    WHERE rowid NOT IN (SELECT rowid FROM plan_search);
"""


# The worklist's indexes on PostgreSQL: no rtgw_fold, no triggers, no FTS5. The writer folds
# search_text itself (store.save_bundle); a search reads the worklist index whole.
POSTGRES_WORKLIST_INDEX = """
DROP INDEX IF EXISTS plan_bundles_worklist;
DROP INDEX IF EXISTS plan_bundles_received;
CREATE INDEX IF NOT EXISTS plan_bundles_worklist_v2 ON plan_bundles(first_seen_epoch, plan_uid,
    search_text, calling_aet, complete, study_uid, patient_name, plan_label, plan_date);
CREATE INDEX IF NOT EXISTS plan_bundles_source ON plan_bundles(calling_aet);
"""
# db_postgres.SCHEMA_LOCK, held while a node changes the schema (nodes start together; a store
# does not import db_postgres).
SCHEMA_LOCK = zlib.crc32(b"rt-gateway schema")


def create_worklist_index(db: StateDatabase) -> None:
    """The worklist's indexes, triggers and search table (WORKLIST_INDEX), once the migrations
    have given plan_bundles its search columns. On PostgreSQL its indexes only
    (POSTGRES_WORKLIST_INDEX), and a search text folded for any bundle that has none."""
    if isinstance(db, Database):
        # executescript commits on its own, so this runs outside any transaction.
        db.connection().executescript(WORKLIST_INDEX)
        return
    with db.transaction() as connection:
        connection.execute("SELECT pg_advisory_xact_lock(?)", (SCHEMA_LOCK,)).fetchall()
        for statement in POSTGRES_WORKLIST_INDEX.split(";"):
            if statement.strip():
                connection.execute(statement)
        fold_search_text(connection, None)
