"""What the intake recorded of each received instance, read by the parts that act on them.

The received table's read store for other parts: the keys a destination is asked about
(forwarding's verification) and the file sizes a transfer row counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from orthanc_plugin.db_engine import StateDatabase

# Instance IDs per IN (...) query: well under SQLite's bound on parameters.
CHUNK = 500


@dataclass(frozen=True)
class ReceivedKeys:
    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str


def received_keys(db: StateDatabase, instance_ids: Sequence[str]) -> dict[str, ReceivedKeys]:
    """The described instances among these (one not described yet is absent)."""
    keys: dict[str, ReceivedKeys] = {}
    for chunk in _chunks(instance_ids):
        for row in db.query(
                "SELECT instance_id, study_uid, series_uid, sop_instance_uid, sop_class_uid "
                f"FROM received WHERE instance_id IN ({','.join('?' * len(chunk))}) "
                "AND sop_instance_uid IS NOT NULL", tuple(chunk)):
            keys[row["instance_id"]] = ReceivedKeys(
                row["study_uid"] or "", row["series_uid"] or "", row["sop_instance_uid"],
                row["sop_class_uid"] or "")
    return keys


def received_sizes(db: StateDatabase, instance_ids: Sequence[str]) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for chunk in _chunks(instance_ids):
        for row in db.query(
                f"SELECT instance_id, file_size FROM received WHERE instance_id IN "
                f"({','.join('?' * len(chunk))})", tuple(chunk)):
            sizes[row["instance_id"]] = row["file_size"] or 0
    return sizes


def _chunks(instance_ids: Sequence[str]) -> list[list[str]]:
    ids = list(instance_ids)
    return [ids[start:start + CHUNK] for start in range(0, len(ids), CHUNK)]
