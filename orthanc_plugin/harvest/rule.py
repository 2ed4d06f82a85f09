"""The `harvests:` section of the rules file: named harvest definitions, as POSTed to /harvests.

Declared in SECTIONS, which capabilities.vocabulary() hands to the rules loader, so the rules
package never imports the harvest package. Errors name the place the rules way, e.g.
`harvests[0].patients.StudyDate`.
"""

from __future__ import annotations

import re
from typing import Any

from orthanc_plugin.harvest.model import HarvestDefinition, HarvestError, parse_definition
from orthanc_plugin.rules.errors import RulesError
from orthanc_plugin.rules.schema_actions import ActionContext, SectionParser
from orthanc_plugin.rules.wording import kind_of

SECTION = "harvests"
# The rules YAML keeps every scalar as the text written (a PatientID 0012345 stays itself), so the
# numeric options are read as numbers here, and only these.
WHOLE_NUMBER_KEYS = ("concurrency", "max_requests_per_minute", "max_attempts")
SECONDS_KEYS = ("retry_delay_seconds", "retry_max_delay_seconds")
_WHOLE = re.compile(r"^\s*\d+\s*$")
_DECIMAL = re.compile(r"^\s*\d+(\.\d*)?\s*$")


def parse_harvests(raw: Any, path: str, context: ActionContext) -> tuple[HarvestDefinition, ...]:
    if raw is None:
        return ()   # `harvests:` left empty reads as no harvests, like an empty list
    if not isinstance(raw, list):
        raise RulesError(path, f"expected a list of harvest definitions, got {kind_of(raw)}")
    definitions: list[HarvestDefinition] = []
    first_index: dict[str, int] = {}
    for index, item in enumerate(raw):
        here = f"{path}[{index}]"
        definition = parse_harvest(item, here, context)
        if definition.name in first_index:
            # The name is what ties a harvest in the database to its definition here.
            raise RulesError(f"{here}.name", f"duplicate harvest name '{definition.name}' "
                                             f"(also {path}[{first_index[definition.name]}])")
        first_index[definition.name] = index
        definitions.append(definition)
    return tuple(definitions)


def parse_harvest(raw: Any, path: str, context: ActionContext) -> HarvestDefinition:
    if not isinstance(raw, dict):
        raise RulesError(path, f"expected a harvest mapping, got {kind_of(raw)}")
    name = raw.get("name")
    if "name" not in raw:
        raise RulesError(path, "missing 'name' (a harvest in the rules file is known by its name)")
    if not isinstance(name, str) or not name.strip():
        raise RulesError(f"{path}.name", f"expected a non-empty name, got {kind_of(name)}")
    try:
        return parse_definition(_with_numbers(raw), context.known_targets)
    except HarvestError as error:
        raise RulesError(f"{path}.{error.path}", error.reason) from error


def _with_numbers(raw: dict[str, Any]) -> dict[str, Any]:
    """Numeric options written as text become numbers; anything else is left for the validator."""
    read = dict(raw)
    for key in WHOLE_NUMBER_KEYS:
        if isinstance(read.get(key), str) and _WHOLE.match(read[key]):
            read[key] = int(read[key])
    for key in SECONDS_KEYS:
        if isinstance(read.get(key), str) and _DECIMAL.match(read[key]):
            read[key] = float(read[key])
    return read


# What this capability adds to the rules' vocabulary (capabilities.vocabulary()).
SECTIONS: dict[str, SectionParser] = {SECTION: parse_harvests}
