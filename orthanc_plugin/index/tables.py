"""The index lives apart from the gateway's state (so a read-only query sees nothing else): its own
SQLite file on one node, its own schema on a shared PostgreSQL (index/postgres_store.py). The
gateway database only remembers which Orthanc instances the index holds, to follow deletions."""

import re

from orthanc_plugin.index.model import LEVELS, TABLES, Layout, all_columns

SCHEMA = """
CREATE TABLE IF NOT EXISTS index_entries(
    instance_id TEXT PRIMARY KEY,
    sop_instance_uid TEXT NOT NULL
);
"""

# RT tables of the index file; the Conquest tables come from the layout (index/model.py).
RT_SCHEMA = """
CREATE TABLE IF NOT EXISTS RTstructs(
    SOPInstanc TEXT PRIMARY KEY, PatientID TEXT, SeriesInst TEXT, StructureSetLabel TEXT,
    ROICount INTEGER, ROINames TEXT, SHA256 TEXT
);
CREATE TABLE IF NOT EXISTS RTrois(
    SOPInstanc TEXT NOT NULL, ROINumber INTEGER, ROIName TEXT, ROIType TEXT, ContourCount INTEGER
);
CREATE INDEX IF NOT EXISTS RTrois_sop ON RTrois(SOPInstanc);
CREATE TABLE IF NOT EXISTS RTplans(
    SOPInstanc TEXT PRIMARY KEY, PatientID TEXT, SeriesInst TEXT, PlanLabel TEXT, PlanName TEXT,
    PlanDate TEXT, PlanIntent TEXT, Fractions INTEGER, PrescriptionGy REAL, BeamCount INTEGER,
    TotalMU REAL, SHA256 TEXT
);
CREATE TABLE IF NOT EXISTS RTbeams(
    SOPInstanc TEXT NOT NULL, BeamNumber INTEGER, BeamName TEXT, BeamType TEXT,
    RadiationType TEXT, Energy REAL, GantryStart REAL, MU REAL
);
CREATE INDEX IF NOT EXISTS RTbeams_sop ON RTbeams(SOPInstanc);
CREATE TABLE IF NOT EXISTS RTdoses(
    SOPInstanc TEXT PRIMARY KEY, PatientID TEXT, SeriesInst TEXT, Rows INTEGER, Columns INTEGER,
    Frames INTEGER, SpacingRow REAL, SpacingCol REAL, SpacingZ REAL, Units TEXT, DoseType TEXT,
    Summation TEXT, DoseMinGy REAL, DoseMeanGy REAL, DoseMaxGy REAL, SHA256 TEXT
);
CREATE TABLE IF NOT EXISTS RTreferences(
    SOPInstanc TEXT NOT NULL, Modality TEXT, RefKind TEXT, RefSOPInst TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS RTreferences_sop ON RTreferences(SOPInstanc);
CREATE INDEX IF NOT EXISTS RTreferences_ref ON RTreferences(RefSOPInst);
"""

RT_TABLES_BY_SOP = ("RTstructs", "RTrois", "RTplans", "RTbeams", "RTdoses", "RTreferences")

# Each RT column as the schema writes it (PostgreSQL keeps names folded to lower case).
RT_COLUMNS = tuple(dict.fromkeys(re.findall(r"(\w+) (?:TEXT|INTEGER|REAL)\b", RT_SCHEMA)))


def index_names(layout: Layout) -> dict[str, str]:
    """Lower-cased name -> the name as written, for every table and column of the index: what
    PostgreSQL answers in lower case is given back as SQLite gives it (`SeriesInst`)."""
    written = [*TABLES.values(), *RT_TABLES_BY_SOP, *RT_COLUMNS,
               *(name for level in LEVELS for name in all_columns(layout, level))]
    names: dict[str, str] = {}
    for name in written:
        names.setdefault(name.lower(), name)
    return names
