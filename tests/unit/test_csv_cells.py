"""Every CSV the gateway serves neutralises formula-like cells (OWASP): a DICOM value such as
=HYPERLINK(...) in a PatientName must open in Excel as text, not run."""

from __future__ import annotations

import csv
import io

import pytest

from orthanc_plugin.audit.queries import to_csv
from orthanc_plugin.csv_cells import safe_cell
from orthanc_plugin.harvest.outputs import INVENTORY_COLUMNS, inventory_csv
from orthanc_plugin.index.query import QueryResult
from orthanc_plugin.plans.routes import _csv as plans_csv
from tests.unit.test_harvest_outputs import harvest_item

HOSTILE = ['=HYPERLINK("http://evil","x")', "=cmd|' /C calc'!A0", "+1+1", "-2+3", "@SUM(A1)",
           "\tTAB", "\rCR"]


@pytest.mark.parametrize("value", HOSTILE)
def test_formula_like_text_gets_a_leading_apostrophe(value: str) -> None:
    assert safe_cell(value) == "'" + value


def test_plain_values_and_numbers_are_unchanged() -> None:
    assert safe_cell("Doe^John") == "Doe^John"
    assert safe_cell(-2.5) == -2.5 and safe_cell(None) is None


def _cells(text: str) -> list[str]:
    return [cell for row in csv.reader(io.StringIO(text)) for cell in row]


def test_every_csv_writer_neutralises() -> None:
    value = HOSTILE[0]
    outputs = [
        to_csv([{"patient_name": value, "n": 1}]),
        inventory_csv([harvest_item(**{column: value for column in INVENTORY_COLUMNS})]),
        QueryResult(["PatientNam"], [(value,)], False).as_csv(),
        plans_csv([{"id": "p", "patient_name": value, "label": value, "missing": [],
                    "objects": []}]),
    ]
    for text in outputs:
        cells = _cells(text)
        assert value not in cells, text
        assert "'" + value in cells, text
