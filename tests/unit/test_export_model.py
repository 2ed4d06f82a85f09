"""DRAW export without Orthanc: names, unsafe IDs, non-ASCII names, never twice, atomic writes."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import pydicom
import pytest

from orthanc_plugin.capabilities import load_rules_text
from orthanc_plugin.db import META_SCHEMA, Database
from orthanc_plugin.export.exporter import Source, export_instance
from orthanc_plugin.export.files import DestinationUnavailable, inside, write_atomically
from orthanc_plugin.export.model import (
    DEFAULT_TEMPLATE,
    Decision,
    TemplateError,
    render_name,
    safe_component,
    template_keywords,
)
from orthanc_plugin.export.rule import ExportAction
from orthanc_plugin.export.tables import SCHEMA, previous_exports, record_export, transfers
from orthanc_plugin.rules import RulesError
from tests.conftest import MakeDatabase
from tests.support.rtset import make_rt_set


def part10(patient_id: str = "PAT1", name: str = "Doe^John", charset: str = "ISO_IR 100",
           label: str = "RTGW") -> bytes:
    ds = make_rt_set(patient_id, n_slices=1).rtstruct
    ds.SpecificCharacterSet = charset
    ds.PatientName = name
    ds.StructureSetLabel = label
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.fixture
def db(tmp_path: Path) -> Database:
    return Database(tmp_path / "g.sqlite", [META_SCHEMA, SCHEMA])


SOURCE = Source("orthanc-id", "AUTOSEG", "DRAW export")


@pytest.mark.parametrize(
    ("patient_id", "expected"),
    [("../../etc", "etc"), ("A/B", "A_B"), ("..", "UNKNOWN"), ("a\\b:c*?", "a_b_c"),
     ("Müller Ångström", "Muller_Angstrom"), ("山田", "UNKNOWN"), (" 12345 ", "12345")],
)
def test_values_become_one_safe_component(patient_id: str, expected: str) -> None:
    assert safe_component(patient_id) == expected
    name = render_name(DEFAULT_TEMPLATE, {"PatientID": patient_id, "SOPInstanceUID": "1.2.3"})
    assert name == f"DRAW_{expected}_1.2.3.dcm"


def test_templates_are_checked() -> None:
    assert template_keywords("DRAW_{HospitalID}_{SOPInstanceUID}.dcm") == ["HospitalID",
                                                                           "SOPInstanceUID"]
    for bad in ("../{PatientID}.dcm", "{NotAKeyword}.dcm", "{PatientID!r}.dcm", "{PatientID:>5}",
                "{}", "x{"):
        with pytest.raises(TemplateError):
            template_keywords(bad)
    text = """
rules:
  - name: DRAW export
    on: instance
    match: {calling_aet: AUTOSEG, modality: RTSTRUCT}
    actions:
      - export: {folder: /data/draw, filename: "sub/{PatientID}.dcm"}
"""
    with pytest.raises(RulesError) as error:
        load_rules_text(text)
    assert error.value.path == "rules[0].actions[0].export.filename"
    action = load_rules_text(text.replace('"sub/{PatientID}.dcm"', '"X_{StudyDate}.dcm"')).rules[
        0].actions[0]
    assert action == ExportAction("/data/draw", "X_{StudyDate}.dcm")
    short = load_rules_text(text.replace(
        '{folder: /data/draw, filename: "sub/{PatientID}.dcm"}', "/data/draw")).rules[0].actions[0]
    assert short == ExportAction("/data/draw", DEFAULT_TEMPLATE)


def test_exported_once_then_skipped_and_changed_content_versioned(db: Database, tmp_path: Path) -> None:
    folder = tmp_path / "draw"
    folder.mkdir()
    data = part10("PAT1")
    sop = str(pydicom.dcmread(BytesIO(data)).SOPInstanceUID)
    first = export_instance(db, folder, DEFAULT_TEMPLATE, data, SOURCE)
    assert first.decision is Decision.WRITE and first.name == f"DRAW_PAT1_{sop}.dcm"
    assert (folder / first.name).read_bytes() == data
    again = export_instance(db, folder, DEFAULT_TEMPLATE, data, SOURCE)
    assert again.decision is Decision.SKIP and again.name == first.name
    changed = pydicom.dcmread(BytesIO(data))
    changed.StructureSetLabel = "EDITED"
    buffer = BytesIO()
    changed.save_as(buffer, enforce_file_format=True)
    second = export_instance(db, folder, DEFAULT_TEMPLATE, buffer.getvalue(), SOURCE)
    assert second.decision is Decision.WRITE and second.name == f"DRAW_PAT1_{sop}_v2.dcm"
    assert sorted(p.name for p in folder.iterdir()) == sorted([first.name, second.name])
    rows = transfers(db, {"sop": sop})
    assert [r["ModifiedFileName"] for r in rows] == [first.name, second.name]
    assert rows[0]["PatientUID"] == "PAT1" and rows[0]["SourceAET"] == "AUTOSEG"
    assert rows[0]["DestinationPath"] == str(folder) and rows[0]["StudyDate"]
    with pytest.raises(KeyError):
        transfers(db, {"colour": "red"})


@pytest.mark.parametrize(("charset", "name"), [("ISO_IR 100", "Müller^Jörg"),
                                               ("ISO_IR 192", "山田^太郎")])
def test_non_ascii_names_are_kept_in_the_table(db: Database, tmp_path: Path, charset: str,
                                               name: str) -> None:
    data = part10("PAT-Ü", name, charset)
    outcome = export_instance(db, tmp_path, "DRAW_{PatientName}_{SOPInstanceUID}.dcm", data, SOURCE)
    assert outcome.name.isascii() and (tmp_path / outcome.name).exists()
    assert transfers(db, {})[0]["PatientName"] == name


def test_unsafe_patient_ids_stay_in_the_folder(db: Database, tmp_path: Path) -> None:
    folder = tmp_path / "deep" / "draw"
    folder.mkdir(parents=True)
    for patient_id in ("../../etc", "A/B", "../x"):
        export_instance(db, folder, DEFAULT_TEMPLATE, part10(patient_id), SOURCE)
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix == ".dcm"]
    assert len(written) == 3 and all(p.parent == folder for p in written)
    with pytest.raises(ValueError):
        inside(folder, "../escape.dcm")


def test_missing_destination_raises_for_a_retry_and_records_nothing(
    db: Database, tmp_path: Path
) -> None:
    with pytest.raises(DestinationUnavailable):
        export_instance(db, tmp_path / "not-mounted", DEFAULT_TEMPLATE, part10(), SOURCE)
    assert transfers(db, {}) == []
    # A file where the folder should be (a share's mount point replaced by a file) is no folder.
    (tmp_path / "file").write_text("x")
    with pytest.raises(DestinationUnavailable):
        write_atomically(tmp_path / "file", "x.dcm", b"data")


def test_atomic_write_leaves_no_temporary_file(tmp_path: Path) -> None:
    path = write_atomically(tmp_path, "a.dcm", b"1" * 1000)
    assert path.read_bytes() == b"1" * 1000
    assert [p.name for p in tmp_path.iterdir()] == ["a.dcm"]


def test_the_table_keeps_the_draw_tools_names_on_either_engine(make_database: MakeDatabase) -> None:
    """Rows read back with the mixed-case names the DRAW tool wrote (PostgreSQL folds unquoted
    names to lower case), filtered and in the order written."""
    db = make_database([SCHEMA])
    row = {"PatientUID": "PAT1", "PatientName": "Doe^John", "SOPInstanceUID": "1.2.3",
           "SourcePath": "orthanc:/instances/x", "SourceAET": "AUTOSEG", "StudyDate": "20240101",
           "ModifiedFileName": "a.dcm", "DestinationPath": "/draw", "ExportDate": "now",
           "ContentSHA256": "aa", "Rule": "DRAW export"}
    first = record_export(db, row)
    second = record_export(db, {**row, "ModifiedFileName": "a_v2.dcm", "ContentSHA256": "bb"})
    record_export(db, {**row, "SOPInstanceUID": "9.9", "PatientUID": "PAT2"})
    assert second == first + 1
    assert previous_exports(db, "1.2.3", "/draw") == [("aa", "a.dcm"), ("bb", "a_v2.dcm")]
    assert previous_exports(db, "1.2.3", "/elsewhere") == []
    rows = transfers(db, {"patient": "PAT1", "destination": "/draw", "format": "csv"})
    assert [r["ModifiedFileName"] for r in rows] == ["a.dcm", "a_v2.dcm"]
    assert list(rows[0]) == ["id", *row]
    assert [r["PatientUID"] for r in transfers(db, {}, limit=2)] == ["PAT1", "PAT1"]
