"""Kept for the configurations that still name this path as Orthanc's PythonScript (sites set up
before the plugin side moved to in_orthanc/): runs in_orthanc/entry.py, the one to name now."""

import runpy
from pathlib import Path

runpy.run_path(str(Path(__file__).resolve().parent / "in_orthanc" / "entry.py"))
