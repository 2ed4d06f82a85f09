from pathlib import Path

import pytest

from orthanc_plugin.harvest.model import zip_name
from orthanc_plugin.harvest.outputs import inside, inventory_csv, write_atomically


@pytest.mark.parametrize("patient_id", ["../../etc", "A/B", "..", "/abs", "a\\..\\b"])
def test_a_zip_of_any_patient_id_stays_in_its_folder(tmp_path: Path, patient_id: str) -> None:
    path = inside(tmp_path / "harvest-1", zip_name(patient_id, 3))
    write_atomically(path, b"zip")
    assert path.parent == (tmp_path / "harvest-1").resolve()
    assert [p.name for p in (tmp_path / "harvest-1").iterdir()] == [path.name]


def test_inside_refuses_names_that_leave_the_folder(tmp_path: Path) -> None:
    for name in ("../x.zip", "a/b.zip", "/etc/passwd"):
        with pytest.raises(ValueError):
            inside(tmp_path, name)


def test_write_atomically_replaces_and_leaves_no_partial_file(tmp_path: Path) -> None:
    path = tmp_path / "out" / "inventory.csv"
    write_atomically(path, b"old")
    write_atomically(path, b"new")
    assert path.read_bytes() == b"new"
    assert [p.name for p in path.parent.iterdir()] == ["inventory.csv"]


def test_inventory_has_a_header_and_blank_unknowns() -> None:
    row = {"level": "series", "patient_id": "P", "study_uid": "1", "series_uid": "2", "modality": "CT",
           "description": "", "state": "complete", "expected_instances": None, "stored_instances": 3,
           "attempts": 1, "moves": 1, "zip_name": None, "last_error": None}
    text = inventory_csv([row])  # type: ignore[list-item]
    assert text.splitlines() == [
        "level,patient_id,study_uid,series_uid,modality,description,state,expected_instances,"
        "stored_instances,attempts,moves,zip_name,last_error",
        "series,P,1,2,CT,,complete,,3,1,1,,",
    ]
