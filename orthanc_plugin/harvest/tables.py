"""The harvest tables in the gateway's database (SQLite; PostgreSQL through db_postgres.postgres_ddl):
definitions, the walked tree, every request sent."""

from orthanc_plugin.db import Migration
from orthanc_plugin.db_engine import DbConnection
from orthanc_plugin.retention_store import has_table

SCHEMA = """
CREATE TABLE IF NOT EXISTS harvests(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL DEFAULT '',
    source TEXT NOT NULL,
    definition TEXT NOT NULL,              -- the parsed definition as JSON
    state TEXT NOT NULL DEFAULT 'running', -- running, paused, cancelled, done
    pass INTEGER NOT NULL DEFAULT 1,       -- incremented by each refresh (a new walk)
    concurrency INTEGER NOT NULL,
    max_requests_per_minute INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    started_epoch REAL NOT NULL,
    updated_at TEXT NOT NULL,
    finished_at TEXT
);

-- One row per selection query, patient, study and series. A series row's state says whether it
-- is stored whole; a restart only resumes rows that are pending or were caught mid-step.
CREATE TABLE IF NOT EXISTS harvest_items(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    harvest_id INTEGER NOT NULL REFERENCES harvests(id),
    parent_id INTEGER,
    patient_item_id INTEGER,               -- the patient row this row belongs to
    level TEXT NOT NULL,                   -- selection, patient, study, series
    depth INTEGER NOT NULL,                -- 0..3: deeper rows run first, patients finish early
    patient_id TEXT NOT NULL DEFAULT '',
    study_uid TEXT NOT NULL DEFAULT '',
    series_uid TEXT NOT NULL DEFAULT '',
    modality TEXT NOT NULL DEFAULT '',
    description TEXT NOT NULL DEFAULT '',
    state TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    moves INTEGER NOT NULL DEFAULT 0,      -- C-MOVE requests sent for this series
    next_attempt_at REAL NOT NULL DEFAULT 0,
    expected_instances INTEGER,            -- NumberOfSeriesRelatedInstances at the source
    stored_instances INTEGER,              -- counted in the gateway's Orthanc
    orthanc_series_id TEXT,
    query_id TEXT,                         -- Orthanc /queries/{id} holding this series' answer
    answer_index INTEGER,
    orthanc_job TEXT,
    zip_name TEXT,                         -- patient rows: the ZIP written last
    zip_series_count INTEGER,
    last_error TEXT,
    found_in_pass INTEGER NOT NULL DEFAULT 1,
    updated_at TEXT NOT NULL,
    -- The claim of a row in flight (several nodes share a harvest): its holder ("<node>/...",
    -- the jobs' claimant), until when (epoch; the holder renews it) and a fencing token bumped
    -- at each claim and takeover, so a write of a holder that lost the row is refused.
    claimed_by TEXT,
    lease_until REAL,
    fence INTEGER NOT NULL DEFAULT 0,
    -- Patient rows: the node building the patient's ZIP (a token of its claim) and until when.
    zip_claimed_by TEXT,
    zip_lease_until REAL,
    UNIQUE(harvest_id, level, patient_id, study_uid, series_uid)
);
CREATE INDEX IF NOT EXISTS harvest_items_ready ON harvest_items(state, next_attempt_at);
CREATE INDEX IF NOT EXISTS harvest_items_by_harvest ON harvest_items(harvest_id, state);
CREATE INDEX IF NOT EXISTS harvest_items_by_patient ON harvest_items(patient_item_id, level, state);

-- Every C-FIND and C-MOVE sent to a source: the audit of the request rate.
CREATE TABLE IF NOT EXISTS harvest_requests(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    at_epoch REAL NOT NULL,
    harvest_id INTEGER NOT NULL,
    item_id INTEGER NOT NULL,
    source TEXT NOT NULL,
    kind TEXT NOT NULL,                    -- C-FIND or C-MOVE
    level TEXT NOT NULL,
    outcome TEXT NOT NULL,                 -- ok, error; reserved (booked, not yet sent); sent
                                           -- (a C-MOVE whose job runs); unknown (its node ended)
    detail TEXT
);
CREATE INDEX IF NOT EXISTS harvest_requests_by_source ON harvest_requests(source, at_epoch);

-- Harvests defined in the rules file, by name: each changed definition is a new version with a
-- harvest of its own; the highest version is the one in force.
CREATE TABLE IF NOT EXISTS harvest_rule_versions(
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    harvest_id INTEGER NOT NULL REFERENCES harvests(id),
    definition TEXT NOT NULL,              -- the parsed definition as canonical JSON (sorted keys)
    rules_sha256 TEXT NOT NULL,            -- the rules file that brought this version
    created_at TEXT NOT NULL,
    PRIMARY KEY(name, version)
);
"""


def index_zip_claims(connection: DbConnection) -> None:
    """A step, not the schema (a database before version 9 has no ZIP columns when the schema
    runs), and only where the harvest's table is: a database made with some parts' tables only
    (the tests') has none to index."""
    if has_table(connection, "harvest_items"):
        connection.execute(
            "CREATE INDEX IF NOT EXISTS harvest_items_zip_claims ON harvest_items(zip_lease_until) "
            "WHERE zip_claimed_by IS NOT NULL")


# The harvest's steps (db.Migration, one sequence with the other parts'). Rows in flight before
# version 9 have no holder: the next start's recovery takes them, as a single node's.
MIGRATIONS = (
    Migration(9, "harvest items: a claim's holder, lease and fencing token; a ZIP's claim", {
        "harvest_items": {"claimed_by": "TEXT", "lease_until": "REAL",
                          "fence": "INTEGER NOT NULL DEFAULT 0", "zip_claimed_by": "TEXT",
                          "zip_lease_until": "REAL"}}),
    # The lease loop's search for ZIP claims nobody renews (store.orphaned_zips), every round:
    # through the few rows a ZIP is being built for, not every item of every harvest.
    Migration(12, "harvest items: ZIP claims indexed", moves=index_zip_claims),
)
