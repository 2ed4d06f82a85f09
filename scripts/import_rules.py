"""The package's "nevers", checked on every `make lint` (and by tests/unit/test_import_rules.py):

- `rules/` imports nothing impure: from the gateway only `rules` itself, and no database, network or
  Orthanc module (a rules file is data; evaluating it must not touch anything);
- `jobs/` (the queue, the intake, the executor base) imports no capability: capabilities plug
  into it (registry, hooks, follow-ups), never the other way round;
- a capability never imports the plugin side (the code that runs inside Orthanc: in_orthanc/,
  and channels.py, the notes it sends): it runs in worker processes and talks to Orthanc over
  REST;
- `orthanc` (the SDK module that exists only inside Orthanc) is imported by in_orthanc/host.py
  alone;
- SQL lives only in stores: a statement (a string that reads as SQL) or an execute call appears
  only in a store module, named `store`, `tables` or `*_store`, or one of the NAMED_STORES, so
  a second database engine has one layer to implement.

Usage: python scripts/import_rules.py [package folder]; prints each broken rule with its place and
exits 1 when there is one.
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterator
from pathlib import Path

PACKAGE = "orthanc_plugin"
PLUGIN_SIDE = ("in_orthanc", "channels")
IMPURE_FOR_RULES = ("sqlite3", "requests", "http", "socket", "urllib.request", "pynetdicom",
                    "orthanc", "subprocess")
SDK_ADAPTER = "in_orthanc.host"
# Several nodes share PostgreSQL through the workers only: a driver inside Orthanc's process
# would hold Orthanc's interpreter (and its store lock) while the server is slow or away.
NEVER_ON_PLUGIN_SIDE = ("psycopg", "psycopg_binary", "psycopg_pool", "orthanc_plugin.db_postgres")
STORE_NAMES = ("store", "tables", "db")
# Stores whose names say what they hold rather than that they are stores.
NAMED_STORES = frozenset({
    "jobs.queue", "jobs.ledger", "jobs.own_output",            # the queue and its records
    "audit.recorder", "audit.counts", "audit.received", "audit.queries",   # the audit's tables
    "index.query",    # runs the user's read-only SQL against the index: the query page's store
    "index.postgres_query",   # the same on PostgreSQL, as the index's read-only role
    "index.model",    # the index's tables, laid out from the site's own dicom.sql
    # The PostgreSQL engine adapter: its transactions, meta table and migrations are SQL every
    # engine needs of its own, as db.py's are SQLite's.
    "db_postgres",
})
SQL_TEXT = re.compile(
    r"^\s*(SELECT|INSERT|UPDATE|DELETE|CREATE|WITH|PRAGMA|ALTER|DROP|REPLACE)\s"
    r"|\b(SELECT\s.+\sFROM|INSERT (OR \w+ )?INTO|DELETE FROM|UPDATE \w+ SET)\b", re.S)
EXECUTE_CALLS = ("execute", "executemany", "executescript")


def capabilities(package: Path) -> list[str]:
    """The capability packages' names, as capabilities.py lists them (read, not imported)."""
    tree = ast.parse((package / "capabilities.py").read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if (isinstance(node, ast.AnnAssign | ast.Assign) and node.value is not None
                and "CAPABILITIES" in ast.unparse(node.targets[0] if isinstance(node, ast.Assign)
                                                  else node.target)):
            names = ast.literal_eval(node.value)
            return [name.split(".", 1)[1] for name in names if name.startswith(f"{PACKAGE}.")]
    raise SystemExit(f"{package}/capabilities.py: no CAPABILITIES list")


def imports(path: Path, module: str) -> Iterator[tuple[int, str]]:
    """(line, imported name) for every import in the file, relative imports resolved; a name
    taken from a module is given with it (orthanc_plugin.db.Database)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = module.split(".")[: -node.level]
                base = ".".join([*parent, base] if base else parent)
            for alias in node.names:  # `from orthanc_plugin import channels` names a module too
                yield node.lineno, f"{base}.{alias.name}"


def is_store(module: str) -> bool:
    """module: dotted within the package (jobs.queue)."""
    name = module.rsplit(".", 1)[-1]
    return name in STORE_NAMES or name.endswith("_store") or module in NAMED_STORES


def sql_outside_stores(path: Path) -> Iterator[tuple[int, str]]:
    """(line, what) for each SQL statement text or execute call in the file; docstrings are
    prose, not statements."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef
                                | ast.AsyncFunctionDef)
                  and node.body and isinstance(node.body[0], ast.Expr)}
    for node in ast.walk(tree):
        if (isinstance(node, ast.Constant) and isinstance(node.value, str)
                and id(node) not in docstrings and SQL_TEXT.search(node.value)):
            yield node.lineno, f"SQL {node.value.strip()[:40]!r}"
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr in EXECUTE_CALLS):
            yield node.lineno, f"calls .{node.func.attr}()"


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(f"{prefix}.")


def broken_rules(package: Path) -> list[str]:
    capability_names = capabilities(package)
    found = []
    for path in sorted(package.rglob("*.py")):
        relative = path.relative_to(package.parent).with_suffix("")
        module = ".".join(relative.parts).removesuffix(".__init__")
        part = module.split(".")[1] if "." in module else ""
        for line, name in imports(path, module):
            where = f"{path}:{line}: imports {name}"
            if part == "rules" and (
                    (_within(name, PACKAGE) and not _within(name, f"{PACKAGE}.rules"))
                    or any(_within(name, impure) for impure in IMPURE_FOR_RULES)):
                found.append(f"{where}: rules/ imports nothing impure")
            if part == "jobs" and any(_within(name, f"{PACKAGE}.{capability}")
                                      for capability in capability_names):
                found.append(f"{where}: the queue (jobs/) imports no capability")
            if part in capability_names and any(_within(name, f"{PACKAGE}.{side}")
                                                for side in PLUGIN_SIDE):
                found.append(f"{where}: a capability never imports the plugin side")
            if _within(name, "orthanc") and module != f"{PACKAGE}.{SDK_ADAPTER}":
                found.append(f"{where}: only {SDK_ADAPTER.replace('.', '/')}.py imports the orthanc "
                             "SDK module")
            if part in PLUGIN_SIDE and any(_within(name, never)
                                           for never in NEVER_ON_PLUGIN_SIDE):
                found.append(f"{where}: nothing inside Orthanc's process talks to PostgreSQL")
        if not is_store(module.removeprefix(f"{PACKAGE}.")):
            for line, what in sql_outside_stores(path):
                found.append(f"{path}:{line}: {what}: SQL lives only in stores")
    return found


def main(argv: list[str]) -> int:
    package = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parents[1] / PACKAGE
    found = broken_rules(package)
    for problem in found:
        print(problem)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
