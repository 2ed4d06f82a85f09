"""The package's "nevers" (scripts/import_rules.py, run by `make lint`): they hold for the code as it
is, and the check finds each one broken in a copy of the package that breaks it."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def checker() -> ModuleType:
    spec = importlib.util.spec_from_file_location("import_rules", ROOT / "scripts/import_rules.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_package_keeps_its_nevers() -> None:
    assert checker().broken_rules(ROOT / "orthanc_plugin") == []


def test_each_never_broken_in_a_copy_is_found_with_its_place(tmp_path: Path) -> None:
    copy = tmp_path / "orthanc_plugin"
    shutil.copytree(ROOT / "orthanc_plugin", copy, ignore=shutil.ignore_patterns("__pycache__"))
    planted = {
        "rules/model.py": "import sqlite3\n",
        "rules/values.py": "from orthanc_plugin.db import Database\n",
        "jobs/queue.py": "from orthanc_plugin.deid.keys import Pseudonymizer\n",
        "export/model.py": ("from orthanc_plugin import channels\n"
                            "from orthanc_plugin.in_orthanc.host import Host\n"),
        "deid/profile.py": "import orthanc\n",
        # Orthanc's process never talks to PostgreSQL: not the driver, not the engine adapter.
        "channels.py": "import psycopg\n",
        "in_orthanc/entry.py": "from orthanc_plugin.db_postgres import PostgresDatabase\n",
    }
    for name, line in planted.items():
        path = copy / name
        path.write_text(path.read_text(encoding="utf-8") + line, encoding="utf-8")
    found = checker().broken_rules(copy)
    assert [problem.split(": ", 2)[1:] for problem in found] == [
        ["imports psycopg", "nothing inside Orthanc's process talks to PostgreSQL"],
        ["imports orthanc", "only in_orthanc/host.py imports the orthanc SDK module"],
        ["imports orthanc_plugin.channels", "a capability never imports the plugin side"],
        ["imports orthanc_plugin.in_orthanc.host.Host", "a capability never imports the plugin side"],
        ["imports orthanc_plugin.db_postgres.PostgresDatabase",
         "nothing inside Orthanc's process talks to PostgreSQL"],
        ["imports orthanc_plugin.deid.keys.Pseudonymizer",
         "the queue (jobs/) imports no capability"],
        ["imports sqlite3", "rules/ imports nothing impure"],
        ["imports orthanc_plugin.db.Database", "rules/ imports nothing impure"],
    ]


def test_sql_outside_a_store_is_found_and_prose_is_not(tmp_path: Path) -> None:
    copy = tmp_path / "orthanc_plugin"
    shutil.copytree(ROOT / "orthanc_plugin", copy, ignore=shutil.ignore_patterns("__pycache__"))
    planted = {
        # A statement and an execute call in a capability's model: both breaches.
        "export/model.py": ('\n\ndef _peek(db):\n    return db.connection().execute(\n'
                            '        f"SELECT name FROM exports WHERE id={1}")\n'),
        # The same in a store, and SQL words in a docstring or an HTTP verb: none is.
        "export/tables.py": '\n\ndef _peek(db):\n    return db.execute("DELETE FROM exports")\n',
        "labels.py": '\n\ndef _verb():\n    """SELECT a label FROM the study."""\n    return "DELETE"\n',
    }
    for name, text in planted.items():
        path = copy / name
        path.write_text(path.read_text(encoding="utf-8") + text, encoding="utf-8")
    found = [problem for problem in checker().broken_rules(copy)
             if any(problem.startswith(f"{copy}/{name}:") for name in planted)]
    lines = len((copy / "export/model.py").read_text(encoding="utf-8").splitlines())
    assert [problem.split(": ", 1)[1] for problem in found] == [
        "calls .execute(): SQL lives only in stores",
        "SQL 'SELECT name FROM exports WHERE id=': SQL lives only in stores",
    ]
    assert [problem.split(": ", 1)[0] for problem in found] == [
        f"{copy}/export/model.py:{lines - 1}", f"{copy}/export/model.py:{lines}"]


def test_every_store_is_type_checked_strictly() -> None:
    """mypy's strict modules (pyproject.toml) name every store the check knows: a new store
    module is strict from its first line, or this fails with its name."""
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    strict = {name for override in config["tool"]["mypy"]["overrides"]
              if override.get("disallow_untyped_defs") for name in override["module"]}
    rules = checker()
    stores = set()
    for path in (ROOT / "orthanc_plugin").rglob("*.py"):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        if rules.is_store(module.removeprefix("orthanc_plugin.")):
            stores.add(module)
    covered = {store for store in stores if store in strict
               or any(pattern.endswith(".*") and store.startswith(pattern[:-1])
                      for pattern in strict)}
    assert stores - covered == set()
    assert len(stores) > 30
