"""Which series a maintenance action works on: {"patient": id}, {"series": [uids]} or {"query": sql}.

The query runs on the read-only connection (index/query.py, index/postgres_query.py) and must
return a SeriesInst column.
"""

from __future__ import annotations

from typing import Any

from orthanc_plugin.api.router import ApiError
from orthanc_plugin.index.query import QueryError
from orthanc_plugin.index.store import IndexStore

MAX_SERIES = 100_000
SELECT_HELP = ('select: expected {"patient": "<PatientID>"}, {"series": ["<SeriesInstanceUID>", ...]} '
               'or {"query": "<read-only SQL returning a SeriesInst column>"}')


def select_series(store: IndexStore, select: Any) -> list[str]:
    """Series instance UIDs, in first-seen order, without repeats."""
    if not isinstance(select, dict) or len(select) != 1:
        raise ApiError(400, SELECT_HELP)
    kind, value = next(iter(select.items()))
    if kind == "patient" and isinstance(value, str) and value:
        uids = patient_series(store, value)
    elif kind == "series" and isinstance(value, list) and value and all(
            isinstance(uid, str) and uid for uid in value):
        uids = list(value)
    elif kind == "query" and isinstance(value, str) and value.strip():
        uids = query_series(store, value)
    else:
        raise ApiError(400, SELECT_HELP)
    return list(dict.fromkeys(uids))


def patient_series(store: IndexStore, patient_id: str) -> list[str]:
    uids = store.series_of_patient(patient_id)
    if uids is None:
        raise ApiError(400, "select.patient: the index layout links no series to a patient")
    return uids


def query_series(store: IndexStore, sql: str) -> list[str]:
    try:
        result = store.reader.run_query(sql, MAX_SERIES)
    except QueryError as error:
        raise ApiError(400, f"select.query refused by {store.reader.engine}: {error}") from error
    wanted = store.layout.key("series").name.lower()
    columns = [name.lower() for name in result.columns]
    if wanted not in columns:
        raise ApiError(400, f"select.query: no {store.layout.key('series').name} column in "
                            f"{', '.join(result.columns) or 'the result'}")
    if result.truncated:
        raise ApiError(400, f"select.query: more than {MAX_SERIES} rows; narrow it")
    position = columns.index(wanted)
    return [str(row[position]) for row in result.rows if row[position]]
