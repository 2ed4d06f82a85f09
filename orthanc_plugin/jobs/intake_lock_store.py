"""One intake at a time across the nodes that share a database: the intake reads Orthanc's shared
changes log and queues work for every node, so two intakes would decide everything twice.

On PostgreSQL the intake runs only while its thread's connection holds a session advisory lock.
The server releases it the moment that connection ends: a node that dies, is killed or loses its
network hands the intake over within the time its connection takes to close (at once for a
killed process; TCP keepalive for a vanished machine), and another node's lead takes it on its
next pass. On SQLite there is one node: its lead always holds the intake.
"""

from __future__ import annotations

from orthanc_plugin.db_engine import POSTGRESQL, StateDatabase

# The advisory lock's two keys: a space of the gateway's own (apart from the queue's per-destination
# locks, jobs/queue.py CLAIM_LOCK_SPACE) and the intake's number in it.
INTAKE_LOCK_SPACE = 250_002
INTAKE_LOCK = 1


class IntakeLeadership:
    def __init__(self, db: StateDatabase) -> None:
        self.db = db

    def held(self) -> bool:
        """Whether this thread's connection holds the intake now, taking it when it is free.
        Called from the intake's thread before each pass (the lock belongs to its connection)."""
        if self.db.dialect != POSTGRESQL:
            return True
        connection = self.db.connection()
        mine = connection.execute(
            "SELECT 1 FROM pg_locks WHERE locktype='advisory' AND pid=pg_backend_pid() AND "
            "classid=CAST(? AS INTEGER) AND objid=CAST(? AS INTEGER) AND granted",
            (INTAKE_LOCK_SPACE, INTAKE_LOCK)).fetchall()
        if mine:
            return True
        row = connection.execute(
            "SELECT pg_try_advisory_lock(CAST(? AS INTEGER), CAST(? AS INTEGER)) AS taken",
            (INTAKE_LOCK_SPACE, INTAKE_LOCK)).fetchone()
        return bool(row["taken"])

    def holder(self) -> int | None:
        """The server process (pg_backend_pid) of the connection holding the intake, if any: for
        /health and the tests."""
        if self.db.dialect != POSTGRESQL:
            return None
        rows = self.db.query(
            "SELECT pid FROM pg_locks WHERE locktype='advisory' AND classid=CAST(? AS INTEGER) "
            "AND objid=CAST(? AS INTEGER) AND granted", (INTAKE_LOCK_SPACE, INTAKE_LOCK))
        return int(rows[0]["pid"]) if rows else None
