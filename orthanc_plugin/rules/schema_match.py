"""Reads a rule's `match` mapping into a condition tree, naming the exact path of any mistake."""

from __future__ import annotations

from typing import Any

from pydicom.datadict import dictionary_VR, keyword_dict, tag_for_keyword

from orthanc_plugin.rules.errors import RulesError
from orthanc_plugin.rules.facts import SOURCES
from orthanc_plugin.rules.model import (
    AllOf,
    AnyOf,
    Condition,
    FactCondition,
    Not,
    PlanLabelCondition,
    TagCondition,
)
from orthanc_plugin.rules.schema_values import PLAIN, ValueGrammar, parse_value_spec
from orthanc_plugin.rules.sop_classes import sop_class_names, sop_class_uid
from orthanc_plugin.rules.wording import did_you_mean, kind_of, one_of


def _sop_class(text: str, path: str) -> str:
    uid = sop_class_uid(text)
    if uid is None:
        raise RulesError(
            path,
            f"unknown SOP class '{text}' (expected a UID, a keyword such as RTPlanStorage or a "
            f"name such as 'RT Plan Storage'){did_you_mean(text, sop_class_names())}",
        )
    return uid


def _source(text: str, path: str) -> str:
    if text not in SOURCES:
        raise RulesError(path, f"unknown source '{text}' (expected one of: {one_of(SOURCES)})")
    return text


FACT_GRAMMARS: dict[str, ValueGrammar] = {
    "calling_aet": ValueGrammar(implicit_glob=True),
    "called_aet": ValueGrammar(implicit_glob=True),
    "remote_ip": ValueGrammar(cidr=True),
    "modality": PLAIN,
    "sop_class": ValueGrammar(canonical=_sop_class),
    "source": ValueGrammar(canonical=_source),
}
CONDITION_KEYS = (*FACT_GRAMMARS, "plan_label", "tags", "not", "any")


def parse_match(raw: Any, prefix: str, path: str = "match", allow_empty: bool = True) -> AllOf:
    """`prefix` (e.g. "rules[2].") is in error paths only; the tree keeps paths from `match`."""
    if not isinstance(raw, dict):
        raise RulesError(prefix + path, f"expected a mapping of conditions, got {kind_of(raw)}")
    if not raw and not allow_empty:
        raise RulesError(prefix + path, "expected at least one condition")
    conditions: list[Condition] = []
    for key, value in raw.items():
        here = f"{path}.{key}"
        if key in FACT_GRAMMARS:
            spec = parse_value_spec(value, prefix + here, FACT_GRAMMARS[key])
            conditions.append(FactCondition(here, key, spec))
        elif key == "plan_label":
            conditions.append(PlanLabelCondition(here, parse_value_spec(value, prefix + here)))
        elif key == "tags":
            conditions.extend(_tags(value, prefix, here))
        elif key == "not":
            conditions.append(Not(here, parse_match(value, prefix, here, allow_empty=False)))
        elif key == "any":
            conditions.append(_any(value, prefix, here))
        else:
            raise RulesError(
                prefix + path,
                f"unknown condition '{key}' (expected one of: {one_of(CONDITION_KEYS)})",
            )
    return AllOf(path, tuple(conditions))


def _tags(raw: Any, prefix: str, path: str) -> list[TagCondition]:
    if not isinstance(raw, dict):
        raise RulesError(
            prefix + path, f"expected a mapping of DICOM keyword to value, got {kind_of(raw)}"
        )
    if not raw:
        raise RulesError(prefix + path, "expected at least one DICOM keyword")
    conditions = []
    for keyword, value in raw.items():
        here = f"{path}.{keyword}"
        tag = tag_for_keyword(keyword) if isinstance(keyword, str) else None
        if tag is None:
            hint = did_you_mean(keyword, keyword_dict) if isinstance(keyword, str) else ""
            raise RulesError(prefix + here, f"unknown DICOM keyword{hint}")
        if dictionary_VR(tag) == "SQ":
            raise RulesError(prefix + here, "is a sequence: it has no text value to compare")
        conditions.append(TagCondition(here, keyword, parse_value_spec(value, prefix + here)))
    return conditions


def _any(raw: Any, prefix: str, path: str) -> AnyOf:
    if not isinstance(raw, list):
        raise RulesError(
            prefix + path, f"expected a list of condition mappings, got {kind_of(raw)}"
        )
    if not raw:
        raise RulesError(prefix + path, "expected at least one condition mapping")
    options = tuple(
        parse_match(item, prefix, f"{path}[{index}]", allow_empty=False)
        for index, item in enumerate(raw)
    )
    return AnyOf(path, options)
