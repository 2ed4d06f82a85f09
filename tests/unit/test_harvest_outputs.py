from dataclasses import fields
from pathlib import Path

import pytest

from orthanc_plugin.harvest.model import zip_name
from orthanc_plugin.harvest.outputs import (
    INVENTORY_COLUMNS,
    inside,
    inventory_cells,
    inventory_csv,
    write_atomically,
)
from orthanc_plugin.harvest.store import HarvestItem


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


def harvest_item(**values: object) -> HarvestItem:
    """A series item; every column the inventory does not show has a value of its own."""
    base: dict[str, object] = {
        "id": 1, "harvest_id": 2, "parent_id": 3, "patient_item_id": 4, "level": "series",
        "depth": 3, "patient_id": "P", "study_uid": "1", "series_uid": "2", "modality": "CT",
        "description": "", "state": "complete", "attempts": 1, "moves": 1, "next_attempt_at": 0.0,
        "expected_instances": None, "stored_instances": 3, "orthanc_series_id": "o",
        "query_id": "q", "answer_index": 0, "orthanc_job": "j", "zip_name": None,
        "zip_series_count": None, "last_error": None, "found_in_pass": 1, "updated_at": "t",
    }
    base.update(values)
    return HarvestItem(**base)  # type: ignore[arg-type]


def test_inventory_has_a_header_and_blank_unknowns() -> None:
    text = inventory_csv([harvest_item()])
    assert text.splitlines() == [
        "level,patient_id,study_uid,series_uid,modality,description,state,expected_instances,"
        "stored_instances,attempts,moves,zip_name,last_error",
        "series,P,1,2,CT,,complete,,3,1,1,,",
    ]


def test_each_inventory_cell_is_the_column_its_header_names() -> None:
    """Contract: inventory_cells lists the item's values in INVENTORY_COLUMNS' order."""
    item = harvest_item(**{column: f"value of {column}" for column in INVENTORY_COLUMNS})
    assert inventory_cells(item) == tuple(f"value of {column}" for column in INVENTORY_COLUMNS)
    assert set(INVENTORY_COLUMNS) <= {field.name for field in fields(HarvestItem)}
