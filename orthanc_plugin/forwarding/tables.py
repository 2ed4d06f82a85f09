"""Forwarding's own tables: what it keeps of each instance it forwards beyond the queue's item
(in flight in an Orthanc store job, storage commitment), the store jobs it started, and the
storage commitment requests it made (commitment.py). The queue (jobs/tables.py) knows none of it.
"""

from orthanc_plugin.db import Migration
from orthanc_plugin.db_engine import POSTGRESQL, DbConnection, dialect_of

SCHEMA = """
-- One row per queued instance while an Orthanc store job carries it or its storage commitment is
-- followed; gone once it is neither. After a crash, what the receiver holds of an instance in
-- flight is asked (that job's outcome, else a C-FIND) before anything is sent again.
CREATE TABLE IF NOT EXISTS forward_items(
    job_id INTEGER NOT NULL, instance_id TEXT NOT NULL,
    in_flight_job TEXT, in_flight_pos INTEGER,
    commit_state TEXT, commit_txn TEXT, commit_since REAL,   -- due | requested | committed | failed
    PRIMARY KEY(job_id, instance_id)
);
CREATE INDEX IF NOT EXISTS forward_items_commit ON forward_items(commit_state, commit_since)
    WHERE commit_state IS NOT NULL;
CREATE INDEX IF NOT EXISTS forward_items_txn ON forward_items(commit_txn)
    WHERE commit_txn IS NOT NULL;

-- Every Orthanc store job the gateway started (kept two days): with Orthanc's SaveJobs on, such a
-- job found active when Orthanc starts was resumed by Orthanc and is cancelled (in_orthanc/host.py).
CREATE TABLE IF NOT EXISTS orthanc_store_jobs(
    orthanc_job TEXT PRIMARY KEY, created_epoch REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS orthanc_store_jobs_age ON orthanc_store_jobs(created_epoch);

CREATE TABLE IF NOT EXISTS commit_requests(
    transaction_uid TEXT PRIMARY KEY,
    target TEXT NOT NULL,
    requested_epoch REAL NOT NULL,
    instances INTEGER NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending'     -- pending | done | lost (asked again)
);
CREATE INDEX IF NOT EXISTS commit_requests_state ON commit_requests(state);
"""

# Columns versions 2-6 kept on the queue's job_items for forwarding.
_OLD_COLUMNS = ("in_flight_job", "in_flight_pos", "commit_state", "commit_txn", "commit_since")


def queue_item_columns(connection: DbConnection) -> set[str]:
    """The columns job_items has (a migration is handed a connection only: its engine asked)."""
    if dialect_of(connection) == POSTGRESQL:
        return {str(row[0]) for row in connection.execute(
            "SELECT column_name FROM information_schema.columns WHERE "
            "table_schema = current_schema() AND table_name = 'job_items'")}
    return {str(row[1]) for row in connection.execute("PRAGMA table_info(job_items)")}


def move_records_out_of_the_queue(connection: DbConnection) -> None:
    """Forwarding's records leave job_items for forward_items. The old columns stay behind,
    emptied (SQLite 3.40 cannot drop a column of a table whose CREATE text ends in a comment, and
    rebuilding job_items would rewrite every row for nothing): nothing reads them any more."""
    present = queue_item_columns(connection)
    if not set(_OLD_COLUMNS) <= present:
        return   # a new database, or one from before version 2: nothing to move
    connection.execute(
        "INSERT INTO forward_items(job_id, instance_id, in_flight_job, in_flight_pos, "
        "commit_state, commit_txn, commit_since) SELECT job_id, instance_id, in_flight_job, "
        "in_flight_pos, commit_state, commit_txn, commit_since FROM job_items "
        "WHERE in_flight_job IS NOT NULL OR commit_state IS NOT NULL ON CONFLICT DO NOTHING")
    connection.execute(
        "UPDATE job_items SET in_flight_job=NULL, in_flight_pos=NULL, commit_state=NULL, "
        "commit_txn=NULL, commit_since=NULL WHERE in_flight_job IS NOT NULL "
        "OR commit_state IS NOT NULL")
    connection.execute("DROP INDEX IF EXISTS job_items_commit")


MIGRATIONS = (
    Migration(7, "forwarding's in-flight and storage commitment records in their own table",
              moves=move_records_out_of_the_queue),
)
