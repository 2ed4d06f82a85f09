"""Reads the rules file's YAML strictly, so what the file says is what the gateway does.

PyYAML follows YAML 1.1, where `on` is a boolean, `0012345` is an octal number and `2024-01-01` is
a date. A patient ID, an AE title or a trigger must not change meaning that way: here every
scalar stays the text that was written, except `true`/`false` and null, and a key written twice
in one mapping is an error instead of the last one silently winning.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from orthanc_plugin.rules.errors import RulesError

FILE_PATH = "<file>"

_TEXT_INSTEAD = {
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:timestamp",
}
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _RulesLoader(yaml.SafeLoader):
    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key_node, _ in node.value:
                # Merge keys (<<) may legitimately be overridden; only written keys are checked.
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _MERGE_TAG:
                    continue
                if key_node.value in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key '{key_node.value}'", key_node.start_mark
                    )
                seen.add(key_node.value)
        return super().construct_mapping(node, deep=deep)


_RulesLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in _TEXT_INSTEAD]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_RulesLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def parse_yaml(text: str) -> Any:
    """The document as plain data; raises RulesError (path `<file>`) with the line of a problem."""
    try:
        # A SafeLoader subclass: no Python objects can be built from the file.
        return yaml.load(text, Loader=_RulesLoader)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        problem = ", ".join(part for part in (error.context, error.problem) if part)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise RulesError(FILE_PATH, f"YAML error{where}: {problem or 'invalid YAML'}") from error
    except yaml.YAMLError as error:
        raise RulesError(FILE_PATH, f"YAML error: {error}") from error
