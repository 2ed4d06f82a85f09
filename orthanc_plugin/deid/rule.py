"""The `anonymize` rule action: options, parser, the fold of the following forwards, planner.

    - anonymize: {profile: full, options: [retain-longitudinal-modified-dates],
                  keep_private_creators: [VARIAN], patient_id_pattern: "ANON-{hash}",
                  keep_original: true}
    - forward: [RESEARCH]        # sends the de-identified copy, never the original

The forwards after an anonymize are folded into it at parse time (rules/derivations.py): the intake
then never queues the originals for them, and the anonymize executor queues the copies once they
are stored (jobs/follow_ups.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from orthanc_plugin.deid.model import DEFAULT_PATIENT_ID_PATTERN, DeidSettings
from orthanc_plugin.deid.profile import Option, Profile
from orthanc_plugin.jobs.executors import PlannedJob
from orthanc_plugin.rules.derivations import FoldForwardsInto
from orthanc_plugin.rules.errors import RulesError
from orthanc_plugin.rules.schema_actions import ActionComposer, ActionContext, ActionParser
from orthanc_plugin.rules.schema_values import name_list
from orthanc_plugin.rules.wording import kind_of, one_of

JOB_ACTION = "anonymize"
# The job target of a copy that is only stored in the gateway's Orthanc, not forwarded.
LOCAL_TARGET = "ORTHANC"
KEYS = ("profile", "options", "keep_private_creators", "patient_id_pattern", "keep_original")


@dataclass(frozen=True)
class AnonymizeAction:
    rule_key: ClassVar[str] = JOB_ACTION
    output_words: ClassVar[str] = "the de-identified copy"

    settings: DeidSettings
    keep_original: bool = True
    targets: tuple[str, ...] = ()  # the rule's following forwards: they receive the copy

    @property
    def job_target(self) -> str:
        return "+".join(self.targets) or LOCAL_TARGET


def parse_anonymize(raw: Any, path: str, context: ActionContext) -> AnonymizeAction:
    if raw is None:
        raw = {}
    if isinstance(raw, str):
        raw = {"profile": raw}
    if not isinstance(raw, dict):
        raise RulesError(path, f"expected a mapping of options or a profile name, got {kind_of(raw)}")
    for key in raw:
        if key not in KEYS:
            raise RulesError(f"{path}.{key}", f"unknown option (expected one of: {one_of(KEYS)})")
    profile_name = raw.get("profile", Profile.FULL.value)
    try:
        profile = Profile(profile_name)
    except ValueError:
        raise RulesError(f"{path}.profile", f"unknown profile {kind_of(profile_name)} "
                         f"(expected one of: {one_of(p.value for p in Profile)})") from None
    options = set()
    for index, name in enumerate(name_list(raw.get("options", []), f"{path}.options")):
        try:
            options.add(Option(name))
        except ValueError:
            raise RulesError(f"{path}.options[{index}]", f"unknown option '{name}' "
                             f"(expected one of: {one_of(o.value for o in Option)})") from None
    if options and profile is Profile.PARTIAL and options != {Option.RETAIN_UIDS}:
        raise RulesError(f"{path}.options", "the partial profile takes only retain-uids")
    pattern = raw.get("patient_id_pattern", DEFAULT_PATIENT_ID_PATTERN)
    if not isinstance(pattern, str) or "{hash}" not in pattern or len(pattern) > 40:
        raise RulesError(f"{path}.patient_id_pattern",
                         "expected text of at most 40 characters containing {hash}")
    keep_original = raw.get("keep_original", True)
    if not isinstance(keep_original, bool):
        raise RulesError(f"{path}.keep_original", f"expected true or false, got {kind_of(keep_original)}")
    settings = DeidSettings(
        profile=profile,
        options=frozenset(options),
        keep_private_creators=name_list(raw.get("keep_private_creators", []),
                                     f"{path}.keep_private_creators"),
        patient_id_pattern=pattern,
    )
    return AnonymizeAction(settings, keep_original)


def plan_anonymize(action: AnonymizeAction) -> list[PlannedJob]:
    return [PlannedJob(JOB_ACTION, action.job_target)]




# What this capability adds to the rules' vocabulary (capabilities.vocabulary()): the forwards
# after an anonymize send its copy.
ACTIONS: dict[str, ActionParser] = {JOB_ACTION: parse_anonymize}
COMPOSERS: tuple[ActionComposer, ...] = (FoldForwardsInto(AnonymizeAction),)
