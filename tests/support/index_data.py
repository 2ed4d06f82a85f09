"""An index filled with one RT set, as the intake fills it: each instance with its Orthanc ID and,
for the RT objects, a file hash (the index store tests on each engine share it)."""

from __future__ import annotations

from orthanc_plugin.index.store import IndexStore
from tests.support.rtset import RtSet


def fill(index: IndexStore, rtset: RtSet) -> IndexStore:
    for number, ds in enumerate(rtset.all()):
        index.put(ds, f"orthanc-{number}", "ab" * 32 if ds.Modality != "CT" else None)
    return index
