"""Rule actions that change the copy the following forwards send; the original stays as stored.

    actions:
      - normalize: {site_synonyms: site-names.csv}     # ROI names and plan label to TG-263
      - coerce: {set: {InstitutionName: "Clinique Sud"}, remove: ["(0009,xxxx)"]}
      - hook: {script: hooks/rename_ring.py, seconds: 10, memory_mb: 512}
      - forward: [ARIA]

They apply, in the order written, to the copy sent by the forward that follows them (and only
that forward): each must come before a forward. Relative paths are read from the rules file's
folder. A destination's own `coerce` and `transfer_syntax` (destinations: section) apply after.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from orthanc_plugin.rules.errors import RulesError
from orthanc_plugin.rules.model import Action, ForwardAction
from orthanc_plugin.rules.numbers import positive_number
from orthanc_plugin.rules.schema_actions import ActionComposer, ActionContext, ActionParser
from orthanc_plugin.rules.wording import kind_of, one_of
from orthanc_plugin.transform.coerce import CoercionError, parse_coercion
from orthanc_plugin.transform.names_source import NamesError, check_site_synonyms
from orthanc_plugin.transform.spec import CoerceStep, HookStep, NormalizeStep, Step

NORMALIZE_KEYS = ("site_synonyms", "roi_names", "plan_label")
HOOK_KEYS = ("script", "seconds", "memory_mb", "network", "changes_uid")
MAX_HOOK_SECONDS = 300.0
MAX_HOOK_MEMORY_MB = 8192


def parse_normalize(raw: Any, path: str, context: ActionContext) -> NormalizeStep:
    if raw is None or raw is True or raw == "tg263":
        return NormalizeStep()
    if not isinstance(raw, dict):
        raise RulesError(path, f"expected tg263 or a mapping such as {{site_synonyms: names.csv}}, "
                               f"got {kind_of(raw)}")
    _known_keys(raw, NORMALIZE_KEYS, path)
    synonyms = None
    if raw.get("site_synonyms") is not None:
        synonyms = _file(raw["site_synonyms"], f"{path}.site_synonyms", context)
        if synonyms.is_file():
            try:
                check_site_synonyms(synonyms)
            except NamesError as error:
                raise RulesError(f"{path}.site_synonyms", str(error)) from None
    step = NormalizeStep(synonyms, _flag(raw, "roi_names", path, True),
                         _flag(raw, "plan_label", path, True))
    if not (step.roi_names or step.plan_label):
        raise RulesError(path, "nothing to normalize (roi_names and plan_label are both off)")
    return step


def parse_coerce(raw: Any, path: str, context: ActionContext) -> CoerceStep:
    try:
        return CoerceStep(parse_coercion(raw, path))
    except CoercionError as error:
        where, _, why = str(error).partition(": ")
        raise RulesError(where, why) from None


def parse_hook(raw: Any, path: str, context: ActionContext) -> HookStep:
    if isinstance(raw, str):
        raw = {"script": raw}
    if not isinstance(raw, dict) or "script" not in raw:
        raise RulesError(path, f"expected a script path or {{script: ..., seconds: 10}}, "
                               f"got {kind_of(raw)}")
    _known_keys(raw, HOOK_KEYS, path)
    script = _file(raw["script"], f"{path}.script", context)
    if script.suffix != ".py":
        raise RulesError(f"{path}.script", "expected a Python script (.py)")
    seconds = _number(raw, "seconds", path, 10.0, MAX_HOOK_SECONDS)
    memory = int(_number(raw, "memory_mb", path, 512, MAX_HOOK_MEMORY_MB))
    return HookStep(script, seconds, memory, _flag(raw, "network", path, False),
                    _flag(raw, "changes_uid", path, False))


def fold_into_forwards(actions: tuple[Action, ...], path: str) -> tuple[Action, ...]:
    """Each run of normalize/coerce/hook becomes the steps of the forward right after it."""
    folded: list[Action] = []
    pending: list[tuple[int, Step]] = []
    for index, action in enumerate(actions):
        if isinstance(action, (NormalizeStep, CoerceStep, HookStep)):
            pending.append((index, action))
            continue
        if pending and not isinstance(action, ForwardAction):
            raise RulesError(f"{path}[{pending[0][0]}]", "normalize, coerce and hook change the "
                             "copy a forward sends: put them right before a forward")
        if pending:
            assert isinstance(action, ForwardAction)
            action = ForwardAction(action.targets, tuple(step for _, step in pending))
            pending = []
        folded.append(action)
    if pending:
        raise RulesError(f"{path}[{pending[0][0]}]", "normalize, coerce and hook change the copy "
                         "a forward sends: a forward must follow them")
    return tuple(folded)


def _file(raw: Any, path: str, context: ActionContext) -> Path:
    if not isinstance(raw, str) or not raw.strip():
        raise RulesError(path, f"expected a file path, got {kind_of(raw)}")
    file = Path(raw.strip())
    if not file.is_absolute():
        if context.base_dir is None:
            return file   # text not from a file (a lint): nothing to check against
        file = context.base_dir / file
    if context.base_dir is not None and not file.is_file():
        raise RulesError(path, f"no such file: {file}")
    return file


def _known_keys(raw: dict[str, Any], keys: tuple[str, ...], path: str) -> None:
    for key in raw:
        if key not in keys:
            raise RulesError(f"{path}.{key}", f"unknown option (expected one of: {one_of(keys)})")


def _flag(raw: dict[str, Any], key: str, path: str, default: bool) -> bool:
    value = raw.get(key, default)
    if not isinstance(value, bool):
        raise RulesError(f"{path}.{key}", f"expected true or false, got {kind_of(value)}")
    return value


def _number(raw: dict[str, Any], key: str, path: str, default: float, most: float) -> float:
    """The rules YAML keeps scalars as written: a number arrives as text (rules/numbers.py)."""
    number = positive_number(raw, key, path)
    if number is None:
        return default
    if number > most:
        raise RulesError(f"{path}.{key}", f"expected at most {most:g}, got {raw[key]}")
    return number


# What this capability adds to the rules' vocabulary (capabilities.vocabulary()): the steps become
# the following forward's.
ACTIONS: dict[str, ActionParser] = {
    "normalize": parse_normalize, "coerce": parse_coerce, "hook": parse_hook,
}
COMPOSERS: tuple[ActionComposer, ...] = (fold_into_forwards,)
