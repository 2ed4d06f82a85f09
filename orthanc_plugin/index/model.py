"""Conquest's database layout: levels, columns, the dicom.sql format and row values. Pure.

The default columns are those of the `dicom.sql` Conquest DICOM server ships (the SQLite variant,
as in github.com/marcelvanherk/Conquest-DICOM-Server and the PyConquest indexer that mimics it):
`{ group, element, "ColumnName", length, SQL type, DICOM type }` per level, the last column of a
level linking it to its parent. Conquest cuts column names to 10 characters
("StudyInstanceUID" -> "StudyInsta"), and so do we, so that old queries run unchanged. Conquest's
own columns (ObjectFile, DeviceName, AccessTime, qTimeStamp, qFlags, qSpare) are added as it does.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

LEVELS = ("patient", "study", "series", "image")
TABLES = {"patient": "DICOMpatients", "study": "DICOMstudies", "series": "DICOMseries",
          "image": "DICOMimages"}
_SECTIONS = {"Patient": "patient", "Study": "study", "Series": "series", "Image": "image"}
NAME_LENGTH = 10
# Columns Conquest maintains itself, after the DICOM ones.
OWN_COLUMNS = {
    "patient": ("AccessTime", "qTimeStamp", "qFlags", "qSpare"),
    "study": ("AccessTime", "qTimeStamp", "qFlags", "qSpare"),
    "series": ("AccessTime", "qTimeStamp", "qFlags", "qSpare"),
    "image": ("ObjectFile", "DeviceName", "AccessTime", "qTimeStamp", "qFlags", "qSpare"),
}


class DicomSqlError(ValueError):
    """A dicom.sql that cannot be used; the message says where."""


@dataclass(frozen=True)
class Column:
    level: str
    group: int
    element: int
    written: str          # as in dicom.sql, e.g. "StudyInstanceUID"

    @property
    def name(self) -> str:
        return self.written[:NAME_LENGTH]

    @property
    def tag(self) -> int:
        return (self.group << 16) | self.element


@dataclass(frozen=True)
class Layout:
    columns: tuple[Column, ...]

    def of(self, level: str) -> list[Column]:
        """The level's columns, names unique (a repeated name keeps its first definition)."""
        seen: set[str] = set()
        chosen = []
        for column in self.columns:
            if column.level == level and column.name.lower() not in seen:
                seen.add(column.name.lower())
                chosen.append(column)
        return chosen

    def key(self, level: str) -> Column:
        return self.of(level)[0]

    def parent_link(self, level: str) -> Column | None:
        """Conquest's convention: the last column of a level names its parent's key."""
        return None if level == "patient" else self.of(level)[-1]


def _c(level: str, spec: str) -> list[Column]:
    columns = []
    for line in spec.strip().splitlines():
        group, element, name = line.split()
        columns.append(Column(level, int(group, 16), int(element, 16), name))
    return columns


DEFAULT_LAYOUT = Layout(tuple(
    _c("patient", """
        0010 0020 PatientID
        0010 0010 PatientName
        0010 0030 PatientBirthDate
        0010 0040 PatientSex""")
    + _c("study", """
        0020 000d StudyInstanceUID
        0008 0020 StudyDate
        0008 0030 StudyTime
        0020 0010 StudyID
        0008 1030 StudyDescription
        0008 0050 AccessionNumber
        0008 0090 ReferPhysician
        0010 1010 PatientsAge
        0010 1030 PatientsWeight
        0008 0061 StudyModality
        0010 0010 PatientName
        0010 0030 PatientBirthDate
        0010 0040 PatientSex
        0010 0020 PatientID""")
    + _c("series", """
        0020 000e SeriesInstanceUID
        0020 0011 SeriesNumber
        0008 0021 SeriesDate
        0008 0031 SeriesTime
        0008 103e SeriesDescription
        0008 0060 Modality
        0018 5100 PatientPosition
        0018 0010 ContrastBolusAgent
        0008 0070 Manufacturer
        0008 1090 ModelName
        0018 0015 BodyPartExamined
        0018 1030 ProtocolName
        0008 1010 StationName
        0008 0080 Institution
        0020 0052 FrameOfReferenceUID
        0010 0020 SeriesPat
        0020 000d StudyInstanceUID""")
    + _c("image", """
        0008 0018 SOPInstanceUID
        0008 0016 SOPClassUID
        0020 0013 ImageNumber
        0008 0023 ImageDate
        0008 0033 ImageTime
        0018 0086 EchoNumber
        0028 0008 NumberOfFrames
        0008 0022 AcqDate
        0008 0032 AcqTime
        0018 1250 ReceivingCoil
        0020 0012 AcqNumber
        0020 1041 SliceLocation
        0028 0002 SamplesPerPixel
        0028 0004 PhotoMetricInterpretation
        0028 0010 Rows
        0028 0011 Colums
        0028 0101 BitsStored
        0008 0008 ImageType
        0054 0400 ImageID
        0010 0020 ImagePat
        0020 000e SeriesInstanceUID""")
))

_SECTION = re.compile(r"\*(\w+)\*\s*\{(.*?)\n\}", re.S)
_ENTRY = re.compile(r"\{\s*0x([0-9a-fA-F]{4})\s*,\s*0x([0-9a-fA-F]{4})\s*,\s*\"([^\"]+)\"")


def parse_dicom_sql(text: str) -> Layout:
    """A Conquest-format dicom.sql: *Patient* / *Study* / *Series* / *Image* sections (others, such
    as *WorkList*, are ignored). A level it leaves out keeps the default columns."""
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    found: dict[str, list[Column]] = {}
    for section, body in _SECTION.findall(text):
        level = _SECTIONS.get(section)
        if level is None:
            continue
        entries = [Column(level, int(g, 16), int(e, 16), name) for g, e, name in _ENTRY.findall(body)
                   if not name.startswith("-")]
        if len(entries) < 2:
            raise DicomSqlError(f"*{section}*: expected at least a key and a parent link, "
                                f"got {len(entries)} column(s)")
        found[level] = entries
    if not found:
        raise DicomSqlError("no *Patient*, *Study*, *Series* or *Image* section")
    columns: list[Column] = []
    for level in LEVELS:
        columns += found.get(level) or [c for c in DEFAULT_LAYOUT.columns if c.level == level]
    return Layout(tuple(columns))


def text_of(value: Any) -> str | None:
    """An attribute value as Conquest stores it: text, multiple values joined with a backslash."""
    if value is None:
        return None
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        return "\\".join(str(item) for item in value)
    if isinstance(value, bytes):
        return value.decode("latin-1", "replace").rstrip("\x00 ")
    return str(value)


def level_row(layout: Layout, level: str, lookup: Callable[[int], Any]) -> dict[str, str | None]:
    """Column name -> value for one level; `lookup(tag)` returns the attribute's value or None."""
    return {column.name: text_of(lookup(column.tag)) for column in layout.of(level)}


def create_statements(layout: Layout, fold_case: bool = False) -> list[str]:
    """The four tables with their key and parent indexes. `fold_case` (PostgreSQL): column names
    in lower case, as PostgreSQL folds a name written without quotes, so a Conquest query that
    writes `seriesinst` or `SeriesInst` finds the column there as it does in SQLite."""
    def quoted(name: str) -> str:
        return f'"{name.lower() if fold_case else name}"'

    statements = []
    for level in LEVELS:
        names = [c.name for c in layout.of(level)] + list(OWN_COLUMNS[level])
        table = TABLES[level]
        statements.append(
            f"CREATE TABLE IF NOT EXISTS {table}(" + ", ".join(f"{quoted(n)} TEXT" for n in names)
            + ")"
        )
        key = layout.key(level).name
        statements.append(f"CREATE UNIQUE INDEX IF NOT EXISTS {table}_key ON {table}({quoted(key)})")
        link = layout.parent_link(level)
        if link is not None:
            statements.append(
                f"CREATE INDEX IF NOT EXISTS {table}_parent ON {table}({quoted(link.name)})")
    return statements


def all_columns(layout: Layout, level: str) -> list[str]:
    return [c.name for c in layout.of(level)] + list(OWN_COLUMNS[level])


def modalities_in_study(values: Iterable[str | None]) -> str:
    return "\\".join(sorted({value for value in values if value}))
