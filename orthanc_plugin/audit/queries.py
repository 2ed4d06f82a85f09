"""Read-only views of the audit for the REST API: filtered rows, CSV, per-rule/target stats.

SQL both engines accept (db_engine): rows are ordered by each table's own key (PostgreSQL has no
rowid; in SQLite these keys are the rowid), and the one integer column a filter compares is given
a number, never a text PostgreSQL would refuse."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Mapping
from typing import Any

from orthanc_plugin.csv_cells import safe_mapping
from orthanc_plugin.db_engine import StateDatabase

# kind -> (table, time column, the filters that table can answer)
AUDIT_KINDS: dict[str, tuple[str, str, dict[str, str]]] = {
    "transfers": (
        "transfers",
        "started_at",
        {"patient": "patient_id", "study": "study_uid", "rule": "rule", "target": "target",
         "status": "status"},
    ),
    "evaluations": (
        "evaluations",
        "at",
        {"patient": "patient_id", "study": "study_uid", "rule": "rule", "status": "matched"},
    ),
    "received": (
        "received",
        "received_at",
        {"patient": "patient_id", "study": "study_uid", "status": "state"},
    ),
    "events": (
        "audit_events",
        "at",
        {"patient": "patient_id", "study": "study_uid", "rule": "rule", "target": "target",
         "status": "status"},
    ),
    "quarantine": ("quarantine", "at", {}),
}


# Each table's key, the order of rows stamped alike (an INTEGER PRIMARY KEY: SQLite's rowid).
KEY_COLUMNS = {"transfers": "id", "evaluations": "id", "received": "seq", "audit_events": "id",
               "quarantine": "id"}
# A text SQLite reads as a number when compared with an INTEGER column (its numeric literals,
# blanks around them allowed); any other text equals no integer.
SQLITE_NUMBER = re.compile(r"[ \t\n\v\f\r]*[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?"
                           r"[ \t\n\v\f\r]*")

MAX_AUDIT_ROWS = 100_000
PAGING = ("kind", "since", "until", "format", "limit", "offset", "order")


class AuditQueryError(ValueError):
    pass


def audit_rows(db: StateDatabase, filters: Mapping[str, str]) -> list[dict[str, Any]]:
    kind = filters.get("kind", "transfers")
    if kind not in AUDIT_KINDS:
        raise AuditQueryError(f"kind: expected one of {', '.join(AUDIT_KINDS)}, got {kind!r}")
    table, time_column, columns = AUDIT_KINDS[kind]
    clauses: list[str] = []
    parameters: list[Any] = []
    if filters.get("since"):
        clauses.append(f"{time_column} >= ?")
        parameters.append(filters["since"])
    if filters.get("until"):
        clauses.append(f"{time_column} < ?")
        parameters.append(filters["until"])
    for name, value in filters.items():
        if name in PAGING:
            continue
        if name not in columns:
            known = ", ".join([*PAGING, *columns])
            raise AuditQueryError(f"{name}: not a filter of {kind} (filters: {known})")
        if kind == "evaluations" and name == "status":
            number = _as_sqlite_number({"matched": "1", "not-matched": "0"}.get(value, value))
            if number is None:
                clauses.append("1 = 0")   # matched is an integer: it equals no such text
                continue
            clauses.append(f"{columns[name]} = ?")
            parameters.append(number)
            continue
        clauses.append(f"{columns[name]} = ?")
        parameters.append(value)
    limit_text = filters.get("limit") or "10000"
    if not limit_text.isdigit() or len(limit_text) > 12 or int(limit_text) < 1:
        raise AuditQueryError(f"limit: expected a whole number from 1, got {limit_text[:40]!r}")
    # Clamped, not refused: a client asking for "everything" gets the most one answer holds.
    limit = min(int(limit_text), MAX_AUDIT_ROWS)
    offset_text = filters.get("offset") or "0"
    if not offset_text.isdigit() or len(offset_text) > 12:
        raise AuditQueryError(f"offset: expected a whole number from 0, got {offset_text[:40]!r}")
    # Oldest first by default (an export reads in order); the page asks newest first.
    order = filters.get("order") or "asc"
    if order not in ("asc", "desc"):
        raise AuditQueryError(f"order: expected asc or desc, got {order[:40]!r}")
    direction = "DESC" if order == "desc" else "ASC"
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    sql = (f"SELECT * FROM {table} {where} ORDER BY {time_column} {direction}, "
           f"{KEY_COLUMNS[table]} {direction} LIMIT ? OFFSET ?")
    return [dict(row) for row in db.query(sql, [*parameters, limit, int(offset_text)])]


def _as_sqlite_number(text: str) -> int | float | None:
    """The number SQLite makes of `text` compared with an INTEGER column, or None when it keeps
    the text (which then equals no row): PostgreSQL refuses such a text for a bigint."""
    if not SQLITE_NUMBER.fullmatch(text):
        return None
    number = float(text.strip(" \t\n\v\f\r"))
    return int(number) if number.is_integer() else number


def to_csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(safe_mapping(row) for row in rows)
    return buffer.getvalue()


def _group(groups: dict[str, dict[str, Any]], name: str) -> dict[str, Any]:
    """A rule's or target's stats entry; one with jobs but no transfer yet starts at zero."""
    return groups.setdefault(name, {"sent": 0, "bytes": 0, "successful_transfers": 0, "failed": 0})


def stats(db: StateDatabase) -> dict[str, Any]:
    """Per rule and per target: instances sent, failed attempts, jobs pending and parked."""
    result: dict[str, Any] = {}
    for key in ("rule", "target"):
        groups: dict[str, dict[str, Any]] = {}
        for row in db.query(
            f"SELECT {key} AS name, "
            "SUM(CASE WHEN status='success' THEN 1 ELSE 0 END) AS successful_transfers, "
            "SUM(CASE WHEN status<>'success' THEN 1 ELSE 0 END) AS failed_transfers, "
            "SUM(instances) AS instances_sent, SUM(bytes) AS bytes_sent "
            f"FROM transfers GROUP BY {key}"
        ):
            groups[row["name"]] = {
                "sent": row["instances_sent"] or 0,
                "bytes": row["bytes_sent"] or 0,
                "successful_transfers": row["successful_transfers"] or 0,
                "failed": row["failed_transfers"] or 0,
            }
        for row in db.query(
            f"SELECT {key} AS name, "
            "SUM(CASE WHEN state IN ('pending','running') THEN 1 ELSE 0 END) AS pending, "
            "SUM(CASE WHEN state='dead' THEN 1 ELSE 0 END) AS parked, "
            "SUM(CASE WHEN state='held' THEN 1 ELSE 0 END) AS held, "
            "SUM(CASE WHEN state='done' THEN 1 ELSE 0 END) AS done "
            f"FROM jobs GROUP BY {key}"
        ):
            _group(groups, row["name"]).update(
                pending=row["pending"], parked=row["parked"], jobs_done=row["done"],
                awaiting_approval=row["held"])
        # Instances finally failed: those of parked jobs that did not arrive (retries to a node
        # that was down are not failures once the instance arrives).
        for row in db.query(
            f"SELECT j.{key} AS name, COUNT(*) AS n FROM job_items i JOIN jobs j ON j.id = i.job_id "
            f"WHERE j.state = 'dead' AND i.state <> 'sent' GROUP BY j.{key}"
        ):
            _group(groups, row["name"])["instances_parked"] = row["n"]
        # Storage commitment (forwarding's records, forwarding/tables.py): sent vs what the
        # receiver confirmed.
        for row in db.query(
            f"SELECT i.{key} AS name, "
            "SUM(CASE WHEN commit_state='committed' THEN 1 ELSE 0 END) AS committed, "
            "SUM(CASE WHEN commit_state IN ('due','requested') THEN 1 ELSE 0 END) AS waiting, "
            "SUM(CASE WHEN commit_state='failed' THEN 1 ELSE 0 END) AS failed "
            "FROM forward_items f JOIN job_items i ON i.job_id = f.job_id AND "
            f"i.instance_id = f.instance_id WHERE f.commit_state IS NOT NULL GROUP BY i.{key}"
        ):
            _group(groups, row["name"])["commitment"] = {
                "committed": row["committed"], "waiting": row["waiting"],
                "not_committed": row["failed"]}
        for name, entry in groups.items():
            entry.setdefault("pending", 0)
            entry.setdefault("parked", 0)
            entry.setdefault("jobs_done", 0)
            entry.setdefault("instances_parked", 0)
            entry.setdefault("awaiting_approval", 0)
            last = db.query(
                f"SELECT error, ended_at FROM transfers WHERE {key}=? AND status<>'success' "
                "ORDER BY id DESC LIMIT 1",
                (name,),
            )
            entry["last_error"] = last[0]["error"] if last else None
            entry["last_error_at"] = last[0]["ended_at"] if last else None
        result[f"by_{key}"] = groups
    return result
