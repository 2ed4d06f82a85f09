"""The states of a queued job and of each of its instances: the words the database holds.

StrEnum: a state compares equal to its word, so rows read from SQL and the states named in code
meet without conversion; SQL statements still spell the words (jobs/tables.py lists them).
"""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    PENDING = "pending"        # waiting for a worker (maybe after a backoff)
    HELD = "held"              # waiting for a person's approval (approvals/): never claimed
    RUNNING = "running"        # claimed by a worker
    DONE = "done"              # every instance sent (or gone)
    DEAD = "dead"              # parked: refused instances or attempts spent; retried by hand
    CANCELLED = "cancelled"    # cancelled by a person


class ItemState(StrEnum):
    PENDING = "pending"
    SENT = "sent"
    REFUSED = "refused"                # the receiver (or the capability) refused it for good
    GONE = "gone"                      # the source instance was deleted meanwhile
    NOT_COMMITTED = "not-committed"    # delivered, but the storage commitment said it is not kept


# The page and the API list the states in this order.
ALL_JOB_STATES = (JobState.PENDING, JobState.HELD, JobState.RUNNING, JobState.DONE,
                  JobState.DEAD, JobState.CANCELLED)
# Items that never reached their destination and will not: the job is parked for them.
FAILED_ITEM_STATES = (ItemState.REFUSED, ItemState.NOT_COMMITTED)
# The states still being worked on or waiting for someone: few, whatever the table's history
# (the finished ones make most of it), so they are counted through the index by state.
LIVE_JOB_STATES = (JobState.PENDING, JobState.HELD, JobState.RUNNING, JobState.DEAD)
