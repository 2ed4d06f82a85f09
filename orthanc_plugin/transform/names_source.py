"""The name tables copies are normalized with: TG-263 plus a site's synonyms, read once per
file version (a physicist extending the table sees the next copy use it, no restart)."""

from __future__ import annotations

import threading
from pathlib import Path

from orthanc_plugin.transform.names import NameTable, NameTableError

NamesError = NameTableError


def check_site_synonyms(path: Path) -> None:
    """Raises NamesError naming the file and line of the first mistake."""
    NameTable.load(path)


class NameTables:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tables: dict[tuple[str, float], NameTable] = {}

    def __call__(self, site_synonyms: Path | None) -> NameTable:
        key = (str(site_synonyms or ""), _mtime(site_synonyms))
        with self._lock:
            table = self._tables.get(key)
            if table is None:
                table = NameTable.load(site_synonyms)
                self._tables = {key: table, **{k: v for k, v in self._tables.items()
                                               if k[0] != key[0]}}
            return table


def _mtime(path: Path | None) -> float:
    try:
        return path.stat().st_mtime if path is not None else 0.0
    except OSError:
        return -1.0
