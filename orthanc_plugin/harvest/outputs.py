"""What a harvest leaves in its folder: a ZIP per patient and the inventory CSV, written atomically."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from orthanc_plugin.csv_cells import safe_row

if TYPE_CHECKING:
    from orthanc_plugin.harvest.store import HarvestItem

INVENTORY_COLUMNS = (
    "level", "patient_id", "study_uid", "series_uid", "modality", "description", "state",
    "expected_instances", "stored_instances", "attempts", "moves", "zip_name", "last_error",
)


def harvest_folder(root: Path, harvest_id: int) -> Path:
    return root / f"harvest-{harvest_id}"


def inside(folder: Path, name: str) -> Path:
    """folder/name, refusing any name that would resolve outside folder."""
    path = (folder / name).resolve()
    if path.parent != folder.resolve():
        raise ValueError(f"file name {name!r} leaves the folder {folder}")
    return path


def write_atomically(path: Path, data: bytes) -> None:
    """A reader sees the old file or the whole new one, never half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.partial")
    with temporary.open("wb") as stream:
        stream.write(data)
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(temporary, path)


def inventory_cells(item: HarvestItem) -> tuple[object, ...]:
    """An item's values under INVENTORY_COLUMNS, in that order (a contract test checks each is
    the column its header names)."""
    return (item.level, item.patient_id, item.study_uid, item.series_uid, item.modality,
            item.description, item.state, item.expected_instances, item.stored_instances,
            item.attempts, item.moves, item.zip_name, item.last_error)


def inventory_csv(items: Iterable[HarvestItem]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(INVENTORY_COLUMNS)
    for item in items:
        writer.writerow(safe_row("" if value is None else value for value in inventory_cells(item)))
    return out.getvalue()
