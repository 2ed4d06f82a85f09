"""The package's "nevers", checked on every `make lint` (and by tests/unit/test_import_rules.py):

- `rules/` imports nothing impure: from the gateway only `rules` itself, and no database, network or
  Orthanc module (a rules file is data; evaluating it must not touch anything);
- `jobs/` (the queue, the intake, the executor base) imports no capability: capabilities plug
  into it (registry, hooks, follow-ups), never the other way round;
- a capability never imports the plugin side (the code that runs inside Orthanc: entry.py,
  host.py, channels.py, supervisor/): it runs in worker processes and talks to Orthanc over REST;
- `orthanc` (the SDK module that exists only inside Orthanc) is imported by host.py alone.

Usage: python scripts/import_rules.py [package folder]; prints each broken rule with its place and
exits 1 when there is one.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

PACKAGE = "orthanc_plugin"
PLUGIN_SIDE = ("entry", "host", "channels", "supervisor")
IMPURE_FOR_RULES = ("sqlite3", "requests", "http", "socket", "urllib.request", "pynetdicom",
                    "orthanc", "subprocess")
SDK_ADAPTER = "host"


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
                found.append(f"{where}: only {SDK_ADAPTER}.py imports the orthanc SDK module")
    return found


def main(argv: list[str]) -> int:
    package = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parents[1] / PACKAGE
    found = broken_rules(package)
    for problem in found:
        print(problem)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
