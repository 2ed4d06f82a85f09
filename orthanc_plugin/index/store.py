"""The index file's store: writes one instance in (all four levels and its RT rows) or out, and
reads what the maintenance actions and the plan page need of it. SQL only here (and in query.py,
which runs the user's read-only SQL); the gateway database's side is entries_store.py.

Identifiers in the SQL are the layout's column names, double-quoted (model.py takes no name with
a double quote), and fixed table names; a table a request names is one of the file's own.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

from orthanc_plugin.db import Database
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
from orthanc_plugin.index.query import QueryResult, run_query
from orthanc_plugin.index.tables import RT_SCHEMA, RT_TABLES_BY_SOP

DEVICE_NAME = "ORTHANC"   # Conquest's storage device; here Orthanc's storage holds the files
CHUNK = 500               # SQLite caps the number of parameters of one statement


@dataclass(frozen=True)
class PlanSummary:
    intent: str | None
    fractions: int | None
    prescription_gy: float | None
    beams: int | None
    total_mu: float | None


class IndexStore:
    def __init__(self, path: Path, layout: Layout) -> None:
        self.path = path
        self.layout = layout
        self.db = Database(path, [RT_SCHEMA, ";\n".join(create_statements(layout)) + ";"])
        self._add_missing_columns()

    def _add_missing_columns(self) -> None:
        """A dicom.sql that adds columns to an existing index: ALTER TABLE, no rebuild needed."""
        connection = self.db.connection()
        for level in LEVELS:
            table = TABLES[level]
            present = {row["name"].lower() for row in connection.execute(f"PRAGMA table_info({table})")}
            for name in all_columns(self.layout, level):
                if name.lower() not in present:
                    connection.execute(f'ALTER TABLE {table} ADD COLUMN "{name}" TEXT')

    # -- in ------------------------------------------------------------------------------------
    def put(self, ds: Dataset, instance_id: str, sha256: str | None) -> None:
        stamp = str(int(time.time()))

        def lookup(tag: int) -> Any:
            element = ds.get(tag)
            return None if element is None or element.VR == "SQ" else element.value

        with self.db.transaction() as connection:
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

    def _upsert(self, connection: sqlite3.Connection, level: str, row: dict[str, Any]) -> None:
        table, key = TABLES[level], self.layout.key(level).name
        if not row.get(key):
            return  # Conquest needs the key of every level; without it the level is skipped
        names = list(row)
        quoted = ", ".join(f'"{n}"' for n in names)
        updates = ", ".join(f'"{n}"=COALESCE(excluded."{n}", "{n}")' for n in names if n != key)
        connection.execute(
            f'INSERT INTO {table}({quoted}) VALUES({",".join("?" * len(names))}) '
            f'ON CONFLICT("{key}") DO UPDATE SET {updates}',
            [row[n] for n in names],
        )

    def _refresh_study_modalities(self, connection: sqlite3.Connection, ds: Dataset) -> None:
        """Conquest fills StudyModality from the series of the study, not from one image."""
        study_columns = {c.name for c in self.layout.of("study")}
        series_link = self.layout.parent_link("series")
        if "StudyModal" not in study_columns or series_link is None or "StudyInstanceUID" not in ds:
            return
        uid = str(ds.StudyInstanceUID)
        rows = connection.execute(
            f'SELECT DISTINCT Modality FROM DICOMseries WHERE "{series_link.name}"=?', (uid,)
        ).fetchall()
        connection.execute(
            f'UPDATE DICOMstudies SET StudyModal=? WHERE "{self.layout.key("study").name}"=?',
            (modalities_in_study(row[0] for row in rows), uid),
        )

    def _put_rt(self, connection: sqlite3.Connection, ds: Dataset, modality: str,
                sha256: str | None) -> None:
        sop = str(ds.SOPInstanceUID)
        self._delete_rt(connection, sop)
        common = {"SOPInstanc": sop, "PatientID": str(ds.get("PatientID", "")),
                  "SeriesInst": str(ds.get("SeriesInstanceUID", ""))}
        if modality == "RTSTRUCT":
            summary, rois = rt_metrics.structure_set(ds)
            _insert(connection, "RTstructs", {**common, **summary, "SHA256": sha256})
            for roi in rois:
                _insert(connection, "RTrois", {"SOPInstanc": sop, **roi})
        elif modality == "RTPLAN":
            summary, beams = rt_metrics.plan(ds)
            _insert(connection, "RTplans", {**common, **summary, "SHA256": sha256})
            for beam in beams:
                _insert(connection, "RTbeams", {"SOPInstanc": sop, **beam})
        elif modality == "RTDOSE":
            _insert(connection, "RTdoses", {**common, **rt_metrics.dose(ds), "SHA256": sha256})
        for kind, uid in rt_metrics.references(ds):
            _insert(connection, "RTreferences",
                    {"SOPInstanc": sop, "Modality": modality, "RefKind": kind, "RefSOPInst": uid})

    # -- out -----------------------------------------------------------------------------------
    def remove(self, sop_instance_uid: str) -> None:
        """The image row, its RT rows, then each parent level left without children."""
        layout = self.layout
        image_key = layout.key("image").name
        image_link = layout.parent_link("image")
        with self.db.transaction() as connection:
            self._delete_rt(connection, sop_instance_uid)
            parent = None
            if image_link is not None:
                found = connection.execute(
                    f'SELECT "{image_link.name}" FROM DICOMimages WHERE "{image_key}"=?',
                    (sop_instance_uid,),
                ).fetchone()
                parent = found[0] if found else None
            connection.execute(f'DELETE FROM DICOMimages WHERE "{image_key}"=?', (sop_instance_uid,))
            for child, level in (("image", "series"), ("series", "study"), ("study", "patient")):
                link = layout.parent_link(child)
                if parent is None or link is None:
                    break
                if connection.execute(
                    f'SELECT 1 FROM {TABLES[child]} WHERE "{link.name}"=? LIMIT 1', (parent,)
                ).fetchone():
                    break
                key = layout.key(level).name
                up = layout.parent_link(level)
                found = connection.execute(
                    f'SELECT "{up.name}" FROM {TABLES[level]} WHERE "{key}"=?', (parent,)
                ).fetchone() if up is not None else None
                connection.execute(f'DELETE FROM {TABLES[level]} WHERE "{key}"=?', (parent,))
                parent = found[0] if found else None

    def clear(self) -> None:
        """Every row out, tables kept: the start of a full rebuild."""
        with self.db.transaction() as connection:
            for table in (*TABLES.values(), *RT_TABLES_BY_SOP):
                connection.execute(f"DELETE FROM {table}")

    def has_image(self, sop_instance_uid: str) -> bool:
        key = self.layout.key("image").name
        return bool(self.db.query(f'SELECT 1 FROM DICOMimages WHERE "{key}"=? LIMIT 1',
                                  (sop_instance_uid,)))

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
            f'SELECT s."{series_key}" FROM DICOMseries s JOIN DICOMstudies t '
            f'ON s."{series_link.name}" = t."{study_key}" WHERE t."{study_link.name}" = ?',
            (patient_id,))
        return [row[0] for row in rows if row[0]]

    def dump_table(self, table: str, max_rows: int, max_result_bytes: int) -> QueryResult:
        """Every row of `table`, read-only; `table` must be one table_names(path) gave."""
        if '"' in table:
            raise ValueError(f"not a table name: {table!r}")
        return run_query(self.path, f'SELECT * FROM "{table}"', max_rows,
                         max_result_bytes=max_result_bytes)

    def plan_row(self, sop_instance_uid: str) -> dict[str, object] | None:
        rows = self.db.query("SELECT * FROM RTplans WHERE SOPInstanc=?", (sop_instance_uid,))
        return dict(rows[0]) if rows else None

    def beam_rows(self, plan_uid: str) -> list[dict[str, object]]:
        return [dict(row) for row in self.db.query(
            "SELECT * FROM RTbeams WHERE SOPInstanc=? ORDER BY BeamNumber", (plan_uid,))]

    def roi_rows(self, structure_set_uids: Sequence[str]) -> list[dict[str, object]]:
        if not structure_set_uids:
            return []
        return [dict(row) for row in self.db.query(
            f"SELECT * FROM RTrois WHERE SOPInstanc IN ({_marks(structure_set_uids)}) "
            "ORDER BY ROINumber", structure_set_uids)]

    def dose_rows(self, dose_uids: Sequence[str]) -> list[dict[str, object]]:
        if not dose_uids:
            return []
        return [dict(row) for row in self.db.query(
            f"SELECT * FROM RTdoses WHERE SOPInstanc IN ({_marks(dose_uids)})", dose_uids)]

    def dose_maxima(self, dose_uids: Sequence[str]) -> dict[str, float]:
        """Dose SOP Instance UID -> DoseMaxGy, for the doses indexed with one."""
        maxima: dict[str, float] = {}
        for start in range(0, len(dose_uids), CHUNK):
            chunk = dose_uids[start:start + CHUNK]
            for row in self.db.query(
                    f"SELECT SOPInstanc, DoseMaxGy FROM RTdoses WHERE SOPInstanc IN ({_marks(chunk)})",
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
                    f"FROM RTplans WHERE SOPInstanc IN ({_marks(chunk)})", chunk):
                answer[row["SOPInstanc"]] = PlanSummary(
                    row["PlanIntent"], row["Fractions"], row["PrescriptionGy"], row["BeamCount"],
                    row["TotalMU"])
        return answer

    @staticmethod
    def _delete_rt(connection: sqlite3.Connection, sop: str) -> None:
        for table in RT_TABLES_BY_SOP:
            connection.execute(f"DELETE FROM {table} WHERE SOPInstanc=?", (sop,))


def _insert(connection: sqlite3.Connection, table: str, row: dict[str, Any]) -> None:
    names = list(row)
    connection.execute(
        f"INSERT INTO {table}({', '.join(names)}) VALUES({','.join('?' * len(names))})",
        [row[n] for n in names],
    )


def _marks(values: Sequence[object]) -> str:
    return ",".join("?" * len(values))
