"""The Conquest-compatible index: layout, dicom.sql, RT metrics, deletion, read-only queries.
The store's tests run on each engine (`make_index`: an SQLite file, then the real PostgreSQL);
SQLite's own read-only guards are tested on SQLite, PostgreSQL's in test_index_postgres.py."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import pytest

from orthanc_plugin.audit.tables import SCHEMA as AUDIT_SCHEMA
from orthanc_plugin.db_engine import StateDatabase
from orthanc_plugin.index import entries_store, rt_metrics
from orthanc_plugin.index.model import DEFAULT_LAYOUT, DicomSqlError, parse_dicom_sql
from orthanc_plugin.index.query import QueryError, QueryResult
from orthanc_plugin.index.store import IndexStore
from orthanc_plugin.index.tables import SCHEMA as ENTRIES_SCHEMA
from tests.conftest import MakeDatabase, MakeIndex
from tests.support.index_data import fill
from tests.support.rtset import RtSet, make_rt_set

CONQUEST_COLUMNS = [
    "PatientID", "PatientNam", "PatientBir", "PatientSex", "StudyInsta", "StudyDate", "StudyTime",
    "StudyID", "StudyDescr", "AccessionN", "ReferPhysi", "PatientsAg", "PatientsWe", "StudyModal",
    "SeriesInst", "SeriesNumb", "SeriesDate", "SeriesTime", "SeriesDesc", "Modality", "PatientPos",
    "ContrastBo", "Manufactur", "ModelName", "BodyPartEx", "ProtocolNa", "FrameOfRef", "SOPInstanc",
    "SOPClassUI", "ImageNumbe", "ImageDate", "ImageTime", "EchoNumber", "NumberOfFr", "AcqDate",
    "AcqTime", "ReceivingC", "AcqNumber", "SliceLocat", "SamplesPer", "PhotoMetri", "Rows",
    "Colums", "BitsStored", "ImageType", "ImageID", "ObjectFile", "DeviceName", "AccessTime",
    "qTimeStamp", "qFlags", "qSpare",
]


@pytest.fixture(scope="module")
def rtset() -> RtSet:
    return make_rt_set("IDX-1", plan_label="ADP1", n_slices=6, rows=32, columns=32)


@pytest.fixture()
def store(make_index: MakeIndex, rtset: RtSet) -> IndexStore:
    return fill(make_index(), rtset)


@pytest.fixture()
def sqlite_store(tmp_path: Path, rtset: RtSet) -> IndexStore:
    return fill(IndexStore(tmp_path / "conquest.sqlite", DEFAULT_LAYOUT), rtset)


def run_query(store: IndexStore, sql: str) -> QueryResult:
    """The user's SQL, through the index's read-only reader (either engine)."""
    return store.reader.run_query(sql)


def columns(store: IndexStore) -> set[str]:
    found: set[str] = set()
    for table in ("DICOMpatients", "DICOMstudies", "DICOMseries", "DICOMimages"):
        found |= set(run_query(store, f"select * from {table} limit 0").columns)
    return found


def test_conquest_tables_and_truncated_columns(store: IndexStore) -> None:
    assert set(CONQUEST_COLUMNS) <= columns(store)


def test_conquest_queries_run_unchanged(store: IndexStore, rtset: RtSet) -> None:
    result = run_query(store, "select seriesinst from dicomseries where modality='RTPLAN'")
    assert result.rows == [(str(rtset.rtplan.SeriesInstanceUID),)]
    images = run_query(store, "select count(*), min(ObjectFile) from DICOMimages "
                                   "where ImagePat='IDX-1'")
    assert images.rows == [(len(rtset.all()), "orthanc-0")]
    study = run_query(store, "select StudyModal, PatientNam from DICOMstudies")
    assert study.rows == [("CT\\RTDOSE\\RTPLAN\\RTSTRUCT", "Test^Patient")]


def test_rt_metrics_equal_the_known_values(store: IndexStore, rtset: RtSet) -> None:
    plan = run_query(store, "select PlanLabel, Fractions, PrescriptionGy, BeamCount, TotalMU,"
                                 " SHA256 from RTplans").as_json()["rows"][0]
    # 60 Gy in 20 fractions over 4 beams: 0.75 Gy per beam, 1.15 MU per cGy.
    assert plan == {"PlanLabel": "ADP1", "Fractions": 20, "PrescriptionGy": 60.0, "BeamCount": 4,
                    "TotalMU": pytest.approx(4 * 86.25), "SHA256": "ab" * 32}
    beams = run_query(store, "select BeamName, Energy, GantryStart, MU from RTbeams "
                                  "order by BeamNumber").rows
    assert beams == [(f"G{a:03d}", 6.0, float(a), 86.25) for a in (0, 90, 180, 270)]
    struct = run_query(store, "select ROICount, ROINames from RTstructs").rows
    assert struct == [(3, "BODY\\PTV\\Rectum")]
    dose = run_query(store, "select Units, Summation, DoseMinGy, DoseMaxGy, SpacingRow "
                                 "from RTdoses").rows[0]
    assert dose[:2] == ("GY", "PLAN")
    assert dose[2] == pytest.approx(0.0) and dose[3] == pytest.approx(61.8, abs=1e-4)
    assert dose[4] == 2.5
    refs = run_query(store, "select RefKind, count(*) from RTreferences group by RefKind "
                                 "order by RefKind").rows
    assert refs == [("image", 6), ("plan", 1), ("structure-set", 1)]


def test_removing_the_last_image_of_each_level_removes_the_level(
    store: IndexStore, rtset: RtSet
) -> None:
    store.remove(str(rtset.rtplan.SOPInstanceUID))
    assert run_query(store, "select count(*) from RTplans").rows == [(0,)]
    assert run_query(store, "select count(*) from dicomseries where modality='RTPLAN'"
                     ).rows == [(0,)]
    for ds in rtset.all():
        store.remove(str(ds.SOPInstanceUID))
    for table in ("DICOMimages", "DICOMseries", "DICOMstudies", "DICOMpatients"):
        assert run_query(store, f"select count(*) from {table}").rows == [(0,)]


@pytest.mark.parametrize("sql", [
    "delete from DICOMimages",
    "update DICOMseries set Modality='X'",
    "create table evil(x)",
    "pragma query_only=OFF",
    "attach database 'other.sqlite' as other",
])
def test_writes_are_refused_by_sqlite(sqlite_store: IndexStore, sql: str) -> None:
    store = sqlite_store
    before = run_query(store, "select count(*) from DICOMimages").rows
    with contextlib.suppress(QueryError):
        run_query(store, sql)
    assert run_query(store, "select count(*) from DICOMimages").rows == before
    with pytest.raises(QueryError):
        run_query(store, "delete from DICOMimages")
    assert "evil" not in {r[0] for r in run_query(
        store, "select name from sqlite_master").rows}


def test_write_refusal_comes_from_sqlite(sqlite_store: IndexStore) -> None:
    with pytest.raises(QueryError, match=r"readonly|read-only|query_only"):
        run_query(sqlite_store, "DeLeTe/**/FROM DICOMimages")


def test_dicom_sql_adds_a_column_to_an_existing_index(make_index: MakeIndex, rtset: RtSet) -> None:
    first = make_index()
    first.put(rtset.ct[0], "x", None)
    text = """/* site layout */
*Image*
{
    { 0x0008, 0x0018, "SOPInstanceUID", 64, SQL_C_CHAR, DT_UI },
    { 0x0018, 0x0050, "SliceThickness", 16, SQL_C_CHAR, DT_STR },
    { 0x0020, 0x000e, "SeriesInstanceUID", 64, SQL_C_CHAR, DT_UI }
}
*WorkList*
{
    { 0x0008, 0x0050, "AccessionNumber", 16, SQL_C_CHAR, DT_STR, "OBR.3" }
}
"""
    layout = parse_dicom_sql(text)
    assert [c.name for c in layout.of("image")] == ["SOPInstanc", "SliceThick", "SeriesInst"]
    assert layout.of("series") == DEFAULT_LAYOUT.of("series")
    second = make_index(layout)
    second.put(rtset.ct[1], "y", None)
    rows = run_query(second, "select SliceThick from DICOMimages order by ObjectFile").rows
    assert rows == [(None,), ("2.5",)]


def test_dicom_sql_without_levels_is_refused() -> None:
    with pytest.raises(DicomSqlError):
        parse_dicom_sql("nothing here")


def test_rt_reference_kinds(rtset: RtSet) -> None:
    assert rt_metrics.references(rtset.rtplan) == [
        ("structure-set", str(rtset.rtstruct.SOPInstanceUID))]
    assert rt_metrics.references(rtset.ct[0]) == []


def test_read_only_connection_cannot_write_directly(sqlite_store: IndexStore) -> None:
    from orthanc_plugin.index.query import SqliteIndexReader, read_only_connection

    assert isinstance(sqlite_store.reader, SqliteIndexReader)
    connection = read_only_connection(sqlite_store.reader.path)
    with pytest.raises(sqlite3.OperationalError):
        connection.execute("insert into DICOMpatients(PatientID) values('x')")


# -- the store's reads (plan page, maintenance selection, table dump) -----------------------------
def test_series_of_a_patient_are_its_series_only(store: IndexStore, rtset: RtSet) -> None:
    other = make_rt_set("IDX-2", n_slices=1, rows=8, columns=8, with_dose=False)
    for number, ds in enumerate(other.all()):
        store.put(ds, f"other-{number}", None)
    expected = {str(ds.SeriesInstanceUID) for ds in rtset.all()}
    found = store.series_of_patient("IDX-1")
    assert found is not None and sorted(found) == sorted(expected)
    assert store.series_of_patient("IDX-%") == []       # a value, not a pattern
    assert store.series_of_patient("nobody") == []


def test_plan_rows_of_the_plan_and_its_members(store: IndexStore, rtset: RtSet) -> None:
    plan_uid = str(rtset.rtplan.SOPInstanceUID)
    plan = store.plan_row(plan_uid)
    assert plan is not None and plan["PlanLabel"] == "ADP1" and plan["Fractions"] == 20
    assert store.plan_row(str(rtset.rtstruct.SOPInstanceUID)) is None
    beams = store.beam_rows(plan_uid)
    assert [beam["BeamNumber"] for beam in beams] == [1, 2, 3, 4]
    assert [beam["BeamName"] for beam in beams] == ["G000", "G090", "G180", "G270"]
    rois = store.roi_rows([str(rtset.rtstruct.SOPInstanceUID), "unknown"])
    assert [roi["ROIName"] for roi in rois] == ["BODY", "PTV", "Rectum"]
    assert [roi["ROINumber"] for roi in rois] == sorted(roi["ROINumber"] for roi in rois)
    assert rtset.rtdose is not None
    doses = store.dose_rows([str(rtset.rtdose.SOPInstanceUID)])
    assert len(doses) == 1 and doses[0]["DoseMaxGy"] == pytest.approx(61.8, abs=1e-4)
    assert store.roi_rows([]) == [] and store.dose_rows([]) == []
    assert store.roi_rows([plan_uid]) == []       # a plan's SOP is not a structure set's


def test_dose_maxima_across_more_uids_than_one_statement_takes(
    store: IndexStore, rtset: RtSet
) -> None:
    assert rtset.rtdose is not None
    dose_uid = str(rtset.rtdose.SOPInstanceUID)
    uids = [f"1.2.3.{n}" for n in range(1200)] + [dose_uid]
    assert store.dose_maxima(uids) == {dose_uid: pytest.approx(61.8, abs=1e-4)}
    with store.db.transaction() as connection:
        connection.execute(f"UPDATE {store.table('RTdoses')} SET DoseMaxGy=NULL")
    assert store.dose_maxima([dose_uid]) == {}   # indexed without a maximum: left out


def test_plan_summaries_by_plan_uid(store: IndexStore, rtset: RtSet) -> None:
    plan_uid = str(rtset.rtplan.SOPInstanceUID)
    summaries = store.plan_summaries([f"9.9.{n}" for n in range(700)] + [plan_uid])
    assert list(summaries) == [plan_uid]
    summary = summaries[plan_uid]
    assert (summary.intent, summary.fractions, summary.prescription_gy, summary.beams) == (
        "CURATIVE", 20, 60.0, 4)
    assert summary.total_mu == pytest.approx(4 * 86.25)


def test_dump_table_reads_every_row_read_only(store: IndexStore, rtset: RtSet) -> None:
    result = store.dump_table("RTbeams", 100, 1_000_000)
    assert len(result.rows) == 4 and "BeamName" in result.columns and not result.truncated
    assert store.dump_table("RTbeams", 2, 1_000_000).truncated
    with pytest.raises(ValueError):
        store.dump_table('RTbeams"; DROP TABLE "RTplans', 10, 1_000)


# -- the gateway database's side: received rows followed, index entries kept ---------------------
@pytest.fixture()
def gateway(make_database: MakeDatabase) -> StateDatabase:
    """On each engine: several nodes keep their index entries in the shared PostgreSQL."""
    db = make_database([AUDIT_SCHEMA, ENTRIES_SCHEMA])
    with db.transaction() as connection:
        for instance_id, state, modality in (("i1", "ready", "CT"), ("i2", "gone", None),
                                             ("i3", "new", "RTPLAN"), ("i4", "ready", "RTDOSE")):
            connection.execute(
                "INSERT INTO received(instance_id, received_at, state, modality, patient_id,"
                " study_uid) VALUES(?,?,?,?,?,?)", (instance_id, "t", state, modality, "P", "S"))
    return db


def entries(db: StateDatabase) -> dict[str, str]:
    return {row["instance_id"]: row["sop_instance_uid"]
            for row in db.query("SELECT * FROM index_entries")}


def test_received_after_a_seq_in_order_and_limited(gateway: StateDatabase) -> None:
    rows = entries_store.received_after(gateway, 0, 10)
    assert [(row.seq, row.instance_id, row.state, row.modality) for row in rows] == [
        (1, "i1", "ready", "CT"), (2, "i2", "gone", None), (3, "i3", "new", "RTPLAN"),
        (4, "i4", "ready", "RTDOSE")]
    assert (rows[0].patient_id, rows[0].study_uid) == ("P", "S")
    assert [row.instance_id for row in entries_store.received_after(gateway, 1, 2)] == ["i2", "i3"]
    assert entries_store.received_after(gateway, 4, 10) == []


def test_index_entries_noted_replaced_and_forgotten(gateway: StateDatabase) -> None:
    with gateway.transaction() as connection:
        for instance_id in ("i1", "i2", "i4"):
            entries_store.note_indexed(connection, instance_id, f"sop-{instance_id}")
        entries_store.note_indexed(connection, "i1", "sop-again")   # indexed again: replaced
    assert entries(gateway) == {"i1": "sop-again", "i2": "sop-i2", "i4": "sop-i4"}
    assert entries_store.gone_entries(gateway) == [entries_store.IndexEntry("i2", "sop-i2")]
    with gateway.transaction() as connection:
        entries_store.forget(connection, ["i2", "i4", "never-indexed"])
    assert entries(gateway) == {"i1": "sop-again"}
    assert entries_store.gone_entries(gateway) == []
    with gateway.transaction() as connection:
        entries_store.forget_all(connection)
    assert entries(gateway) == {}
