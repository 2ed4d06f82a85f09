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

# A rules file is a few kilobytes written by hand. These bounds refuse, within milliseconds, what
# no hand writes: a nine-line alias bomb expands to billions of nodes, and 3,000 nested `not`
# would exhaust Python's recursion limit in the parser and the schema check.
MAX_TEXT_BYTES = 1 << 20
MAX_DEPTH = 40
MAX_EXPANDED_NODES = 100_000


class _RulesLoader(yaml.SafeLoader):
    _depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
                raise yaml.composer.ComposerError(
                    None, None, f"nested deeper than {MAX_DEPTH} levels", mark
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
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
    if len(text.encode("utf-8", "replace")) > MAX_TEXT_BYTES:
        raise RulesError(FILE_PATH, f"larger than {MAX_TEXT_BYTES // 1024} KiB")
    try:
        # A SafeLoader subclass: no Python objects can be built from the file.
        loader = _RulesLoader(text)
        try:
            node = loader.get_single_node()
            if node is None:
                return None
            _check_expanded_size(node)
            return loader.construct_document(node)
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        problem = ", ".join(part for part in (error.context, error.problem) if part)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise RulesError(FILE_PATH, f"YAML error{where}: {problem or 'invalid YAML'}") from error
    except yaml.YAMLError as error:
        raise RulesError(FILE_PATH, f"YAML error: {error}") from error


def _check_expanded_size(root: yaml.Node) -> None:
    """Count nodes as the rules engine would see them, aliases expanded, and stop at the bound."""
    count = 0
    stack: list[yaml.Node] = [root]
    while stack:
        node = stack.pop()
        count += 1
        if count > MAX_EXPANDED_NODES:
            raise RulesError(
                FILE_PATH,
                f"more than {MAX_EXPANDED_NODES} values once aliases are expanded "
                f"(an alias bomb?), refused",
            )
        if isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
        elif isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                stack.append(key)
                stack.append(value)
