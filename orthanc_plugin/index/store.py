"""Writes the index file: one instance in (all four levels and its RT rows), one instance out."""

from __future__ import annotations

import sqlite3
import time
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
from orthanc_plugin.index.tables import RT_SCHEMA, RT_TABLES_BY_SOP

DEVICE_NAME = "ORTHANC"   # Conquest's storage device; here Orthanc's storage holds the files


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
