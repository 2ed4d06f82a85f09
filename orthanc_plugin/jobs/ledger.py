"""What was assigned once per (rule, target, instance), kept after the job itself is pruned.

A 64-bit hash per row (a rowid table: about 15 bytes a row instead of the 250 of a job item), so
the memory of "already sent" can last as long as the archive. blake2b over 2**64 values: at ten
million instances the chance that any two collide is about 3 in a million, and a collision can
only keep an instance from being sent to one target by one rule, which the audit would show.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from orthanc_plugin.db_engine import DbConnection

# The table is part of the queue's schema (jobs/tables.py).


def ledger_key(rule: str, target: str, instance_id: str) -> int:
    digest = hashlib.blake2b(f"{rule}\0{target}\0{instance_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def in_ledger(connection: DbConnection, rule: str, target: str, instance_id: str) -> bool:
    return connection.execute("SELECT 1 FROM sent_ledger WHERE key=?",
                              (ledger_key(rule, target, instance_id),)).fetchone() is not None


def remember(connection: DbConnection, assigned: Iterable[tuple[str, str, str]]) -> None:
    connection.executemany("INSERT INTO sent_ledger(key) VALUES(?) ON CONFLICT DO NOTHING",
                           [(ledger_key(*row),) for row in assigned])
