"""Forwarding's own table: the storage commitment requests it made (commitment.py)."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS commit_requests(
    transaction_uid TEXT PRIMARY KEY,
    target TEXT NOT NULL,
    requested_epoch REAL NOT NULL,
    instances INTEGER NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending'     -- pending | done | lost (asked again)
);
CREATE INDEX IF NOT EXISTS commit_requests_state ON commit_requests(state);
"""

# Created once job_items has its commit columns (an older database gains them after SCHEMA runs).
COMMIT_INDEX = ("CREATE INDEX IF NOT EXISTS job_items_commit ON job_items(commit_state) "
                "WHERE commit_state IS NOT NULL")
