"""Reads one condition's value spec: a scalar, a list of alternatives, or an operator mapping."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import re2

from orthanc_plugin.rules.errors import RulesError
from orthanc_plugin.rules.values import (
    AnyValue,
    Cidr,
    Contains,
    Equals,
    Glob,
    Operator,
    Regex,
    ValueSpec,
)
from orthanc_plugin.rules.wording import kind_of, one_of

IGNORE_CASE = "ignore_case"
_GLOB_CHARS = re.compile(r"[*?\[]")

# (text, path) -> the canonical text to compare with, or RulesError.
Canonical = Callable[[str, str], str]


@dataclass(frozen=True)
class ValueGrammar:
    """How one condition key reads its values."""

    implicit_glob: bool = False  # AE titles: a scalar with * ? or [ is a glob
    cidr: bool = False  # remote_ip also takes {cidr: 10.0.0.0/8}
    canonical: Canonical | None = None  # applied to equals values only, e.g. SOP class names

    @property
    def operators(self) -> tuple[str, ...]:
        extra = ("cidr",) if self.cidr else ()
        return tuple(sorted(("contains", "equals", "glob", "regex", *extra)))


PLAIN = ValueGrammar()


def parse_value_spec(raw: Any, path: str, grammar: ValueGrammar = PLAIN) -> ValueSpec:
    if isinstance(raw, list):
        if not raw:
            raise RulesError(path, "expected at least one value")
        options = tuple(
            _operator(item, f"{path}[{index}]", grammar) for index, item in enumerate(raw)
        )
        return options[0] if len(options) == 1 else AnyValue(options)
    return _operator(raw, path, grammar)


def scalar_text(raw: Any, path: str) -> str:
    """Text as written; numbers become their text because DICOM values are compared as text."""
    if isinstance(raw, str):
        return raw
    if isinstance(raw, bool) or raw is None:
        hint = f" (quote it to mean the text '{kind_of(raw)}')" if isinstance(raw, bool) else ""
        raise RulesError(path, f"expected text, got {kind_of(raw)}{hint}")
    if isinstance(raw, int | float):
        return str(raw)
    raise RulesError(path, f"expected text, got {kind_of(raw)}")


def _operator(raw: Any, path: str, grammar: ValueGrammar) -> Operator:
    if isinstance(raw, dict):
        return _operator_mapping(raw, path, grammar)
    if isinstance(raw, list):
        raise RulesError(path, "expected a value or an operator mapping, got a list in a list")
    text = scalar_text(raw, path)
    if grammar.implicit_glob and _GLOB_CHARS.search(text):
        return Glob(text)
    return _equals(text, path, grammar, ignore_case=False)


def _operator_mapping(raw: dict[Any, Any], path: str, grammar: ValueGrammar) -> Operator:
    known = grammar.operators
    names = [key for key in raw if key != IGNORE_CASE]
    for name in names:
        if name not in known:
            raise RulesError(path, f"unknown operator '{name}' (expected one of: {one_of(known)})")
    if len(names) != 1:
        got = f", got {', '.join(names)}" if names else ""
        raise RulesError(path, f"expected exactly one operator (one of: {one_of(known)}){got}")
    ignore_case = raw.get(IGNORE_CASE, False)
    if not isinstance(ignore_case, bool):
        raise RulesError(
            f"{path}.{IGNORE_CASE}", f"expected true or false, got {kind_of(ignore_case)}"
        )
    name = names[0]
    operator_path = f"{path}.{name}"
    text = scalar_text(raw[name], operator_path)
    if name == "equals":
        return _equals(text, operator_path, grammar, ignore_case)
    if name == "cidr":
        if IGNORE_CASE in raw:
            raise RulesError(f"{path}.{IGNORE_CASE}", "does not apply to cidr")
        return _cidr(text, operator_path)
    if not text:
        # An empty contains/glob/regex would hold for every value: surely not what was meant.
        raise RulesError(operator_path, "expected non-empty text")
    if name == "contains":
        return Contains(text, ignore_case)
    if name == "glob":
        return Glob(text, ignore_case)
    return _regex(text, operator_path, ignore_case)


def _equals(text: str, path: str, grammar: ValueGrammar, ignore_case: bool) -> Equals:
    if grammar.canonical is not None:
        text = grammar.canonical(text, path)
    return Equals(text, ignore_case)


MAX_PATTERN_CHARS = 2000


def _regex(text: str, path: str, ignore_case: bool) -> Regex:
    # RE2 runs in time linear in the text: a pattern such as ^(a+)+$ cannot freeze the gateway.
    # What RE2 cannot do in linear time (back-references, look-around) is refused at load.
    if len(text) > MAX_PATTERN_CHARS:
        raise RulesError(path, f"regular expression longer than {MAX_PATTERN_CHARS} characters")
    options = re2.Options()
    options.case_sensitive = not ignore_case
    options.log_errors = False
    options.max_mem = 8 << 20
    try:
        pattern = re2.compile(text, options)
    except re2.error as error:
        reason = error.args[0].decode() if error.args and isinstance(error.args[0], bytes) else error
        raise RulesError(path, f"invalid regular expression '{text}': {reason} (RE2)") from error
    return Regex(pattern, ignore_case)


def _cidr(text: str, path: str) -> Cidr:
    try:
        # strict=False: 10.1.2.3/16 plainly means the /16 it lies in.
        return Cidr(ipaddress.ip_network(text.strip(), strict=False))
    except ValueError as error:
        raise RulesError(path, f"invalid network: {error}") from error


def name_list(raw: Any, path: str, what: str = "a name") -> tuple[str, ...]:
    """A name or a list of names (ROI globs, options, private creators), stripped and non-empty."""
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list):
        raise RulesError(path, f"expected a name or a list of names, got {kind_of(raw)}")
    names = []
    for index, item in enumerate(raw):
        if not isinstance(item, str) or not item.strip():
            raise RulesError(f"{path}[{index}]", f"expected {what}, got {kind_of(item)}")
        names.append(item.strip())
    return tuple(names)
