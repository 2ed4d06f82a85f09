"""The index's store: writes one instance in (all four levels and its RT rows) or out, and reads
what the maintenance actions and the plan page need of it. SQL only here (and in query.py and
postgres_query.py, which run the user's read-only SQL; postgres_store.py makes the tables on
PostgreSQL); the gateway database's side is entries_store.py.

One node: its own SQLite file. Several nodes: the gateway's PostgreSQL, tables in a schema of
their own (`conquest`), column names in lower case (model.create_statements); each node writes an
instance the same way, so two nodes indexing one instance leave one row (upserts under a lock per
patient, _lock).

Identifiers in the SQL are the layout's column names, double-quoted (model.py takes no name with
a double quote), and fixed table names; a table a request names is one of the index's own.
"""

from __future__ import annotations

import re
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

from orthanc_plugin.db import Database
from orthanc_plugin.db_engine import POSTGRESQL, DbConnection, DbRow, StateDatabase
from orthanc_plugin.index import rt_metrics
from orthanc_plugin.index.model import (
    LEVELS,
    TABLES,
    Layout,
    all_columns,
    create_statements,
    level_row,
    modalities_in_study,
)
from orthanc_plugin.index.query import IndexReader, QueryResult, SqliteIndexReader
from orthanc_plugin.index.tables import RT_SCHEMA, RT_TABLES_BY_SOP, index_names

DEVICE_NAME = "ORTHANC"   # Conquest's storage device; here Orthanc's storage holds the files
CHUNK = 500               # SQLite caps the number of parameters of one statement
# The index's advisory locks on PostgreSQL, one per patient (apart from the queue's 250_001, the
# intake's 250_002 and the plans' 250_010).
INDEX_LOCK_SPACE = 250_020
TABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


@dataclass(frozen=True)
class PlanSummary:
    intent: str | None
    fractions: int | None
    prescription_gy: float | None
    beams: int | None
    total_mu: float | None


class IndexStore:
    """The index in its own SQLite file (`IndexStore(path, layout)`, one node), or in `db`, the
    gateway's PostgreSQL, with the tables postgres_store.open_postgres_index made in `schema` and
    its `reader` (several nodes). `reader` runs the user's read-only SQL on the index."""

    def __init__(self, db: StateDatabase | Path, layout: Layout,
                 reader: IndexReader | None = None, schema: str = "") -> None:
        if isinstance(db, Path):
            path = db
            db = Database(path, [RT_SCHEMA, ";\n".join(create_statements(layout)) + ";"])
            _add_missing_columns(db, layout)
            reader = SqliteIndexReader(path)
        if reader is None:
            raise ValueError("an index on PostgreSQL is read through its reader role")
        self.db: StateDatabase = db
        self.layout = layout
        self.reader = reader
        self.schema = schema
        self._postgres = db.dialect == POSTGRESQL
        self._names = index_names(layout)

    def table(self, name: str) -> str:
        """A table of the index as the SQL names it (in its schema on PostgreSQL)."""
        return f"{self.schema}.{name}" if self.schema else name

    def _column(self, name: str) -> str:
        """A layout column, quoted as its table was made (lower case on PostgreSQL)."""
        return f'"{name.lower()}"' if self._postgres else f'"{name}"'

    def _row(self, row: DbRow) -> dict[str, object]:
        """A row with its columns named as in SQLite (PostgreSQL answers them in lower case)."""
        # keys(): iterating a row gives its values, not its names.
        return {self._names.get(key.lower(), key): row[key] for key in row.keys()}  # noqa: SIM118

    def _lock(self, connection: DbConnection, *keys: str | None) -> None:
        """On PostgreSQL, taken first in a transaction that writes the index: one advisory lock
        per patient (the first key given: PatientID, else the study's or the image's UID), so
        two nodes writing one patient's rows go one after the other and each statement after
        the lock sees what the other committed (the study's modalities gathered from every
        series, a level removed only when no other node has just added to it, an RT row
        replaced rather than doubled). SQLite: one writer at a time already."""
        key = next((key for key in keys if key), None)
        if not self._postgres or key is None:
            return
        number = zlib.crc32(key.encode())
        connection.execute("SELECT pg_advisory_xact_lock(CAST(? AS INTEGER), CAST(? AS INTEGER))",
                           (INDEX_LOCK_SPACE, number - (1 << 32) if number >= 1 << 31 else number)
                           ).fetchall()

    # -- in ------------------------------------------------------------------------------------
    def put(self, ds: Dataset, instance_id: str, sha256: str | None) -> None:
        stamp = str(int(time.time()))

        def lookup(tag: int) -> Any:
            element = ds.get(tag)
            return None if element is None or element.VR == "SQ" else element.value

        def key_of(level: str) -> str | None:
            value = level_row(self.layout, level, lookup).get(self.layout.key(level).name)
            return value or None

        with self.db.transaction() as connection:
            self._lock(connection, key_of("patient"), key_of("study"), key_of("image"))
            for level in LEVELS:
                row = level_row(self.layout, level, lookup)
                own = {"AccessTime": stamp, "qTimeStamp": stamp, "qFlags": "0", "qSpare": ""}
                if level == "image":
                    own.update(ObjectFile=instance_id, DeviceName=DEVICE_NAME)
                self._upsert(connection, level, {**row, **own})
            self._refresh_study_modalities(connection, ds)
            modality = str(ds.get("Modality", "")).upper()
            if modality in rt_metrics.REFERENCE_KINDS:
                self._put_rt(connection, ds, modality, sha256)

    def _upsert(self, connection: DbConnection, level: str, row: dict[str, Any]) -> None:
        table, key = TABLES[level], self.layout.key(level).name
        if not row.get(key):
            return  # Conquest needs the key of every level; without it the level is skipped
        names = list(row)
        quoted = ", ".join(self._column(n) for n in names)
        # `cur.`: PostgreSQL finds a bare column name ambiguous beside `excluded`.
        updates = ", ".join(f"{self._column(n)}=COALESCE(excluded.{self._column(n)}, "
                            f"cur.{self._column(n)})" for n in names if n != key)
        connection.execute(
            f'INSERT INTO {self.table(table)} AS cur({quoted}) VALUES({",".join("?" * len(names))}) '
            f"ON CONFLICT({self._column(key)}) DO UPDATE SET {updates}",
            [row[n] for n in names],
        )

    def _refresh_study_modalities(self, connection: DbConnection, ds: Dataset) -> None:
        """Conquest fills StudyModality from the series of the study, not from one image."""
        study_columns = {c.name for c in self.layout.of("study")}
        series_link = self.layout.parent_link("series")
        if "StudyModal" not in study_columns or series_link is None or "StudyInstanceUID" not in ds:
            return
        uid = str(ds.StudyInstanceUID)
        rows = connection.execute(
            f"SELECT DISTINCT Modality FROM {self.table('DICOMseries')} "
            f"WHERE {self._column(series_link.name)}=?", (uid,)
        ).fetchall()
        connection.execute(
            f"UPDATE {self.table('DICOMstudies')} SET StudyModal=? "
            f"WHERE {self._column(self.layout.key('study').name)}=?",
            (modalities_in_study(row[0] for row in rows), uid),
        )

    def _put_rt(self, connection: DbConnection, ds: Dataset, modality: str,
                sha256: str | None) -> None:
        sop = str(ds.SOPInstanceUID)
        self._delete_rt(connection, sop)
        common = {"SOPInstanc": sop, "PatientID": str(ds.get("PatientID", "")),
                  "SeriesInst": str(ds.get("SeriesInstanceUID", ""))}
        if modality == "RTSTRUCT":
            summary, rois = rt_metrics.structure_set(ds)
            self._insert(connection, "RTstructs", {**common, **summary, "SHA256": sha256})
            for roi in rois:
                self._insert(connection, "RTrois", {"SOPInstanc": sop, **roi})
        elif modality == "RTPLAN":
            summary, beams = rt_metrics.plan(ds)
            self._insert(connection, "RTplans", {**common, **summary, "SHA256": sha256})
            for beam in beams:
                self._insert(connection, "RTbeams", {"SOPInstanc": sop, **beam})
        elif modality == "RTDOSE":
            self._insert(connection, "RTdoses",
                         {**common, **rt_metrics.dose(ds), "SHA256": sha256})
        for kind, uid in rt_metrics.references(ds):
            self._insert(connection, "RTreferences",
                    {"SOPInstanc": sop, "Modality": modality, "RefKind": kind, "RefSOPInst": uid})

    # -- out -----------------------------------------------------------------------------------
    def remove(self, sop_instance_uid: str) -> None:
        """The image row, its RT rows, then each parent level left without children."""
        layout = self.layout
        image_key = layout.key("image").name
        image_link = layout.parent_link("image")
        with self.db.transaction() as connection:
            self._lock(connection, *reversed(self._ancestors(connection, sop_instance_uid)))
            self._delete_rt(connection, sop_instance_uid)
            parent = None
            if image_link is not None:
                found = connection.execute(
                    f"SELECT {self._column(image_link.name)} FROM {self.table('DICOMimages')} "
                    f"WHERE {self._column(image_key)}=?", (sop_instance_uid,),
                ).fetchone()
                parent = found[0] if found else None
            connection.execute(f"DELETE FROM {self.table('DICOMimages')} "
                               f"WHERE {self._column(image_key)}=?", (sop_instance_uid,))
            for child, level in (("image", "series"), ("series", "study"), ("study", "patient")):
                link = layout.parent_link(child)
                if parent is None or link is None:
                    break
                if connection.execute(
                    f"SELECT 1 FROM {self.table(TABLES[child])} WHERE {self._column(link.name)}=? "
                    "LIMIT 1", (parent,)
                ).fetchone():
                    break
                key = self._column(layout.key(level).name)
                up = layout.parent_link(level)
                found = connection.execute(
                    f"SELECT {self._column(up.name)} FROM {self.table(TABLES[level])} "
                    f"WHERE {key}=?", (parent,)
                ).fetchone() if up is not None else None
                connection.execute(f"DELETE FROM {self.table(TABLES[level])} WHERE {key}=?",
                                   (parent,))
                parent = found[0] if found else None

    def _ancestors(self, connection: DbConnection, sop_instance_uid: str) -> list[str | None]:
        """The image's UID, then its series', study's and patient's keys as the index links them
        (None past a missing link): whose lock a removal takes, the one its put took."""
        chain: list[str | None] = [sop_instance_uid]
        for level in ("image", "series", "study"):
            link = self.layout.parent_link(level)
            if chain[-1] is None or link is None:
                chain.append(None)
                continue
            found = connection.execute(
                f"SELECT {self._column(link.name)} FROM {self.table(TABLES[level])} "
                f"WHERE {self._column(self.layout.key(level).name)}=?", (chain[-1],)).fetchone()
            chain.append(found[0] if found and found[0] else None)
        return chain

    def clear(self) -> None:
        """Every row out, tables kept: the start of a full rebuild."""
        with self.db.transaction() as connection:
            for table in (*TABLES.values(), *RT_TABLES_BY_SOP):
                connection.execute(f"DELETE FROM {self.table(table)}")

    def has_image(self, sop_instance_uid: str) -> bool:
        key = self._column(self.layout.key("image").name)
        return bool(self.db.query(f"SELECT 1 FROM {self.table('DICOMimages')} WHERE {key}=? "
                                  "LIMIT 1", (sop_instance_uid,)))

    # -- reads ---------------------------------------------------------------------------------
    def series_of_patient(self, patient_id: str) -> list[str] | None:
        """The patient's series instance UIDs (empty ones left out); None when the layout links
        no series to a patient."""
        layout = self.layout
        series_key, series_link = layout.key("series").name, layout.parent_link("series")
        study_key, study_link = layout.key("study").name, layout.parent_link("study")
        if series_link is None or study_link is None:
            return None
        rows = self.db.query(
            f"SELECT s.{self._column(series_key)} FROM {self.table('DICOMseries')} s "
            f"JOIN {self.table('DICOMstudies')} t ON s.{self._column(series_link.name)} = "
            f"t.{self._column(study_key)} WHERE t.{self._column(study_link.name)} = ?",
            (patient_id,))
        return [row[0] for row in rows if row[0]]

    def dump_table(self, table: str, max_rows: int, max_result_bytes: int) -> QueryResult:
        """Every row of `table`, read-only; `table` must be one reader.table_names() gave.
        Written without quotes: each engine finds its own spelling (PostgreSQL's lower case)."""
        if not TABLE_NAME.match(table):
            raise ValueError(f"not a table name: {table!r}")
        return self.reader.run_query(f"SELECT * FROM {table}", max_rows,
                                     max_result_bytes=max_result_bytes)

    def plan_row(self, sop_instance_uid: str) -> dict[str, object] | None:
        rows = self.db.query(f"SELECT * FROM {self.table('RTplans')} WHERE SOPInstanc=?",
                             (sop_instance_uid,))
        return self._row(rows[0]) if rows else None

    def beam_rows(self, plan_uid: str) -> list[dict[str, object]]:
        return [self._row(row) for row in self.db.query(
            f"SELECT * FROM {self.table('RTbeams')} WHERE SOPInstanc=? ORDER BY BeamNumber",
            (plan_uid,))]

    def roi_rows(self, structure_set_uids: Sequence[str]) -> list[dict[str, object]]:
        if not structure_set_uids:
            return []
        return [self._row(row) for row in self.db.query(
            f"SELECT * FROM {self.table('RTrois')} WHERE SOPInstanc IN "
            f"({_marks(structure_set_uids)}) ORDER BY ROINumber", structure_set_uids)]

    def dose_rows(self, dose_uids: Sequence[str]) -> list[dict[str, object]]:
        if not dose_uids:
            return []
        return [self._row(row) for row in self.db.query(
            f"SELECT * FROM {self.table('RTdoses')} WHERE SOPInstanc IN ({_marks(dose_uids)})",
            dose_uids)]

    def dose_maxima(self, dose_uids: Sequence[str]) -> dict[str, float]:
        """Dose SOP Instance UID -> DoseMaxGy, for the doses indexed with one."""
        maxima: dict[str, float] = {}
        for start in range(0, len(dose_uids), CHUNK):
            chunk = dose_uids[start:start + CHUNK]
            for row in self.db.query(
                    f"SELECT SOPInstanc, DoseMaxGy FROM {self.table('RTdoses')} "
                    f"WHERE SOPInstanc IN ({_marks(chunk)})",
                    chunk):
                if row["DoseMaxGy"] is not None:
                    maxima[row["SOPInstanc"]] = float(row["DoseMaxGy"])
        return maxima

    def plan_summaries(self, plan_uids: Sequence[str]) -> dict[str, PlanSummary]:
        answer: dict[str, PlanSummary] = {}
        for start in range(0, len(plan_uids), CHUNK):
            chunk = plan_uids[start:start + CHUNK]
            for row in self.db.query(
                    "SELECT SOPInstanc, PlanIntent, Fractions, PrescriptionGy, BeamCount, TotalMU "
                    f"FROM {self.table('RTplans')} WHERE SOPInstanc IN ({_marks(chunk)})", chunk):
                answer[row["SOPInstanc"]] = PlanSummary(
                    row["PlanIntent"], row["Fractions"], row["PrescriptionGy"], row["BeamCount"],
                    row["TotalMU"])
        return answer

    def _delete_rt(self, connection: DbConnection, sop: str) -> None:
        for table in RT_TABLES_BY_SOP:
            connection.execute(f"DELETE FROM {self.table(table)} WHERE SOPInstanc=?", (sop,))

    def _insert(self, connection: DbConnection, table: str, row: dict[str, Any]) -> None:
        names = list(row)
        connection.execute(
            f"INSERT INTO {self.table(table)}({', '.join(names)}) "
            f"VALUES({','.join('?' * len(names))})",
            [row[n] for n in names],
        )


def _add_missing_columns(db: Database, layout: Layout) -> None:
    """A dicom.sql that adds columns to an existing index: ALTER TABLE, no rebuild needed."""
    connection = db.connection()
    for level in LEVELS:
        table = TABLES[level]
        present = {row["name"].lower() for row in connection.execute(f"PRAGMA table_info({table})")}
        for name in all_columns(layout, level):
            if name.lower() not in present:
                connection.execute(f'ALTER TABLE {table} ADD COLUMN "{name}" TEXT')


def _marks(values: Sequence[object]) -> str:
    return ",".join("?" * len(values))
